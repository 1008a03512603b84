"""Evaluation on held-out images, for the trainer and for `tinyae eval MODEL FOLDER [--teacher T] [--json]`.

Metrics (dB; images compared as 8-bit, as saved; latents through the 8-bit scaling `scale_latents`, i.e.
[-3, 3] -> [0, 1]):
- psnr, ssim: the student's decoder on the teacher's latents vs the ground truth (what a diffusion model shows);
- teacher_psnr: that decode vs the teacher's own decode of the same latents; teacher_gt_psnr: the teacher's decode
  vs the ground truth (the reference figure);
- latent_psnr: the student's encoder latents vs the teacher's;
- roundtrip_psnr, roundtrip_ssim: student encoder + student decoder vs the ground truth;
- via_teacher_psnr: the student's latents decoded by the teacher's decoder vs the ground truth.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..images import psnr, ssim, tensor_psnr
from ..latents import scale_latents


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    from ..tiling import to_uint8 as batch_to_uint8

    return batch_to_uint8(x.float())[0].cpu().numpy()


def latent_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return tensor_psnr(scale_latents(a.float()), scale_latents(b.float()), 0.0, 1.0)


@torch.no_grad()
def evaluate(student: Any, teacher: Any, images: list[tuple[str, torch.Tensor, torch.Tensor | None]],
             parts: Sequence[str] = ("encoder", "decoder")) -> tuple[dict[str, float], list[dict[str, Any]],
                                                                     list[list[np.ndarray]]]:
    """Mean metrics, per-image metrics and grid rows (gt | teacher | student decode | student roundtrip).

    `images`: (name, (1, 3, H, W) in [-1, 1], precomputed teacher latents or None); `teacher` may be None (then
    only the roundtrip metrics); `parts`: the student halves worth measuring.
    """
    device = next(student.parameters()).device
    rows, per = [], []
    enc = "encoder" in parts and student.encoder is not None
    dec = "decoder" in parts and student.decoder is not None
    for name, x, z_pre in images:
        x = x.to(device)
        gt = to_uint8(x)
        m: dict[str, Any] = {"image": name}
        row = [gt]
        zt = None
        if z_pre is not None:
            zt = z_pre[None].to(device)
        elif teacher is not None:
            zt = teacher.encode(x)
        if zt is not None and teacher is not None and teacher.can_decode:
            yt = to_uint8(teacher.decode(zt))
            m["teacher_gt_psnr"] = psnr(yt, gt)
            row.append(yt)
        if zt is not None and dec:
            yd = to_uint8(student.decode(zt).sample)
            m["psnr"], m["ssim"] = psnr(yd, gt), ssim(yd, gt)
            if len(row) > 1:
                m["teacher_psnr"] = psnr(yd, row[1])
            row.append(yd)
        if enc:
            zs = student.encode(x).latents
            if zt is not None:
                m["latent_psnr"] = latent_psnr(zs, zt)
                if teacher is not None and teacher.can_decode:
                    m["via_teacher_psnr"] = psnr(to_uint8(teacher.decode(zs)), gt)
            if student.decoder is not None:
                yr = to_uint8(student.decode(zs).sample)
                m["roundtrip_psnr"], m["roundtrip_ssim"] = psnr(yr, gt), ssim(yr, gt)
                row.append(yr)
        per.append(m)
        rows.append(row)
    keys = sorted({k for m in per for k in m if k != "image"})
    mean = {k: float(np.mean([m[k] for m in per if k in m])) for k in keys}
    return mean, per, rows


def save_grid(rows: list[list[np.ndarray]], path: Path, max_rows: int = 4) -> None:
    """One row per image: ground truth | teacher | student (decode of the teacher's latents) | student roundtrip
    (columns a run does not have are left out)."""
    from ..weights import atomic_write

    rows = rows[:max_rows]
    if not rows:
        return
    h = max(r[0].shape[0] for r in rows)
    widths = [sum(im.shape[1] for im in r) for r in rows]
    sheet = Image.new("RGB", (max(widths), h * len(rows)))
    for i, r in enumerate(rows):
        x = 0
        for im in r:
            sheet.paste(Image.fromarray(im), (x, i * h))
            x += im.shape[1]
    atomic_write(path, lambda p: sheet.save(p, format="PNG"))


# ---------------------------------------------------------------------------------------------- tinyae eval
def main(argv: list[str]) -> int:
    """`tinyae eval MODEL FOLDER [--teacher T] [--json]`."""
    p = argparse.ArgumentParser(prog="tinyae eval", description="PSNR/SSIM of a TAE on a folder of images (and "
                                "against a teacher VAE: its decode, its latents).")
    p.add_argument("model", metavar="MODEL", help="tinyae weights: variant, folder, file, or ENCODER,DECODER")
    p.add_argument("folder", metavar="FOLDER", help="images (recursive)")
    p.add_argument("--teacher", help="teacher VAE (diffusers folder / hub id, or tinyae source): adds the "
                   "decoder-on-teacher-latents, teacher and latent metrics")
    p.add_argument("--family", help="teacher latent convention (registry family or variant name)")
    p.add_argument("--scaling-factor", type=float)
    p.add_argument("--shift-factor", type=float)
    p.add_argument("--size", type=int, default=0, help="centre crop side in px (default 0: whole images)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    from ..cli import run_guarded

    return run_guarded(lambda: _run_eval(args), args.debug, "nothing was written")


def _run_eval(args: argparse.Namespace) -> int:
    from ..cli import Reporter, _resolve_device, load_model
    from .data import val_images
    from .teacher import load_teacher

    device = _resolve_device(args.device)
    model, _ = load_model(args.model, device, "float32")
    teacher = None
    if args.teacher:
        teacher = load_teacher(args.teacher, family=args.family, scaling_factor=args.scaling_factor,
                               shift_factor=args.shift_factor).to(torch.device(device))
        if not teacher.can_encode:
            raise ValueError("--teacher: precomputed latents are not supported by tinyae eval")
    images = [(n, x, None) for n, _, x, _ in val_images(args.folder, args.size or 1 << 30,
                                                       model.spatial_scale_factor, what="FOLDER")]
    mean, per, _ = evaluate(model.eval(), teacher, images)
    rep = Reporter(args.json)
    rep.emit({"command": "eval", "model": args.model, "teacher": args.teacher, "folder": args.folder,
              "mean": mean, "images": per})
    keys = list(mean)
    rep.line("image".ljust(24) + "".join(k.rjust(18) for k in keys))
    for m in per + [{"image": "mean", **mean}]:
        rep.line(str(m["image"])[:24].ljust(24)
                 + "".join((f"{m[k]:.4f}" if "ssim" in k else f"{m[k]:.2f}").rjust(18) if k in m else " " * 18
                           for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
