"""Video TAE benchmark: taew2_1 architecture with random weights, decode and encode of N latents at h x w
(default 21 latents at 60x104 = 81 frames of 480x832), parallel vs streaming, each also optimized (optimize("auto"))
and row-band tiled, time and peak RSS, against diffusers' AutoencoderKLWan (default config, random weights) on the same shape.

Each measurement runs in a fresh subprocess so that peak RSS (ru_maxrss) is its own. Figures need a quiet machine.

    python benchmarks/video.py                          # the full shapes (minutes on a CPU)
    python benchmarks/video.py --latents 2 --height 4 --width 6 --threads 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def _one(what: str, mode: str, latents: int, h: int, w: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    frames = 4 * latents - 3
    with torch.no_grad():
        if what.startswith("wan"):
            from diffusers import AutoencoderKLWan

            vae = AutoencoderKLWan().eval()
            if what == "wan-decode":
                z = torch.randn(1, 16, latents, h, w)
                t0 = time.perf_counter()
                out = vae.decode(z).sample
            else:
                x = torch.rand(1, 3, frames, 8 * h, 8 * w) * 2 - 1
                t0 = time.perf_counter()
                out = vae.encode(x).latent_dist.mode()
        else:
            from tinyae import AutoencoderTinyVideo
            from tinyae.video import StreamingDecoder, StreamingEncoder

            m = AutoencoderTinyVideo("taew2_1").eval()
            if mode.startswith("opt-"):  # optimize("auto"): fused CPU convolutions (bf16 where the CPU has it)
                m = m.optimize("auto")
            if mode.endswith("tiled-streaming"):  # exact row bands of 8 latent rows
                m.enable_tiling(8)
            if what == "decode":
                z = torch.randn(1, 16, latents, h, w)
                t0 = time.perf_counter()
                if mode.endswith("parallel"):
                    out = m.decode(z).sample
                else:
                    n = 0
                    for f in StreamingDecoder(m).frames(z.unbind(2)):
                        n += 1  # a real consumer writes each frame out here
                    out = f
            else:
                x = torch.rand(1, 3, frames, 8 * h, 8 * w) * 2 - 1
                t0 = time.perf_counter()
                if mode.endswith("parallel"):
                    out = m.encode(x).latents
                else:
                    s = StreamingEncoder(m)
                    for i in range(frames):
                        s.push(x[:, :, i])
                    out = s.flush()
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"what": what, "mode": mode, "latents": latents, "latent_hw": [h, w], "seconds": round(seconds, 3),
            "peak_rss_mb": round(peak / 1024, 1), "rss_before_mb": round(base / 1024, 1),
            "out_shape": list(out.shape)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", type=int, nargs="+", default=[21])
    p.add_argument("--height", type=int, default=60)
    p.add_argument("--width", type=int, default=104)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-wan", action="store_true", help="skip diffusers' AutoencoderKLWan")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_one(a.child[0], a.child[1], int(a.child[2]), a.height, a.width, a.threads)))
        return
    modes = ("parallel", "streaming", "opt-parallel", "opt-streaming", "tiled-streaming", "opt-tiled-streaming")
    runs = [(w, m) for w in ("decode", "encode") for m in modes]
    if not a.no_wan:
        runs += [("wan-decode", "-"), ("wan-encode", "-")]
    print(f"# {platform.processor() or platform.machine()}, torch threads {a.threads}")
    for n in a.latents:
        for what, mode in runs:
            cmd = [sys.executable, __file__, "--child", what, mode, str(n), "--height", str(a.height),
                   "--width", str(a.width), "--threads", str(a.threads)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                print(f"{what} {mode} {n}: failed: {r.stderr.strip().splitlines()[-1:]}")
                continue
            d = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{d['what']:<11} {d['mode']:<19} {n:>3} latents {a.height}x{a.width}: {d['seconds']:8.3f} s  "
                  f"peak RSS {d['peak_rss_mb']:8.1f} MB  out {d['out_shape']}")


if __name__ == "__main__":
    main()
