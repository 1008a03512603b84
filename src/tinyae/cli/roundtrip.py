"""`tinyae roundtrip`: encode + decode, PSNR/SSIM and the 8-bit latent PNG's size."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Sequence

from .common import _kb
from .runner import Job, Reporter, _run_jobs, _source_name, _trust_image, check_output_folder, collect, finish, handle_existing, plan_outputs, save_image
from .models import _video, default_model, prepare_runner


def cmd_roundtrip(args: argparse.Namespace) -> int:
    if (rc := _video("roundtrip", args)) is not None:
        return rc
    import io

    from PIL import Image

    from ..data.codec import encode_png_bytes, png_to_latents
    from ..data.images import IMAGE_SUFFIXES, EncodedImage, decode_latents, encode_images, read_image, read_source
    from ..data.metrics import psnr, ssim

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
