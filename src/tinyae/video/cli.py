"""`tinyae encode|decode|roundtrip|info` for videos and video models (cli.py hands them here).

Videos (mp4/webm/gif/mkv/mov, or a folder of frame images) are streamed frame by frame through
StreamingEncoder/StreamingDecoder: memory does not grow with the video's length. Video latents are written as
.safetensors holding `latents` (1, C, T, h, w) and metadata (kind=video, variant, fps, frame count, size).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cli import (MODEL_ENV, CliError, Job, Reporter, _optimized, check_output_folder, finish, handle_existing,
                   plan_outputs)
from ..images import psnr, ssim
from ..weights import WeightsError, atomic_write
from .frames import needs_latent_count
from .io import VIDEO_SUFFIXES, VideoError, frame_files, is_video_path, probe, read_frames, write_frames
from .variants import is_video_variant

_VIDEO_KEY = re.compile(r"^(en|de)coder\.\d+\.")


# ---------------------------------------------------------------------------------------------- dispatch
def _safetensors_meta(path: Path) -> dict[str, str]:
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception:
        return {}


def is_video_model(spec: str | None) -> bool:
    """A video variant name, a video TAE file (encoder.N.* / decoder.N.* tensors) or its diffusers-style folder."""
    if not spec:
        return False
    if is_video_variant(spec):
        return True
    p = Path(spec)
    if p.is_dir():
        try:
            return json.loads((p / "config.json").read_text()).get("_class_name") == "AutoencoderTinyVideo"
        except (OSError, ValueError, AttributeError):
            return False
    if p.is_file() and p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), "pt") as f:
                return any(_VIDEO_KEY.match(k) for k in f.keys())
        except Exception:
            return False
    if p.is_file() and p.suffix in (".pth", ".pt"):
        try:
            sd = torch.load(str(p), map_location="meta", weights_only=True)
            return isinstance(sd, dict) and any(isinstance(k, str) and _VIDEO_KEY.match(k) for k in sd)
        except Exception:
            return False
    return False


def wants_video(command: str, args: argparse.Namespace) -> bool:
    """Whether a command's inputs or model are a video's (then `run` handles it)."""
    if command == "info":
        return is_video_model(args.src)
    spec = args.model or os.environ.get(MODEL_ENV)
    if is_video_model(spec):
        return True
    inputs = [Path(p) for p in args.inputs]
    if command == "decode":
        if getattr(args, "frames", False):
            return True
        return any(p.suffix == ".safetensors" and _safetensors_meta(p).get("kind") == "video" for p in inputs)
    return any(is_video_path(p) for p in inputs)


def run(command: str, args: argparse.Namespace) -> int:
    return {"encode": cmd_encode, "decode": cmd_decode, "roundtrip": cmd_roundtrip, "info": cmd_info}[command](args)


# ---------------------------------------------------------------------------------------------- helpers
def load_video_model(args: argparse.Namespace, spec: str | None) -> Any:
    from .model import AutoencoderTinyVideo

    if not spec:
        raise CliError("video commands need --model: a video TAE file (.pth/.safetensors, e.g. taew2_1.pth) or "
                       "folder")
    if is_video_variant(spec) and not Path(spec).exists():
        raise CliError(f"--model {spec}: give the weights file (e.g. {spec}.pth from madebyollin/taehv); video "
                       "weights are not downloaded by name")
    try:
        model = AutoencoderTinyVideo.from_pretrained(spec)
    except (WeightsError, KeyError, ValueError, OSError) as e:
        raise CliError(f"--model {spec}: {e}") from None
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    precision = getattr(args, "precision", "exact")
    if precision != "exact" and args.dtype != "auto":
        raise CliError(f"--dtype {args.dtype} sets the dtype of --precision exact; with --precision {precision} "
                       "the precision chooses it (use --precision fp32, bf16 or fp16)")
    dtype = {"auto": torch.float32, "float32": torch.float32, "float16": torch.float16,
             "bfloat16": torch.bfloat16}[args.dtype]
    if getattr(args, "backend", "torch") != "torch":
        raise CliError(f"--backend {args.backend}: video models run in torch here; for ONNX export the streaming "
                       "graphs with tinyae.video.onnx.export_video_onnx")
    model, used = _optimized(model.to(device, dtype), precision)  # --precision auto: optimize() where it runs
    model.__dict__["cli_precision"] = used
    tile = getattr(args, "tile", False)
    if tile:  # exact spatial row bands (tinyae.video.tiling); an int (--tile ROWS) sets the band height
        model.enable_tiling(TILE_ROWS if tile is True else tile)
    return model


TILE_ROWS = 16  # latent rows per band for --tile (128 pixel rows at 8x, 256 at 16x, 512 at 32x)


def _summary(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    return {"model": args.model, "variant": model.config.variant, "precision": model.__dict__["cli_precision"],
            "tile_rows": model.tile_rows}


def collect_videos(paths: list[str]) -> list[Job]:
    """Video files as given; a folder holding videos gives those, a folder of frame images is one video."""
    jobs = []
    for p in map(Path, paths):
        if p.is_dir():
            vids = sorted(f for f in p.iterdir() if f.is_file() and is_video_path(f))
            if vids:
                jobs += [Job(f) for f in vids]
            elif frame_files(p):
                jobs.append(Job(p))
            else:
                jobs.append(Job(p, status="failed", error=f"{p}: no videos or frame images in this folder"))
        elif p.exists():
            jobs.append(Job(p))
        else:
            jobs.append(Job(p, status="failed", error=f"{p}: no such file or folder"))
    return jobs


def _to_tensor(a: np.ndarray, model: Any) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].to(model.device, model.dtype) / 255 * 2 - 1


def _to_uint8(f: torch.Tensor) -> np.ndarray:
    return ((f[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def _check_size(model: Any, j: Job) -> Any:
    info = probe(j.input)
    f = model.config.encoder_space_factor
    if info.width % f or info.height % f:
        raise VideoError(f"{j.input}: {info.width}x{info.height} is not a multiple of {f} (the model's pixels per "
                         "latent pixel); crop or scale the video first")
    return info


def _run(rep: Reporter, jobs: list[Job], work) -> None:
    for j in jobs:
        if j.status == "failed":
            rep.fail(j.error or str(j.input))
    for j in (j for j in jobs if j.status == "todo"):
        try:
            work(j)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # one bad video does not stop the others
            j.status, j.error = "failed", str(e).splitlines()[0]
            rep.fail(j.error)


# ---------------------------------------------------------------------------------------------- commands
def cmd_encode(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from .model import StreamingEncoder

    rep, started = Reporter(args.json), time.perf_counter()
    jobs = collect_videos(args.inputs)
    check_output_folder(plan_outputs(jobs, Path(args.output), lambda j: j.input.stem + ".safetensors",
                                     (".safetensors",)))
    handle_existing(jobs, args.force, args.resume)
    model = load_video_model(args, args.model or os.environ.get(MODEL_ENV))

    def work(j: Job) -> None:
        info = _check_size(model, j)
        enc, parts, n = StreamingEncoder(model), [], 0
        for a in read_frames(j.input):
            parts.append(enc.push(_to_tensor(a, model)).cpu())
            n += 1
        z = torch.cat(parts + [enc.flush().cpu()], 2).float().contiguous()
        meta = {"kind": "video", "variant": str(model.config.variant), "fps": str(info.fps), "frames": str(n),
                "precision": model.__dict__["cli_precision"],
                "width": str(info.width), "height": str(info.height)}
        atomic_write(j.output, lambda tmp: save_file({"latents": z}, tmp, metadata=meta))
        j.status, j.info = "ok", {"frames": n, "latent_shape": list(z.shape), "bytes": j.output.stat().st_size}
        rep.line(f"{j.input} -> {j.output}  ({n} frames {info.width}x{info.height} -> latents "
                 f"{'x'.join(map(str, z.shape))})")

    _run(rep, jobs, work)
    return finish(rep, "encode", jobs, started, _summary(args, model))


def _read_latents(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    from safetensors.torch import load_file

    try:
        z = load_file(str(path))["latents"]
    except Exception as e:
        raise VideoError(f"{path}: not a video latent file ({type(e).__name__}: {e})") from None
    if z.ndim != 5:
        raise VideoError(f"{path}: latents {tuple(z.shape)} are not a video's (1, C, T, h, w)")
    return z, _safetensors_meta(path)


def cmd_decode(args: argparse.Namespace) -> int:
    from .model import StreamingDecoder

    rep, started = Reporter(args.json), time.perf_counter()
    jobs = [Job(Path(p)) if Path(p).is_file() else Job(Path(p), status="failed", error=f"{p}: no such file")
            for p in args.inputs]
    if args.frames:  # a folder of PNG frames per video: OUT/<name>/
        check_output_folder(plan_outputs(jobs, Path(args.output), lambda j: j.input.stem, ()))
    else:
        check_output_folder(plan_outputs(jobs, Path(args.output), lambda j: j.input.stem + ".mp4",
                                         tuple(VIDEO_SUFFIXES)))
    handle_existing(jobs, args.force, args.resume)
    model = load_video_model(args, args.model or os.environ.get(MODEL_ENV))

    def work(j: Job) -> None:
        z, meta = _read_latents(j.input)
        if z.shape[1] != model.config.latent_channels:
            raise VideoError(f"{j.input}: {z.shape[1]}-channel latents; the model takes "
                             f"{model.config.latent_channels}")
        dec = StreamingDecoder(model, num_latents=z.shape[2])
        frames = (_to_uint8(f) for f in dec.frames(z.to(model.device, model.dtype).unbind(2)))
        n = write_frames(j.output, frames, fps=float(meta.get("fps", 16)))
        j.status, j.info = "ok", {"frames": n}
        rep.line(f"{j.input} -> {j.output}  ({z.shape[2]} latents -> {n} frames)")

    _run(rep, jobs, work)
    return finish(rep, "decode", jobs, started, _summary(args, model))


def flicker(prev_src: np.ndarray, src: np.ndarray, prev_out: np.ndarray, out: np.ndarray) -> float:
    """Temporal flicker of one frame step: mean |change of the output - change of the source|, in [0, 1] units."""
    d_out = out.astype(np.float64) - prev_out
    d_src = src.astype(np.float64) - prev_src
    return float(np.mean(np.abs(d_out - d_src)) / 255)


def cmd_roundtrip(args: argparse.Namespace) -> int:
    from .model import StreamingDecoder, StreamingEncoder

    rep, started = Reporter(args.json), time.perf_counter()
    jobs = collect_videos(args.inputs)
    if args.output:
        check_output_folder(plan_outputs(jobs, Path(args.output), lambda j: j.input.stem + ".decoded.mp4", ()))
        handle_existing(jobs, args.force, args.resume)
    model = load_video_model(args, args.model or os.environ.get(MODEL_ENV))
    if needs_latent_count(model.config):
        raise CliError(f"roundtrip streams frames; {model.config.variant} needs the latent count up front "
                       "(encode, then decode)")

    def work(j: Job) -> None:
        info = _check_size(model, j)
        enc, dec = StreamingEncoder(model), StreamingDecoder(model)
        sources: deque[np.ndarray] = deque()  # frames read but not yet decoded (a few: the model's latency)
        stats = {"psnr": [], "ssim": [], "flicker": []}
        prev: list[Any] = [None, None]
        count = [0]

        def compare(frames: torch.Tensor):
            for f in frames.unbind(2):
                if not sources:
                    return  # frames made from end padding: no source to compare with
                src, out = sources.popleft(), _to_uint8(f)
                stats["psnr"].append(psnr(src, out))
                stats["ssim"].append(ssim(src, out))
                if prev[0] is not None:
                    stats["flicker"].append(flicker(prev[0], src, prev[1], out))
                prev[:] = [src, out]
                yield out

        def decoded():  # frames flow through: read, encode, decode, compare, (write) one at a time
            for a in read_frames(j.input):
                sources.append(a)
                count[0] += 1
                yield from compare(dec.push(enc.push(_to_tensor(a, model))))
            yield from compare(dec.push(enc.flush()))

        if args.output:
            write_frames(j.output, decoded(), fps=info.fps)
        else:
            for _ in decoded():
                pass
        n = count[0]
        finite = [p for p in stats["psnr"] if math.isfinite(p)]
        j.status = "ok"
        j.info = {"frames": n, "compared": len(stats["psnr"]),
                  "psnr_mean": round(float(np.mean(finite)), 3) if finite else None,
                  "psnr_min": round(float(np.min(finite)), 3) if finite else None,
                  "ssim_mean": round(float(np.mean(stats["ssim"])), 4),
                  "flicker": round(float(np.mean(stats["flicker"])), 5) if stats["flicker"] else 0.0,
                  "per_frame": {"psnr": [round(p, 3) for p in stats["psnr"]],
                                "ssim": [round(s, 4) for s in stats["ssim"]]}}
        rep.line(f"{j.input}: {n} frames, {len(stats['psnr'])} compared  PSNR {j.info['psnr_mean']} dB "
                 f"(min {j.info['psnr_min']})  SSIM {j.info['ssim_mean']}  flicker {j.info['flicker']}")

    _run(rep, jobs, work)
    return finish(rep, "roundtrip", jobs, started, _summary(args, model))


def cmd_info(args: argparse.Namespace) -> int:
    from .model import AutoencoderTinyVideo

    rep = Reporter(args.json)
    if is_video_variant(args.src) and not Path(args.src).exists():
        from .variants import get_video_variant

        v = get_video_variant(args.src)
        doc = {"variant": v.name, "description": v.description, "family": v.family.name,
               "latent_channels": v.latent_channels, "patch_size": v.patch_size, "time_factor": v.time_factor,
               "space_factor": v.space_factor, "decoder": v.decoder, "files": list(v.files)}
    else:
        try:
            m = AutoencoderTinyVideo.from_pretrained(args.src)
        except (WeightsError, KeyError, ValueError) as e:
            raise CliError(f"{args.src}: {e}") from None
        c = m.config
        doc = {"source": args.src, "kind": "video", **{k: v for k, v in c.to_dict().items() if k != "_class_name"},
               "time_factor": c.time_factor, "space_factor": c.encoder_space_factor,
               "parts": [p for p in ("encoder", "decoder") if getattr(m, p) is not None],
               "parameters": sum(p.numel() for p in m.parameters()),
               "frames_for_latents": {t: m.decoded_frames(t) for t in (1, 2, 5, 21)} if m.decoder else None}
    rep.emit(doc)
    for k, v in doc.items():
        rep.line(f"{k}: {v}")
    return 0
