"""Per-step overhead of LivePreview with the real TAEF2 decoder, in a FLUX.2 [klein] pipeline.

The pipeline's denoiser is a stand-in that costs almost nothing (exact velocity towards fixed latents), so the
difference between a run with and without the callback is the preview's own cost per step: the x0 estimate,
un-packing the tokens and the TAEF2 decode (plus conversion to PIL). Also times the bare TAEF2 decode.

    python benchmarks/live_preview.py [--sizes 512 1024] [--steps 8] [--device cpu|cuda] [--dtype float32|float16]
                                      [--optimize]   # previews decoded by taef2.optimize() (bf16 on AMX CPUs)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from live_preview import SHARED, exact_velocity, tiny_flux2_pipeline  # noqa: E402

from tinyae import AutoencoderTiny  # noqa: E402
from tinyae.diffusers import LivePreview, set_vae  # noqa: E402
from tinyae.data.latents import pack_flux2  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(pipe, size: int, steps: int, callback, device: str) -> float:
    g = torch.Generator(device).manual_seed(0)
    sync(device)
    t0 = time.perf_counter()
    pipe(prompt_embeds=torch.zeros(1, 4, 16, device=device), height=size, width=size, num_inference_steps=steps,
         guidance_scale=1.0, generator=g, output_type="latent", callback_on_step_end=callback)
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--weights", default=str(SHARED / "weights"))
    ap.add_argument("--optimize", action="store_true", help="decode previews with taef2.optimize()")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)

    taef2 = AutoencoderTiny.from_pretrained((f"{args.weights}/taef2_encoder.pth", f"{args.weights}/taef2_decoder.pth"),
                                            torch_dtype=dtype, device=args.device)
    pipe = tiny_flux2_pipeline().to(args.device)
    set_vae(pipe, taef2)
    previewer = taef2.optimize() if args.optimize else taef2
    print(f"# LivePreview overhead, FLUX.2 [klein] pipeline with a free stand-in denoiser; TAEF2 {args.dtype} on "
          f"{args.device}{', optimize()d: ' + previewer.precision if args.optimize else ''} "
          f"({platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads); median of {args.repeats}, {args.steps} steps")
    print("| image | without preview, ms/step | x_t preview, ms/step overhead | x0 preview, ms/step overhead | "
          "bare TAEF2 decode, ms |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        target = torch.zeros(1, 32, size // 8, size // 8, device=args.device)
        exact_velocity(pipe, pack_flux2(target))
        times = {}
        for name, make in (("none", lambda: None), ("xt", lambda: LivePreview(previewer, pipe=pipe, mode="xt")),
                           ("x0", lambda: LivePreview(previewer, pipe=pipe))):
            run(pipe, size, 2, make(), args.device)  # warm-up
            times[name] = statistics.median(run(pipe, size, args.steps, make(), args.device)
                                            for _ in range(args.repeats)) / args.steps * 1000
        with torch.no_grad():
            z = torch.randn(1, 32, size // 8, size // 8, device=args.device, dtype=dtype)
            previewer.decode(z)
            sync(args.device)
            decode = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                previewer.decode(z)
                sync(args.device)
                decode.append((time.perf_counter() - t0) * 1000)
        print(f"| {size}x{size} | {times['none']:.1f} | {times['xt'] - times['none']:.1f} | "
              f"{times['x0'] - times['none']:.1f} | {statistics.median(decode):.1f} |")


if __name__ == "__main__":
    main()
