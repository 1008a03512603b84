"""Loading --model for a command, and what runs it (--precision, --backend, --tile)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .common import CliError, DEFAULT_MODEL, MODEL_ENV, _one_line


# ---------------------------------------------------------------------------------------------- models
def model_source(spec: str) -> Any:
    """`--model` value -> what tinyae.io.load.load accepts: `ENC,DEC` (either may be empty) is a pair of files."""
    if "," in spec:
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) != 2 or not any(parts):
            raise CliError(f"--model {spec!r}: a pair is ENCODER_FILE,DECODER_FILE (one side may be empty)")
        for p in parts:
            if p and not Path(p).is_file():
                raise CliError(f"--model: {p}: no such file")
        return (parts[0] or None, parts[1] or None)
    return spec


def resolve_files(source: Any) -> list[tuple[str, str | None]]:
    """The weight files (path, part) a source resolves to (hub sources through the local cache / download)."""
    from ..io.hub import _repo_files, _variant_files
    from ..io.local import _local_files
    from ..nets.variants import get_variant, is_variant

    if isinstance(source, tuple):
        return [(s, p) for s, p in zip(source, ("encoder", "decoder")) if s]
    if Path(source).exists():
        return _local_files(Path(source), None)["files"]
    if is_variant(source):
        return _variant_files(get_variant(source))["files"]
    return _repo_files(source)["files"]


def identify_variant(source: Any, model: Any) -> str | None:
    """The variant a model is, when sure: its name, a released file's sha256, or a config only one variant has."""
    from ..nets.variants import VARIANTS, get_variant, is_variant, variant_config
    from ..io.save import identify

    if isinstance(source, str) and is_variant(source):
        return get_variant(source).name
    try:
        for path, _ in resolve_files(source):
            known = identify(path)
            if known:
                return known.rsplit("_", 1)[0]
    except Exception:
        pass
    own = model.config.init_kwargs()
    same = [n for n in VARIANTS if variant_config(n) == own]
    return same[0] if len(same) == 1 else None


def _model_hint(spec: str, error: Exception) -> str:
    """A WeightsError message with the command-line way out (local weights, or a pair of files)."""
    from ..nets.variants import get_variant, is_variant
    from ..io.hub import WeightsNotCachedError

    message = str(error)
    if "pass the files as a pair" in message:
        return message.split("; pass the files")[0] + "; name the two files: --model ENCODER_FILE,DECODER_FILE"
    if not isinstance(error, WeightsNotCachedError):
        return message
    if is_variant(spec):
        v = get_variant(spec)
        return (f"{v.name}: weights not on this machine and the hub cannot be reached. Download them once with "
                f"network access (huggingface-cli download {v.repo_id}), or pass local weights: --model FOLDER, "
                f"--model FILE, or --model ENCODER_FILE,DECODER_FILE (or set ${MODEL_ENV})")
    return (f"{message}; pass local weights with --model FOLDER, FILE or ENCODER_FILE,DECODER_FILE "
            f"(or set ${MODEL_ENV})")


def load_model(spec: str, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """(model, source) for a --model value; WeightsError / CliError with one-line messages."""
    import torch

    from ..autoencoder import AutoencoderTiny
    from ..io.files import WeightsError

    source = model_source(spec)
    try:
        model = AutoencoderTiny.from_pretrained(source)
    except WeightsError as e:
        raise WeightsError(_model_hint(spec, e)) from None
    try:
        model = model.to(device=torch.device(device), dtype=getattr(torch, dtype))
    except (RuntimeError, AssertionError) as e:
        raise CliError(f"--device {device}: {_one_line(e)}") from None
    return model, source


def _resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "float16" if device.startswith("cuda") else "float32"


@dataclass
class Runner:
    """The loaded model (for its metadata) and what runs it (the model itself, its optimized copy, or an
    onnxruntime backend). `precision`: what computes ("exact", "fp32", "bf16", "fp16", "onnxruntime")."""

    model: Any
    engine: Any
    spec: str
    variant: str | None
    precision: str = "exact"
    fingerprint: str = ""  # sha256 of the weights and config as loaded: what --resume checks outputs against


PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "exact")


def _optimized(model: Any, precision: str) -> tuple[Any, str]:
    """`model.optimize(precision)` for --precision, or the model itself for "exact" (or where optimize() cannot
    run and the user asked for "auto")."""
    from ..engine.precision import explain_precision

    if precision == "exact":
        return model, "exact"
    if precision == "auto" and explain_precision(model.device)[0] == "exact":
        return model, "exact"
    try:
        fast = model.optimize(precision)
    except ValueError as e:
        raise CliError(f"--precision {precision}: {_one_line(e)}") from None
    return fast, fast.precision


def prepare_runner(args: argparse.Namespace, spec: str, needs: Sequence[str]) -> Runner:
    """Load --model for a command that needs the given parts ("encoder", "decoder")."""
    device = _resolve_device(args.device)
    precision = getattr(args, "precision", "exact")
    if precision != "exact" and args.dtype != "auto":
        raise CliError(f"--dtype {args.dtype} sets the dtype of --precision exact; with --precision {precision} "
                       "the precision chooses it (use --precision fp32, bf16 or fp16)")
    model, source = load_model(spec, device, _resolve_dtype(args.dtype, device) if precision == "exact" else "float32")
    for part in needs:
        if getattr(model, part) is None:
            raise CliError(f"--model {spec}: has no {part} (its weights hold only the "
                           f"{'decoder' if part == 'encoder' else 'encoder'}); this command needs the {part}")
    if args.tile:
        try:
            model.enable_tiling()
        except NotImplementedError as e:
            raise CliError(f"--tile: {_one_line(e)}") from None
    engine = model
    if getattr(args, "stream", False) and args.backend != "torch":
        raise CliError("--stream runs the torch model; it cannot be combined with --backend onnxruntime")
    if args.backend == "onnxruntime":
        try:
            from ..engine.backends import load_backend
        except ModuleNotFoundError as e:
            if e.name in ("tinyae.engine.backends", "tinyae.engine.backends.load_backend"):
                raise CliError("--backend onnxruntime: this installation has no tinyae.engine.backends module") from None
            raise CliError(f"--backend onnxruntime: {_one_line(e)}; install it with pip install 'tinyae[onnx]'") \
                from None
        except ImportError as e:
            raise CliError(f"--backend onnxruntime: {_one_line(e)}") from None
        engine = load_backend(model, "onnxruntime")
        return Runner(model, engine, spec, identify_variant(source, model), "onnxruntime", model_fingerprint(model))
    variant, fingerprint = identify_variant(source, model), model_fingerprint(model)
    model, precision = _optimized(model, precision)  # the optimized copy keeps the tiling settings
    return Runner(model, model, spec, variant, precision, fingerprint)


def model_fingerprint(model: Any) -> str:
    """16 hex digits of the sha256 of a model's config and tensors (dtype included): same weights, same value."""
    import hashlib

    import torch

    h = hashlib.sha256(model.config.to_json_string().encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def default_model(args: argparse.Namespace) -> str:
    return args.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL


# ---------------------------------------------------------------------------------------------- commands
def _video(command: str, args: argparse.Namespace) -> int | None:
    """Videos and video models are handled by tinyae.video.cli; None for images."""
    from ..video import cli as video_cli

    return video_cli.run(command, args) if video_cli.wants_video(command, args) else None
