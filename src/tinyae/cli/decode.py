"""`tinyae decode`: latent files -> images (or videos)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from .common import CliError, DEFAULT_MODEL, IMAGE_FORMATS, MODEL_ENV
from .runner import Job, Reporter, _read_each, _run_jobs, _same_count, _source_name, _trust_image, check_output_folder, collect, finish, handle_existing, plan_outputs, save_image
from .models import _video, prepare_runner


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
    from ..data.codec import load_latents, read_metadata
    from ..data.images import check_channels, check_pixels, decode_latents
    from ..nets.variants import get_variant, is_variant

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
        e = load_latents(j.input, runner.model.config.latent_channels)
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
                w, h = j.info["size"]
                rep.line(f"{j.input} -> {j.output}  ({w}x{h} {j.info['mode']}, streamed)")
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
    from ..engine.tiling import decode_to_png

    if e.alpha is not None or e.grayscale:
        raise CliError("--stream writes the model's channels only (RGB, or RGBA for an RGBA model); this image had "
                       "alpha kept aside or was grayscale (decode it without --stream)")
    decode_to_png(model, e.latents[None].to(model.device), j.output, size=tuple(e.size) if e.size else None,
                  **(model.tiling_options if model.use_tiling else {}))
    from PIL import Image

    with Image.open(j.output) as im:
        j.status, j.info = "ok", {"size": list(im.size), "mode": im.mode, "bytes": j.output.stat().st_size}
