"""The `tinyae` command line: encode, decode, roundtrip, convert, info (+ bench, export-onnx), a thin layer over
`tinyae.images` and `tinyae.codec`. See docs/cli.md.

Exit status: 0 when everything succeeded, 1 when anything failed (each failure is one line on stderr), 2 for a
usage error, 130 when interrupted. No traceback unless --debug.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

DEFAULT_MODEL = "taef2"
MODEL_ENV = "TINYAE_MODEL"
FORWARDED = {"bench": ("tinyae.bench", "main"), "export-onnx": ("tinyae.runtime", "export_onnx_main"),
             "encode-dataset": ("tinyae.dataset.cli", "main"), "decode-dataset": ("tinyae.dataset.cli", "decode_main"),
             "train": ("tinyae.train.cli", "main"), "eval": ("tinyae.train.evaluate", "main")}
LATENT_FORMATS = {"safetensors": ".safetensors", "png": ".latent.png"}
IMAGE_FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP"}
DEFAULT_MAX_PIXELS = 50_000_000  # about 7000x7000; an 8K frame is 33 Mpixel


class CliError(Exception):
    """A problem reported as one line, ending the command with exit status 1."""


# ---------------------------------------------------------------------------------------------- output
class Reporter:
    """Human lines on stdout (or one JSON document with --json), failures on stderr, a progress bar on a tty."""

    def __init__(self, as_json: bool):
        from rich.console import Console

        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def line(self, text: str) -> None:
        if not self.as_json:
            self.out.print(text, markup=False)

    def warn(self, text: str) -> None:
        self.err.print(f"tinyae: warning: {text}", markup=False)

    def fail(self, text: str) -> None:
        self.err.print(f"tinyae: failed: {text}", markup=False)

    def emit(self, doc: dict[str, Any]) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
            sys.stdout.flush()

    def progress(self, total: int, what: str) -> "_Progress":
        return _Progress(self, total, what)


class _Progress:
    def __init__(self, reporter: Reporter, total: int, what: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        enabled = total > 1 and reporter.err.is_terminal
        self.bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=reporter.err, transient=True, disable=not enabled)
        self.task = self.bar.add_task(what, total=total)

    def __enter__(self) -> "_Progress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def advance(self) -> None:
        self.bar.advance(self.task)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        text = f"{where}{e.strerror}"
    else:
        text = str(e) or type(e).__name__
        if isinstance(e, KeyError) and text.startswith(("'", '"')):
            text = text[1:-1]
        if not isinstance(e, (CliError, ValueError, KeyError, NotImplementedError, RuntimeError, ImportError)):
            text = f"{type(e).__name__}: {text} (run with --debug for the traceback)"
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------- models
def model_source(spec: str) -> Any:
    """`--model` value -> what tinyae.weights.load accepts: `ENC,DEC` (either may be empty) is a pair of files."""
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
    from . import weights
    from .variants import get_variant, is_variant

    if isinstance(source, tuple):
        return [(s, p) for s, p in zip(source, ("encoder", "decoder")) if s]
    if Path(source).exists():
        return weights._local_files(Path(source), None)["files"]
    if is_variant(source):
        return weights._variant_files(get_variant(source))["files"]
    return weights._repo_files(source)["files"]


def identify_variant(source: Any, model: Any) -> str | None:
    """The variant a model is, when sure: its name, a released file's sha256, or a config only one variant has."""
    from .variants import VARIANTS, get_variant, is_variant, variant_config
    from .weights import identify

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
    from .variants import get_variant, is_variant
    from .weights import WeightsNotCachedError

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

    from .model import AutoencoderTiny
    from .weights import WeightsError

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
    from .runtime import explain_precision

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
            from .runtime import load_backend
        except ModuleNotFoundError as e:
            if e.name in ("tinyae.runtime", "tinyae.runtime.load_backend"):
                raise CliError("--backend onnxruntime: this installation has no tinyae.runtime module") from None
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


# ---------------------------------------------------------------------------------------------- files
@dataclass
class Job:
    """One input and where its output goes; status "todo" | "skipped" | "ok" | "failed"."""

    input: Path
    output: Path | None = None
    status: str = "todo"
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    index: int | None = None  # which latents of a file holding a batch (B, C, h, w)
    also: list[Path] = field(default_factory=list)  # further outputs (roundtrip's decoded image)

    @property
    def outputs(self) -> list[Path]:
        return ([self.output] if self.output is not None else []) + self.also

    def as_dict(self) -> dict[str, Any]:
        d = {"input": str(self.input), "output": str(self.output) if self.output else None, "status": self.status}
        if self.index is not None:
            d["index"] = self.index
        if self.also:
            d["also"] = [str(p) for p in self.also]
        if self.error:
            d["error"] = self.error
        return {**d, **self.info}


def collect(paths: Sequence[str], accept: Callable[[Path], bool], what: str) -> list[Job]:
    """Files as given, plus the accepted files (sorted, not hidden) of each folder; missing paths become failures."""
    jobs: list[Job] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and accept(f))
            if not found:
                jobs.append(Job(p, status="failed", error=f"{p}: no {what} in this folder"))
            jobs.extend(Job(f) for f in found)
        elif p.exists():
            jobs.append(Job(p))
        else:
            jobs.append(Job(p, status="failed", error=f"{p}: no such file or folder"))
    return jobs


