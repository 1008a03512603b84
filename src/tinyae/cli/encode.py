"""`tinyae encode`: images (or videos) -> latent files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import LATENT_FORMATS, _kb, _one_line
from .runner import Job, Reporter, _read_each, _run_jobs, _same_count, _trust_latents, check_output_folder, collect, finish, handle_existing, plan_outputs
from .models import _video, default_model, prepare_runner


def cmd_encode(args: argparse.Namespace) -> int:
    if (rc := _video("encode", args)) is not None:
        return rc
    from ..data.codec import save_latents
    from ..data.images import IMAGE_SUFFIXES, encode_images, read_source

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


def _encode_streamed(model: Any, j: Job) -> Any:
    """Encode one PNG read in row bands (tinyae.tiling.encode_png); the same EncodedImage as encode_images."""
    from ..data.images import EncodedImage
    from ..engine.tiling import encode_png

    if j.input.suffix.lower() != ".png":
        raise ValueError(f"{j.input}: --stream reads PNG files only")
    try:
        z = encode_png(model, j.input, **(model.tiling_options if model.use_tiling else {}))
    except ValueError as e:
        raise ValueError(f"{j.input}: --stream: {_one_line(e)}") from None
    f = model.spatial_scale_factor
    return EncodedImage(latents=z[0].cpu(), size=(z.shape[3] * f, z.shape[2] * f))
