"""Video TAE benchmark: taew2_1 architecture with random weights, decode and encode of N latents at h x w
(default 21 latents at 60x104 = 81 frames of 480x832), parallel vs streaming, each also optimized (optimize("auto"))
and row-band tiled, time and peak RSS, against diffusers' AutoencoderKLWan (default config, random weights) on the same shape.

Each measurement runs in a fresh subprocess so that peak RSS (ru_maxrss) is its own. Figures need a quiet machine.
Parallel modes hold every frame's activations (about 17 GB for 81 frames of 480x832): a mode whose estimate exceeds
80% of the available memory is skipped and says so. AutoencoderKLWan on CPU takes minutes per latent at 480x832, so
`--wan-latents K` measures it on 1 and K latents and the summary extrapolates it linearly to N latents (Wan decodes
causally one latent chunk at a time; its first latent, one frame, costs less than the others), marking those
figures as extrapolated.

    python benchmarks/video.py --latents 21 41 81 --threads 16 --wan-latents 3   # the issue's shapes
    python benchmarks/video.py --latents 2 --height 4 --width 6 --threads 1      # a smoke run
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
            elif mode.endswith("parallel"):
                x = torch.rand(1, 3, frames, 8 * h, 8 * w) * 2 - 1
                t0 = time.perf_counter()
                out = m.encode(x).latents
            else:  # frames made as they come (a real producer reads them from a file), so memory is the encoder's
                t0 = time.perf_counter()
                s = StreamingEncoder(m)
                for i in range(frames):
                    s.push(torch.rand(1, 3, 8 * h, 8 * w).mul_(2).sub_(1))
                out = s.flush()
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"what": what, "mode": mode, "latents": latents, "latent_hw": [h, w], "seconds": round(seconds, 3),
            "peak_rss_mb": round(peak / 1024, 1), "rss_before_mb": round(base / 1024, 1),
            "out_shape": list(out.shape)}


MODES = ("parallel", "streaming", "opt-parallel", "opt-streaming", "tiled-streaming", "opt-tiled-streaming")


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def parallel_bytes(what: str, latents: int, h: int, w: int) -> int:
    """Rough peak of a parallel (all frames at once) run: two 64-channel float32 activations at full resolution
    over all 4 * latents frames (the decoder's last conv; the encoder's first layers)."""
    return 2 * 4 * latents * 64 * (8 * h) * (8 * w) * 4 if what in ("decode", "encode") else 0


def _summary(results: dict, n: int, wan_n: int) -> None:
    frames = 4 * n - 3
    for what in ("decode", "encode"):
        wan, first = results.get((f"wan-{what}", "-", wan_n)), results.get((f"wan-{what}", "-", 1))
        if not wan:
            continue
        if wan_n == n:
            seconds, label = wan["seconds"], ""
        elif first and wan_n > 1:  # Wan's first latent (one frame) is cheaper than the others (four frames each)
            step = (wan["seconds"] - first["seconds"]) / (wan_n - 1)
            seconds, label = first["seconds"] + (n - 1) * step, f" (extrapolated from 1 and {wan_n} latents)"
        else:
            seconds, label = wan["seconds"] * n / wan_n, f" (extrapolated from {wan_n} latents)"
        # the output (decode) or input (encode) video is the part of Wan's peak that grows with the frames
        video_mb = (frames - (4 * wan_n - 3)) * 3 * 64 * wan["latent_hw"][0] * wan["latent_hw"][1] * 4 / 2 ** 20
        print(f"  {what} {n} latents ({frames} frames): AutoencoderKLWan {seconds:9.1f} s{label}, "
              f"peak RSS about {wan['peak_rss_mb'] + max(video_mb, 0):8.0f} MB{label}")
        for mode in ("parallel", "streaming", "opt-streaming", "opt-tiled-streaming"):
            r = results.get((what, mode, n))
            if r:
                print(f"    tinyae {mode:<20} {r['seconds']:9.1f} s  {seconds / r['seconds']:7.1f}x faster, "
                      f"peak RSS {r['peak_rss_mb']:8.0f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", type=int, nargs="+", default=[21])
    p.add_argument("--height", type=int, default=60)
    p.add_argument("--width", type=int, default=104)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-wan", action="store_true", help="skip diffusers' AutoencoderKLWan")
    p.add_argument("--wan-latents", type=int, default=None, metavar="K",
                   help="measure AutoencoderKLWan on K latents (default: each --latents); the summary compares "
                        "per latent and marks Wan's figures as extrapolated")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="tinyae modes to run (default all)")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_one(a.child[0], a.child[1], int(a.child[2]), a.height, a.width, a.threads)))
        return
    runs = [(w, m) for w in ("decode", "encode") for m in a.modes]
    print(f"# {platform.processor() or platform.machine()}, torch threads {a.threads}")
    results: dict = {}
    wan_sizes = [] if a.no_wan else sorted({1, a.wan_latents} if a.wan_latents else set(a.latents))
    jobs = [(w, m, n) for n in a.latents for w, m in runs] + \
        [(w, "-", k) for k in wan_sizes for w in ("wan-decode", "wan-encode")]
    for what, mode, n in jobs:
        need, free = parallel_bytes(what, n, a.height, a.width) if "parallel" in mode else 0, _available_bytes()
        if free is not None and need > 0.8 * free:
            print(f"{what:<11} {mode:<19} {n:>3} latents: skipped, needs about {need / 2 ** 30:.0f} GB of the "
                  f"{free / 2 ** 30:.0f} GB available (the streaming modes do not)")
            continue
        cmd = [sys.executable, __file__, "--child", what, mode, str(n), "--height", str(a.height),
               "--width", str(a.width), "--threads", str(a.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(f"{what} {mode} {n}: failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        results[(what, mode, n)] = d
        print(f"{d['what']:<11} {d['mode']:<19} {n:>3} latents {a.height}x{a.width}: {d['seconds']:8.3f} s  "
              f"peak RSS {d['peak_rss_mb']:8.1f} MB  out {d['out_shape']}", flush=True)
    if wan_sizes:
        print("# summary (Wan's cost grows linearly with its causal latent chunks)")
        for n in a.latents:
            _summary(results, n, a.wan_latents or n)


if __name__ == "__main__":
    main()