def plan_outputs(jobs: list[Job], out: Path, name: Callable[[Job], str], suffixes: Sequence[str],
                 extra: Callable[[Job], list[str]] | None = None) -> Path:
    """Set each job's outputs: OUT is a folder, or the file itself when one input and OUT ends in a known suffix.

    Every file the command will write is checked: no two jobs share one, and none is one of the command's own
    inputs (not even with --force). Returns the folder the outputs go to."""
    todo = [j for j in jobs if j.status == "todo"]
    single = len(jobs) == 1 and str(out).lower().endswith(tuple(suffixes)) and not out.is_dir()
    for j in todo:
        j.output = out if single else out / name(j)
        j.also = [j.output.with_name(n) for n in extra(j)] if extra else []
    inputs = {_same_file_key(j.input): j.input for j in jobs}
    seen: dict[Path, Path] = {}
    for j in todo:
        for o in j.outputs:
            key = _same_file_key(o)
            if key in inputs:
                raise CliError(f"{o} is one of the inputs ({inputs[key]}); tinyae never writes over its own "
                               "inputs (not even with --force): write to another folder or file")
            if key in seen:
                raise CliError(f"{seen[key]} and {j.input} would both be written to {o}; "
                               "write them to different folders (one command each)")
            seen[key] = j.input
    return out.parent if single else out


def _same_file_key(p: Path) -> Any:
    """What identifies a file: (device, inode) when it exists (links, `./a` vs `a`), else its resolved path."""
    try:
        st = p.stat()
        return (st.st_dev, st.st_ino)
    except OSError:
        return p.resolve()


