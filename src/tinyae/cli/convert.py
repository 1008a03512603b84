"""`tinyae convert`: weights between layouts."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import CliError, _kb
from .runner import Reporter, _same_file_key, check_output_folder
from .models import _model_hint, identify_variant, model_source, resolve_files


def _source_dtype(source: Any) -> str:
    """The floating dtype of the first tensor of a source's first weight file (float32 if unknown)."""
    from ..io.files import read_tensors

    try:
        path = resolve_files(source)[0][0]
        for t in read_tensors(path).values():
            if t.is_floating_point():
                return str(t.dtype).replace("torch.", "")
    except Exception:
        pass
    return "float32"


def _convert_targets(to: str, dst: Path, name: str, pth: bool, model: Any) -> list[Path]:
    if to == "diffusers":
        return [dst / "config.json", dst / "diffusion_pytorch_model.safetensors"]
    if to == "original":
        ext = "pth" if pth else "safetensors"
        return [dst / f"{name}_{part}.{ext}" for part in ("encoder", "decoder") if getattr(model, part) is not None]
    return [dst if dst.suffix == ".safetensors" else dst / f"{name}.safetensors"]


def cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from ..autoencoder import AutoencoderTiny
    from ..io.files import WeightsError, atomic_write
    from ..io.save import save_comfyui, save_diffusers, save_original, state_dict_of

    rep, started = Reporter(args.json), time.perf_counter()
    source = model_source(args.src)
    try:
        model = AutoencoderTiny.from_pretrained(source)
    except WeightsError as e:
        raise WeightsError(_model_hint(args.src, e)) from None
    dtype = _source_dtype(source) if args.dtype == "keep" else args.dtype
    model = model.to(getattr(torch, dtype))
    variant = identify_variant(source, model)
    name = args.name or variant or "tae"
    dst = Path(args.dst)
    targets = _convert_targets(args.to, dst, name, args.pth, model)
    sources = {_same_file_key(Path(p)): p for p, _ in resolve_files(source)}
    for t in targets:
        if _same_file_key(t) in sources:
            raise CliError(f"{t} is the source ({sources[_same_file_key(t)]}); tinyae never writes over its own "
                           "inputs (not even with --force): convert to another file or folder")
    check_output_folder(targets[0].parent)
    existing = [t for t in targets if t.exists()]
    if existing and not args.force:
        raise CliError(f"{existing[0]} already exists; pass --force to overwrite")
    if args.to == "diffusers":
        save_diffusers(model, dst)
        if not model.config.diffusers_compatible:
            rep.warn("diffusers' AutoencoderTiny cannot express this architecture; the folder loads with tinyae")
    elif args.to == "original":
        save_original(model, dst, name, format="pth" if args.pth else "safetensors")
    elif args.to == "comfyui":
        save_comfyui(model, targets[0])
    else:
        from safetensors.torch import save_file

        from .._version import __version__

        meta = {"format": "pt", "config": model.config.to_json_string(), "tinyae_version": __version__}
        sd = state_dict_of(model)
        atomic_write(targets[0], lambda p: save_file(sd, p, metadata=meta))
    for t in targets:
        rep.line(f"wrote {t}  ({_kb(t.stat().st_size)})")
    rep.emit({"command": "convert", "source": args.src, "to": args.to, "variant": variant, "dtype": dtype,
              "outputs": [str(t) for t in targets], "seconds": round(time.perf_counter() - started, 3)})
    return 0
