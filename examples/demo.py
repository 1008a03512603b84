"""Roundtrip a real photo through the real TAEF2 weights: encode, decode, print PSNR, write the decoded image.

    python examples/demo.py [--image PATH] [--weights DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tinyae import AutoencoderTiny

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(SHARED / "images" / "astronaut.png"))
    ap.add_argument("--weights", default=str(SHARED / "weights"), help="folder with taef2_encoder/decoder.pth")
    ap.add_argument("--out", default="demo_out")
    args = ap.parse_args()

    model = AutoencoderTiny.from_pretrained((f"{args.weights}/taef2_encoder.pth", f"{args.weights}/taef2_decoder.pth"))
    rgb = np.asarray(Image.open(args.image).convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[0] // 8 * 8, rgb.shape[1] // 8 * 8
    x = torch.from_numpy(rgb[:h, :w]).permute(2, 0, 1)[None] / 127.5 - 1

    with torch.inference_mode():
        t0 = time.perf_counter()
        latents = model.encode(x).latents
        t1 = time.perf_counter()
        y = model.decode(latents).sample.clamp(-1, 1)
        t2 = time.perf_counter()

    out = ((y[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    mse = np.mean((out.astype(np.float64) - rgb[:h, :w]) ** 2)
    psnr = 10 * np.log10(255.0**2 / mse)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    dst = Path(args.out) / (Path(args.image).stem + ".taef2.png")
    Image.fromarray(out).save(dst)
    print(f"model    taef2 ({sum(p.numel() for p in model.parameters()):,} parameters) from {args.weights}")
    print(f"image    {args.image} ({w}x{h})")
    print(f"latents  {tuple(latents.shape)}  encode {1000 * (t1 - t0):.0f} ms, decode {1000 * (t2 - t1):.0f} ms (CPU fp32)")
    print(f"PSNR     {psnr:.2f} dB")
    print(f"wrote    {dst}")

    # the fast path: one call, same API (bf16 on CPUs with AMX/AVX512-BF16, fp16 on CUDA); times after a warm-up call
    fast = model.optimize()
    with torch.inference_mode():
        fast.decode(fast.encode(x).latents)
        t0 = time.perf_counter()
        fast_latents = fast.encode(x).latents
        t1 = time.perf_counter()
        fast_y = fast.decode(fast_latents).sample.clamp(-1, 1)
        t2 = time.perf_counter()
    err = float(((fast_y - y) ** 2).mean())
    gap = 10 * np.log10(4 / err) if err > 0 else float("inf")
    print(f"optimize encode {1000 * (t1 - t0):.0f} ms, decode {1000 * (t2 - t1):.0f} ms ({fast.precision}); "
          f"{gap:.1f} dB from the fp32 roundtrip")


if __name__ == "__main__":
    main()