def check_output_folder(folder: Path) -> None:
    """Create the folder and prove it writable (a probe file), or raise CliError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tinyae-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CliError(f"{folder}: cannot write to the output folder ({e.strerror or e})") from None


def handle_existing(jobs: list[Job], force: bool, resume: bool,
                    trust: Callable[[Job, Path], str | None] | None = None) -> None:
    """Existing outputs: kept and skipped with --resume, overwritten with --force, else an error (nothing done).

    Outputs are written atomically, so one that exists is complete; with --resume it must also be this command's:
    `trust(job, path)` says why not (another model, format or source), which is an error unless --force. Call it
    once the model is validated: afterwards the stale temporary files of killed runs are removed (see
    `tinyae.weights.remove_stale_temps`; a live run's are kept).
    """
    from .weights import remove_stale_temps

    existing = [j for j in jobs if j.status == "todo" and any(o.exists() for o in j.outputs)]
    if existing and not force and not resume:
        names = ", ".join(str(o) for j in existing[:3] for o in j.outputs if o.exists()) + (
            " ..." if len(existing) > 3 else "")
        raise CliError(f"{len(existing)} output(s) already exist ({names}); pass --resume to skip them or "
                       "--force to overwrite")
    if resume and not force:
        for j in existing:
            for o in j.outputs:
                why = trust(j, o) if trust and o.exists() else None
                if why:
                    raise CliError(f"{o}: exists but is not what this command writes ({why}); --resume keeps "
                                   "only its own outputs: pass --force to overwrite it, or write elsewhere")
            if all(o.exists() for o in j.outputs):
                j.status = "skipped"
    for j in jobs:
        if j.status == "todo":
            for o in j.outputs:
                remove_stale_temps(o)


def finish(rep: Reporter, command: str, jobs: list[Job], started: float, extra: dict[str, Any] | None = None
           ) -> int:
    counts = {s: sum(j.status == s for j in jobs) for s in ("ok", "skipped", "failed")}
    doc = {"command": command, **(extra or {}), "files": [j.as_dict() for j in jobs], **counts,
           "seconds": round(time.perf_counter() - started, 3)}
    rep.emit(doc)
    skipped = f", {counts['skipped']} skipped (already done)" if counts["skipped"] else ""
    rep.line(f"{command}: {counts['ok']} done{skipped}, {counts['failed']} failed in {doc['seconds']:.1f} s")
    return 1 if counts["failed"] else 0


def _run_jobs(rep: Reporter, jobs: list[Job], what: str, batch_size: int,
              work: Callable[[list[Job]], None]) -> None:
    """Run `work` on batches of pending jobs; a failing batch is retried one job at a time to isolate the culprit."""
    for j in jobs:
        if j.status == "failed":
            rep.fail(j.error or str(j.input))
    todo = [j for j in jobs if j.status == "todo"]
    with rep.progress(len(todo), what) as bar:
        for s in range(0, len(todo), batch_size):
            chunk = todo[s:s + batch_size]
            try:
                work(chunk)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception:
                for j in chunk:
                    if j.status == "todo":
                        try:
                            work([j])
                        except (KeyboardInterrupt, SystemExit):
                            raise
                        except Exception as e:
                            text = _one_line(e)
                            j.status = "failed"
                            j.error = text if text.startswith(str(j.input)) else f"{j.input}: {text}"
                            rep.fail(j.error)
            for _ in chunk:
                bar.advance()


def _read_each(rep: Reporter, chunk: list[Job], read: Callable[[Job], Any]) -> tuple[list[Job], list[Any]]:
    """`read(job)` for each pending job; a ValueError (bad input) fails that job alone. Returns (jobs, results)."""
    live, results = [], []
    for j in chunk:
        if j.status != "todo":
            continue
        try:
            results.append(read(j))
            live.append(j)
        except ValueError as e:
            j.status, j.error = "failed", _one_line(e)
            rep.fail(j.error)
    return live, results


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


# ---------------------------------------------------------------------------------------------- commands
def _video(command: str, args: argparse.Namespace) -> int | None:
    """Videos and video models are handled by tinyae.video.cli; None for images."""
    from .video import cli as video_cli

    return video_cli.run(command, args) if video_cli.wants_video(command, args) else None


def cmd_encode(args: argparse.Namespace) -> int:
    if (rc := _video("encode", args)) is not None:
        return rc
    from .codec import save_latents
    from .images import IMAGE_SUFFIXES, encode_images, read_source

    rep, started = Reporter(args.json), time.perf_counter()
    suffix = LATENT_FORMATS[args.format]
    jobs = collect(args.inputs, lambda f: f.suffix.lower() in IMAGE_SUFFIXES and not f.name.endswith(".latent.png"),
                   "images")
    out_dir = plan_outputs(jobs, Path(args.output), lambda j: j.input.stem + suffix, (suffix,))
    check_output_folder(out_dir)
    runner = None
    if any(j.status == "todo" for j in jobs):
        runner = prepare_runner(args, default_model(args), ["encoder"])
    handle_existing(jobs, args.force, args.resume, lambda j, o: _trust_latents(j, o, runner, args.format))

    def work(chunk: list[Job]) -> None:
        assert runner is not None
        if args.stream:
            live, encoded = _read_each(rep, chunk, lambda j: _encode_streamed(runner.model, j))
        else:
            live, images = _read_each(rep, chunk, lambda j: read_source(j.input, args.max_pixels))
            encoded = encode_images(runner.engine, images, batch_size=args.batch_size)
        _same_count(live, encoded)
        for j, enc in zip(live, encoded):
            assert j.output is not None
            meta: dict[str, Any] = {"variant": runner.variant, "source": j.input.name,
                                    "scale_factor": runner.model.spatial_scale_factor, "model": runner.fingerprint,
                                    "precision": runner.precision}
            if args.format == "png":
                meta.update(magnitude=float(runner.model.latent_magnitude), shift=float(runner.model.latent_shift))
            save_latents(j.output, enc, **meta)
            size = j.output.stat().st_size
            j.status = "ok"
            j.info = {"size": list(enc.size or ()), "latent_shape": list(enc.latents.shape), "bytes": size,
                      "bits_per_pixel": round(8 * size / (enc.size[0] * enc.size[1]), 4) if enc.size else None,
                      "source_bytes": j.input.stat().st_size}
            rep.line(f"{j.input} -> {j.output}  ({enc.size[0]}x{enc.size[1]} -> latents "
                     f"{'x'.join(map(str, enc.latents.shape))}, {_kb(size)}; source {_kb(j.input.stat().st_size)})"
                     if enc.size else f"{j.input} -> {j.output}")

    _run_jobs(rep, jobs, "encoding", args.batch_size, work)
    extra = {"model": runner.spec if runner else default_model(args), "variant": runner.variant if runner else None,
             "format": args.format, "precision": runner.precision if runner else None}
    return finish(rep, "encode", jobs, started, extra)


def _same_count(jobs: list[Job], results: Sequence[Any]) -> None:
    """Outputs are paired with inputs by position: never let one shift onto another's name."""
    if len(jobs) != len(results):
        raise RuntimeError(f"{len(results)} results for {len(jobs)} inputs; nothing of this batch was written")


def _trust_latents(j: Job, path: Path, runner: Runner | None, fmt: str) -> str | None:
    """Why an existing latent file is not what this encode would write (None: it is)."""
    from .codec import LatentFileError, load_latents

    with open(path, "rb") as f:
        is_png = f.read(8) == b"\x89PNG\r\n\x1a\n"
    if is_png != (fmt == "png"):
        return f"not a {fmt} latent file"
    try:
        meta = load_latents(path).metadata
    except LatentFileError as e:
        return str(e).split(": ", 1)[-1]
    if runner is not None and meta.get("model") != runner.fingerprint:
        return f"written by another model ({meta.get('model') or meta.get('variant') or 'unknown'})"
    if meta.get("source") != j.input.name:
        return f"encodes {meta.get('source')!r}, not {j.input.name!r}"
    return None


def _trust_image(j: Job, path: Path, runner: Runner | None) -> str | None:
    """Why an existing decoded image is not what this command would write (None: it is)."""
    from PIL import Image

    want = PIL_FORMATS.get(path.suffix.lower(), "PNG")
    try:
        with Image.open(path) as im:
            im.load()
            found, text = im.format, dict(getattr(im, "text", {}) or {})
    except Exception as e:
        return f"unreadable ({_one_line(e)})"
    if found != want:
        return f"a {found} file, not {want}"
    if want == "PNG":
        try:
            meta = json.loads(text.get("tinyae", "{}"))
        except ValueError:
            meta = {}
        if runner is not None and meta.get("model") != runner.fingerprint:
            return "written by another model" if meta.get("model") else "not written by tinyae"
        if meta.get("source") != _source_name(j):
            return f"decodes {meta.get('source')!r}, not {_source_name(j)!r}"
    return None


def _source_name(j: Job) -> str:
    return j.input.name + (f"[{j.index}]" if j.index is not None else "")


def _encode_streamed(model: Any, j: Job) -> Any:
    """Encode one PNG read in row bands (tinyae.tiling.encode_png); the same EncodedImage as encode_images."""
    from .images import EncodedImage
    from .tiling import encode_png

    if j.input.suffix.lower() != ".png":
        raise ValueError(f"{j.input}: --stream reads PNG files only")
    try:
        z = encode_png(model, j.input, **(model.tiling_options if model.use_tiling else {}))
    except ValueError as e:
        raise ValueError(f"{j.input}: --stream: {_one_line(e)}") from None
    f = model.spatial_scale_factor
    return EncodedImage(latents=z[0].cpu(), size=(z.shape[3] * f, z.shape[2] * f))


def _latent_accept(f: Path) -> bool:
    return f.name.endswith((".safetensors", ".latent.png"))


def _latent_stem(p: Path) -> str:
    name = p.name
    for s in (".latent.png", ".safetensors", ".png"):
        if name.endswith(s):
            return name[: -len(s)]
    return p.stem


def cmd_decode(args: argparse.Namespace) -> int:
    if (rc := _video("decode", args)) is not None:
        return rc
    from .codec import load_latents, read_metadata
    from .images import check_channels, check_pixels, decode_latents
    from .variants import get_variant, is_variant

    rep, started = Reporter(args.json), time.perf_counter()
    if args.stream and args.format != "png":
        raise CliError("--stream writes PNG only (the one format written row by row here); use --format png")
    suffix = IMAGE_FORMATS[args.format]
    given = collect(args.inputs, _latent_accept, "latent files (*.safetensors, *.latent.png)")
    jobs = [k for j in given for k in _split_batch(j)]
    out = Path(args.output)
    if len(given) == 1 and len(jobs) > 1 and str(out).lower().endswith(tuple(IMAGE_FORMATS.values())):
        raise CliError(f"{given[0].input} holds {len(jobs)} latents, which decode to {len(jobs)} images "
                       f"(<name>_0{suffix}, <name>_1{suffix}, ...): give a folder as -o")
    out_dir = plan_outputs(jobs, out, lambda j: _latent_stem(j.input) + (
        f"_{j.index}" if j.index is not None else "") + suffix, tuple(IMAGE_FORMATS.values()))
    check_output_folder(out_dir)
    spec = args.model or os.environ.get(MODEL_ENV)
    if spec is None:  # the variant the files were made with, when they agree: a built-in name only
        recorded: dict[str, Path] = {}
        for j in jobs:
            v = read_metadata(j.input).get("variant") if j.status == "todo" else None
            if v is not None:
                recorded.setdefault(v if isinstance(v, str) else repr(v), j.input)
        for name, where in recorded.items():
            if not is_variant(name):
                raise CliError(f"{where}: records the model {name!r}, which is not a built-in variant; tinyae never "
                               "loads a model named by a file: pass --model to decode it")
        made_by = {get_variant(name).name for name in recorded}
        spec = made_by.pop() if len(made_by) == 1 else DEFAULT_MODEL
    runner = prepare_runner(args, spec, ["decoder"]) if any(j.status == "todo" for j in jobs) else None
    handle_existing(jobs, args.force, args.resume, lambda j, o: _trust_image(j, o, runner))
    warned: set[Path] = set()

    def load(j: Job) -> Any:
        assert runner is not None
        e = load_latents(j.input)
        if e.latents.dim() == 4:  # one image of a batch
            e.latents = e.latents[j.index or 0]
        made_by = e.metadata.get("variant")
        check_channels(runner.model, e.latents, str(j.input), made_by)
        if not args.stream:
            f = runner.model.spatial_scale_factor
            size = e.size or (e.latents.shape[-1] * f, e.latents.shape[-2] * f)
            check_pixels(j.input, size, args.max_pixels)
        if made_by and runner.variant and made_by != runner.variant and j.input not in warned:
            warned.add(j.input)
            rep.warn(f"{j.input}: made by {made_by}, decoding with {runner.variant}")
        return e

    def work(chunk: list[Job]) -> None:
        assert runner is not None
        live, loaded = _read_each(rep, chunk, load)
        if args.stream:
            for j, e in zip(live, loaded):
                _decode_streamed(runner.model, e, j)
                rep.line(f"{j.input} -> {j.output}  ({j.info['size'][0]}x{j.info['size'][1]} RGB, streamed)")
            return
        images = decode_latents(runner.engine, loaded, batch_size=args.batch_size)
        _same_count(live, images)
        for j, im in zip(live, images):
            assert j.output is not None
            save_image(im, j.output, args.format, args.quality, {"model": runner.fingerprint,
                                                                 "source": _source_name(j)})
            j.status, j.info = "ok", {"size": list(im.size), "mode": im.mode, "bytes": j.output.stat().st_size}
            rep.line(f"{j.input} -> {j.output}  ({im.size[0]}x{im.size[1]} {im.mode})")

    _run_jobs(rep, jobs, "decoding", args.batch_size, work)
    return finish(rep, "decode", jobs, started, {"model": spec, "variant": runner.variant if runner else None,
                                                   "format": args.format,
                                                   "precision": runner.precision if runner else None})


def _split_batch(j: Job) -> list[Job]:
    """A latent file holding a batch (B, C, h, w), B > 1, is B jobs (outputs <stem>_<i>); others stay one job."""
    if j.status != "todo" or not j.input.name.endswith(".safetensors"):
        return [j]
    try:
        from safetensors import safe_open

        with safe_open(str(j.input), framework="pt") as f:
            shape = f.get_slice("latents").get_shape()
    except Exception:  # not readable here: its job fails with the reader's message
        return [j]
    if len(shape) != 4 or shape[0] <= 1:
        return [j]
    return [Job(j.input, index=i) for i in range(shape[0])]


def _decode_streamed(model: Any, e: Any, j: Job) -> None:
    """Decode one latent file straight into a PNG, band by band (tinyae.tiling.decode_to_png)."""
    from .tiling import decode_to_png

    if e.alpha is not None or e.grayscale:
        raise CliError("--stream writes RGB only; this image had alpha or was grayscale (decode it "
                       "without --stream)")
    decode_to_png(model, e.latents[None].to(model.device), j.output, size=tuple(e.size) if e.size else None,
                  **(model.tiling_options if model.use_tiling else {}))
    from PIL import Image

    with Image.open(j.output) as im:
        j.status, j.info = "ok", {"size": list(im.size), "mode": im.mode, "bytes": j.output.stat().st_size}


def save_image(im: Any, path: Path, fmt: str, quality: int = 95, meta: dict[str, Any] | None = None) -> None:
    """Write an image atomically; JPEG has no alpha (dropped), WebP and PNG keep it. PNG: `meta` goes into a
    `tinyae` text chunk (model fingerprint and source: what --resume checks)."""
    from PIL import PngImagePlugin

    from .weights import atomic_write

    if fmt == "jpg" and im.mode in ("RGBA", "LA"):
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    options: dict[str, Any] = {"png": {"format": "PNG"}, "jpg": {"format": "JPEG", "quality": quality},
                               "webp": {"format": "WEBP", "quality": quality}}[fmt]
    if fmt == "png" and meta:
        info = PngImagePlugin.PngInfo()
        info.add_text("tinyae", json.dumps(meta, sort_keys=True))
        options["pnginfo"] = info
    atomic_write(path, lambda p: im.save(p, **options))


def cmd_roundtrip(args: argparse.Namespace) -> int:
    if (rc := _video("roundtrip", args)) is not None:
        return rc
    import io

    from PIL import Image

    from .codec import encode_png_bytes, png_to_latents
    from .images import (IMAGE_SUFFIXES, EncodedImage, decode_latents, encode_images, psnr, read_image, read_source,
                         ssim)

    rep, started = Reporter(args.json), time.perf_counter()
    jobs = collect(args.inputs, lambda f: f.suffix.lower() in IMAGE_SUFFIXES and not f.name.endswith(".latent.png"),
                   "images")
    out = Path(args.output) if args.output else None
    if out is not None:
        plan_outputs(jobs, out, lambda j: j.input.stem + ".compare.png", (),
                     extra=lambda j: [j.input.stem + ".decoded.png"])
        check_output_folder(out)
    runner = None
    if any(j.status == "todo" for j in jobs):
        runner = prepare_runner(args, default_model(args), ["encoder", "decoder"])
    if out is not None:
        handle_existing(jobs, args.force, args.resume, lambda j, o: _trust_image(j, o, runner))

    def work(chunk: list[Job]) -> None:
        assert runner is not None
        model = runner.model
        for j in chunk:
            if j.status != "todo":
                continue
            src = read_image(j.input, args.max_pixels)  # 8-bit view: what PSNR / SSIM compare
            enc = encode_images(runner.engine, read_source(j.input))[0]  # full precision (16-bit PNGs)
            png = encode_png_bytes(enc.latents, model.latent_magnitude, model.latent_shift)
            z8 = png_to_latents(Image.open(io.BytesIO(png)), enc.latents.shape[0],
                                model.latent_magnitude, model.latent_shift)
            dec, dec8 = decode_latents(runner.engine, [enc, EncodedImage(z8, enc.size, enc.alpha, enc.grayscale)])
            w, h = src.size
            j.info = {"size": [w, h], "psnr": round(psnr(src, dec), 4), "ssim": round(ssim(src, dec), 5),
                      "psnr_8bit": round(psnr(src, dec8), 4), "latent_png_bytes": len(png),
                      "bits_per_pixel": round(8 * len(png) / (w * h), 4), "source_bytes": j.input.stat().st_size}
            if j.output is not None:
                meta = {"model": runner.fingerprint, "source": _source_name(j)}
                save_image(side_by_side(src, dec), j.output, "png", meta=meta)
                save_image(dec, j.also[0], "png", meta=meta)
            j.status = "ok"
            i = j.info
            rep.line(f"{j.input}  {w}x{h}  PSNR {i['psnr']:.2f} dB  SSIM {i['ssim']:.4f}  8-bit latent PNG "
                     f"{_kb(len(png))} = {i['bits_per_pixel']:.3f} bpp ({100 * len(png) / i['source_bytes']:.1f}% "
                     f"of the source file), PSNR {i['psnr_8bit']:.2f} dB")

    _run_jobs(rep, jobs, "roundtrip", 1, work)
    done = [j.info for j in jobs if j.status == "ok"]
    mean = _finite_mean(done, ("psnr", "ssim", "psnr_8bit", "bits_per_pixel"))
    for d in done:  # an exact reconstruction has PSNR inf: JSON has no inf, say null (and "exact")
        for k in ("psnr", "psnr_8bit"):
            if not math.isfinite(d[k]):
                d[k], d[f"{k}_exact"] = None, True
    if mean:
        db = {k: "exact" if mean[k] is None else f"{mean[k]:.2f} dB" for k in ("psnr", "psnr_8bit")}
        exact = f", {mean['exact']} exact, left out of the PSNR mean" if mean.get("exact") else ""
        rep.line(f"mean  PSNR {db['psnr']}  SSIM {mean['ssim']:.4f}  8-bit latent {mean['bits_per_pixel']:.3f}"
                 f" bpp, PSNR {db['psnr_8bit']}  ({len(done)} images{exact})")
    return finish(rep, "roundtrip", jobs, started, {"model": runner.spec if runner else default_model(args),
                                                      "variant": runner.variant if runner else None, "mean": mean,
                                                      "precision": runner.precision if runner else None})


def _finite_mean(done: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Mean of each metric over the images where it is finite (None if none is); `exact`: how many were left out
    for an infinite (exact) PSNR."""
    if not done:
        return {}
    mean: dict[str, Any] = {}
    for k in keys:
        vals = [d[k] for d in done if d.get(k) is not None and math.isfinite(d[k])]
        mean[k] = round(sum(vals) / len(vals), 4) if vals else None
    exact = sum(1 for d in done if not math.isfinite(d["psnr"]))
    if exact:
        mean["exact"] = exact
    return mean


def side_by_side(a: Any, b: Any) -> Any:
    """Source | decoded, in RGB(A), for a visual check."""
    from PIL import Image

    mode = "RGBA" if "A" in a.mode or "A" in b.mode else "RGB"
    a, b = a.convert(mode), b.convert(mode)
    canvas = Image.new(mode, (a.width + b.width, max(a.height, b.height)))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width, 0))
    return canvas


def _source_dtype(source: Any) -> str:
    """The floating dtype of the first tensor of a source's first weight file (float32 if unknown)."""
    from .weights import read_tensors

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

    from .model import AutoencoderTiny
    from .weights import WeightsError, atomic_write, save_comfyui, save_diffusers, save_original, state_dict_of

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

        from . import __version__

        meta = {"format": "pt", "config": model.config.to_json_string(), "tinyae_version": __version__}
        sd = state_dict_of(model)
        atomic_write(targets[0], lambda p: save_file(sd, p, metadata=meta))
    for t in targets:
        rep.line(f"wrote {t}  ({_kb(t.stat().st_size)})")
    rep.emit({"command": "convert", "source": args.src, "to": args.to, "variant": variant, "dtype": dtype,
              "outputs": [str(t) for t in targets], "seconds": round(time.perf_counter() - started, 3)})
    return 0


def _latent_info(path: Path) -> dict[str, Any] | None:
    """Latent-file facts, or None when `path` is not a latent file."""
    from .codec import LatentFileError, load_latents

    if not path.is_file() or not path.name.endswith((".safetensors", ".png")):
        return None
    try:
        e = load_latents(path)
    except LatentFileError:
        return None
    return {"kind": "latents", "file": str(path), "bytes": path.stat().st_size,
            "latent_shape": list(e.latents.shape), "original_size": list(e.size) if e.size else None,
            "alpha": e.alpha is not None, **e.metadata}


def cmd_info(args: argparse.Namespace) -> int:
    if (rc := _video("info", args)) is not None:
        return rc
    from .config import UNCHECKED_BY_TENSORS
    from .model import AutoencoderTiny
    from .variants import VARIANTS, variant_config
    from .weights import WeightsError, identify, sha256_file

    rep = Reporter(args.json)
    lat = _latent_info(Path(args.src)) if "," not in args.src else None
    if lat is not None:
        rep.emit(lat)
        for k, v in lat.items():
            rep.line(f"{k:16} {v}")
        return 0
    source = model_source(args.src)
    try:
        model = AutoencoderTiny.from_pretrained(source)
        files = resolve_files(source)
    except WeightsError as e:
        raise WeightsError(_model_hint(args.src, e)) from None
    variant = identify_variant(source, model)
    same_arch = [n for n in VARIANTS if variant_config(n) == model.config.init_kwargs()]
    params = {part: sum(p.numel() for p in getattr(model, part).parameters())
              for part in ("encoder", "decoder") if getattr(model, part) is not None}
    formats = ["original", "comfyui", "safetensors"]
    formats.insert(0, "diffusers" if model.config.diffusers_compatible else "diffusers (tinyae only)")
    doc = {"kind": "weights", "source": args.src, "variant": variant, "same_architecture_as": same_arch,
           "latent_channels": model.config.latent_channels, "scale_factor": model.spatial_scale_factor,
           "parts": list(params), "parameters": {**params, "total": sum(params.values())},
           "dtype": _source_dtype(source), "diffusers_compatible": model.config.diffusers_compatible,
           "files": [{"path": p, "part": part, "bytes": os.path.getsize(p), "sha256": sha256_file(p),
                      "known_as": identify(p)} for p, part in files],
           "formats": formats, "auto_precision": _auto_precision(),
           "config_from": _config_origin(source, files),
           "not_checked_against_tensors": {k: model.config[k] for k in UNCHECKED_BY_TENSORS}}
    rep.emit(doc)
    rep.line(f"variant          {variant or 'unknown'}"
             + (f" (architecture of {', '.join(same_arch)})" if same_arch and not variant else ""))
    rep.line(f"latent channels  {doc['latent_channels']}")
    rep.line(f"scale factor     {doc['scale_factor']} (image pixels per latent pixel)")
    rep.line("parameters       " + ", ".join(f"{k} {v:,}" for k, v in doc["parameters"].items()))
    rep.line(f"dtype            {doc['dtype']}")
    for f in doc["files"]:
        known = f"  = {f['known_as']}" if f["known_as"] else ""
        rep.line(f"file             {f['path']} ({_kb(f['bytes'])}) sha256 {f['sha256']}{known}")
    rep.line(f"saves to         {', '.join(formats)}")
    rep.line(f"not in weights   {', '.join(f'{k}={v}' for k, v in doc['not_checked_against_tensors'].items())} "
             f"(from {doc['config_from']}: no tensor confirms them)")
    for d in doc["auto_precision"]:
        rep.line(f"--precision auto {d['precision']} on {d['device']}: {d['why']}")
    return 0


def _auto_precision() -> list[dict[str, str]]:
    """What --precision auto resolves to on each device of this machine, and why."""
    import torch

    from .runtime import explain_precision

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [dict(zip(("device", "precision", "why"), (d, *explain_precision(d)))) for d in devices]


def _config_origin(source: Any, files: list[tuple[str, str | None]]) -> str:
    """Where a loaded model's non-tensor settings came from: a config.json, the variant registry, or defaults."""
    from .variants import is_variant
    from .weights import DIFFUSERS_WEIGHTS

    if any(Path(p).name in DIFFUSERS_WEIGHTS for p, _ in files):
        return "config.json"
    if isinstance(source, str) and is_variant(source):
        return "the variant registry"
    return "the defaults (weights files hold no config)"


def forward(command: str, argv: list[str]) -> int:
    """`tinyae bench ...` / `tinyae export-onnx ...`: hand the rest of argv to the module that implements it."""
    import importlib

    module, func = FORWARDED[command]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            print(f"tinyae: error: `tinyae {command}` needs {module}, which this installation lacks", file=sys.stderr)
            return 1
        raise
    if not hasattr(mod, func):
        print(f"tinyae: error: `tinyae {command}` needs {module}.{func}, which this installation lacks",
              file=sys.stderr)
        return 1
    return int(getattr(mod, func)(argv) or 0)


# ---------------------------------------------------------------------------------------------- parser
_EPILOGS = {
    "encode": """examples:
  tinyae encode photos/ -o latents/                       one .safetensors per image (float latents)
  tinyae encode a.jpg b.png -o latents/ --format png      8-bit latent PNGs (a.latent.png, b.latent.png)
  tinyae encode photo.jpg -o photo.safetensors --model taesdxl
  tinyae encode photos/ -o latents/ --resume              skip the outputs a previous run completed
  tinyae encode photos/ -o latents/ --model enc.pth,dec.pth""",
    "decode": """examples:
  tinyae decode latents/ -o decoded/                      the model the files record (else $TINYAE_MODEL, taef2)
  tinyae decode a.safetensors -o a.png
  tinyae decode latents/ -o decoded/ --format webp --quality 90""",
    "roundtrip": """examples:
  tinyae roundtrip photos/                                PSNR, SSIM, bits per pixel of the 8-bit latent PNG
  tinyae roundtrip a.png b.png -o compare/ --json         + side-by-side and decoded images, JSON report""",
    "convert": """examples:
  tinyae convert taef2_encoder.pth,taef2_decoder.pth out/taef2-diffusers --to diffusers
  tinyae convert out/taef2-diffusers out/original --to original         taef2_encoder/decoder.safetensors
  tinyae convert taesd comfy/taesd.safetensors --to comfyui               ComfyUI's vae_approx file
  tinyae convert weights/ model.safetensors --to safetensors --dtype float16""",
    "info": """examples:
  tinyae info taef2_encoder.pth,taef2_decoder.pth
  tinyae info out/taef2-diffusers --json
  tinyae info latents/astronaut.safetensors               a latent file: shape, variant, original size""",
}

_MODEL_HELP = (f"variant name (taesd, taesdxl, taesd3, taef1, taef2, taesana), hub id, folder, weights file, or "
               f"ENCODER_FILE,DECODER_FILE (default: ${MODEL_ENV}, else {DEFAULT_MODEL})")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document (machine-readable) on stdout")
    common.add_argument("--debug", action="store_true", help="show tracebacks")

    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument("--force", action="store_true", help="overwrite existing outputs")
    batch.add_argument("--resume", action="store_true",
                       help="skip outputs that exist (they are complete: every output is written atomically)")

    compute = argparse.ArgumentParser(add_help=False)
    compute.add_argument("--model", "-m", help=_MODEL_HELP)
    compute.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, "
                         "mps (default: auto)")
    compute.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                         help="model dtype (auto: float16 on cuda, float32 elsewhere)")
    compute.add_argument("--batch-size", type=_positive, default=4, help="images per model call (default 4)")
    compute.add_argument("--tile", action="store_true", help="encode/decode in tiles (model.enable_tiling())")
    compute.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                         help="what runs the model (default torch)")
    compute.add_argument("--precision", default="auto", choices=list(PRECISION_CHOICES),
                         help="auto (default: the fastest precision that keeps >= 40 dB PSNR against fp32 on real "
                              "photos on this device; `tinyae info` says which), fp32 / bf16 / fp16 (optimize()), "
                              "or exact (the eager float32 network, diffusers' exact function)")
    compute.add_argument("--max-pixels", type=_positive, default=DEFAULT_MAX_PIXELS,
                         help=f"refuse images above this many pixels before reading them (default "
                              f"{DEFAULT_MAX_PIXELS:,}); --stream has no limit")

    p = argparse.ArgumentParser(prog="tinyae", description="Tiny AutoEncoders (the TAESD family): encode images "
                                "to diffusion latents and back, measure, convert weights.",
                                epilog="`tinyae COMMAND --help` shows each command's options and examples.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"tinyae {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    s = sub.add_parser("encode", parents=[common, batch, compute], formatter_class=raw, epilog=_EPILOGS["encode"],
                       help="images -> latent files", description="Encode images (files or folders) to latents.")
    s.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (or a file for one input)")
    s.add_argument("--format", choices=list(LATENT_FORMATS), default="safetensors",
                   help="safetensors (float latents, default) or png (8-bit latent PNG)")
    s.add_argument("--stream", action="store_true",
                   help="read each PNG in row bands (memory flat in image size; RGB PNGs whose sides are multiples "
                        "of the scale factor)")
    s.set_defaults(run=cmd_encode)

    s = sub.add_parser("decode", parents=[common, batch, compute], formatter_class=raw, epilog=_EPILOGS["decode"],
                       help="latent files -> images", description="Decode latent files (or folders of them).")
    s.add_argument("inputs", nargs="+", metavar="LATENTS_OR_DIRS")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (or a file for one input)")
    s.add_argument("--format", choices=list(IMAGE_FORMATS), default="png", help="image format (default png)")
    s.add_argument("--quality", type=_positive, default=95, help="jpg/webp quality 1-100 (default 95)")
    s.add_argument("--stream", action="store_true",
                   help="write each PNG row band by row band (memory flat in image size; png, RGB, no alpha)")
    s.add_argument("--frames", action="store_true",
                   help="video latents: write each video as a folder of PNG frames (OUT/NAME/000000.png)")
    s.set_defaults(run=cmd_decode)

    s = sub.add_parser("roundtrip", parents=[common, batch, compute], formatter_class=raw,
                       epilog=_EPILOGS["roundtrip"], help="measure encode+decode quality on images",
                       description="Encode and decode images; report PSNR and SSIM against the source (float "
                       "latents), and the 8-bit latent PNG's size (bits per source pixel) and PSNR.")
    s.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS")
    s.add_argument("-o", "--output", metavar="OUT", help="write <name>.compare.png (source | decoded) and "
                   "<name>.decoded.png here")
    s.set_defaults(run=cmd_roundtrip)

    s = sub.add_parser("convert", parents=[common], formatter_class=raw, epilog=_EPILOGS["convert"],
                       help="convert weights between formats", description="Convert weights to another layout.")
    s.add_argument("src", metavar="SRC", help=_MODEL_HELP.split(" (default")[0])
    s.add_argument("dst", metavar="DST", help="folder (diffusers, original) or .safetensors file (comfyui, "
                   "safetensors; a folder gets <name>.safetensors)")
    s.add_argument("--to", required=True, choices=["diffusers", "original", "comfyui", "safetensors"])
    s.add_argument("--name", help="file name base for original/comfyui/safetensors (default: the variant, or tae)")
    s.add_argument("--pth", action="store_true", help="original layout as .pth instead of .safetensors")
    s.add_argument("--dtype", default="keep", choices=["keep", "float32", "float16", "bfloat16"],
                   help="dtype of the written tensors (default: keep the source's)")
    s.add_argument("--force", action="store_true", help="overwrite existing files")
    s.set_defaults(run=cmd_convert)

    s = sub.add_parser("info", parents=[common], formatter_class=raw, epilog=_EPILOGS["info"],
                       help="describe weights (or a latent file)",
                       description="Variant, latent channels, scale factor, parameters, dtype, sha256, formats.")
    s.add_argument("src", metavar="SRC", help=_MODEL_HELP.split(" (default")[0] + ", or a latent file")
    s.set_defaults(run=cmd_info)

    sub.add_parser("bench", help="benchmarks (tinyae bench --help)", add_help=False)
    sub.add_parser("export-onnx", help="export to ONNX (tinyae export-onnx --help)", add_help=False)
    sub.add_parser("encode-dataset", help="image collection -> latent shards (resumable; --help)", add_help=False)
    sub.add_parser("decode-dataset", help="latent shards -> images, for spot checks (--help)", add_help=False)
    sub.add_parser("train", help="distil a TAE from a teacher VAE (tinyae train --help)", add_help=False)
    sub.add_parser("eval", help="PSNR/SSIM of a TAE on a folder (tinyae eval --help)", add_help=False)
    return p


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through atomic_write, which removes its temporary file


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in FORWARDED:
        return forward(args_list[0], args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("tinyae: interrupted; outputs written so far are complete (rerun with --resume)", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"tinyae: error: {_one_line(e)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
