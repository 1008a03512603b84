"""Tiling benchmark: time and peak RSS of untiled vs tiled vs streamed decoding (4-channel latent, taesd layout).

Each (mode, size) runs in a fresh process so peak RSS (ru_maxrss) is that run's own. Weights are random: time and
memory do not depend on their values. Usage:
    python benchmarks/tiling.py [--sizes 1024 2048 4096 8192] [--modes untiled tiled streamed]
                                [--max-untiled 2048] [--threads N] [--channels 64]
Prints a Markdown table (rows: size x mode; columns: seconds, peak RSS, RSS of the model alone).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _one(mode: str, size: int, channels: int, threads: int) -> dict:
    import torch

    from tinyae import AutoencoderTiny
    from tinyae.engine.tiling import decode_to_png
    from tinyae.nets.variants import variant_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = {**variant_config("taesd"), "decoder_block_out_channels": (channels,) * 4}
    model = AutoencoderTiny(**config, has_encoder=False).eval()
    z = torch.randn(1, 4, size // 8, size // 8)
    with torch.no_grad():  # warm up the kernels on a small input
        model.decode(z[:, :, :8, :8])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with torch.no_grad():
        if mode == "untiled":
            model.decode(z)
        elif mode == "tiled":
            model.enable_tiling()
            model.decode(z)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                decode_to_png(model, z, os.path.join(tmp, "out.png"), compression=1)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "size": size, "seconds": seconds, "peak_rss_mb": peak, "model_rss_mb": base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--modes", nargs="+", default=["untiled", "tiled", "streamed"])
    ap.add_argument("--max-untiled", type=int, default=2048, help="largest size run untiled (memory)")
    ap.add_argument("--threads", type=int, default=torch_threads_default())
    ap.add_argument("--channels", type=int, default=64, help="decoder width (64: every released variant)")
    ap.add_argument("--one", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_one(args.one[0], int(args.one[1]), args.channels, args.threads)))
        return
    print("| size | mode | seconds | peak RSS (MB) | model alone (MB) |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        for mode in args.modes:
            if mode == "untiled" and size > args.max_untiled:
                print(f"| {size}² | {mode} | not run (needs ~{3 * 64 * size * size * 4 / 2**30:.0f} GB) | | |")
                continue
            cmd = [sys.executable, __file__, "--one", mode, str(size), "--threads", str(args.threads),
                   "--channels", str(args.channels)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            print(f"| {size}² | {mode} | {res['seconds']:.1f} | {res['peak_rss_mb']:.0f} | "
                  f"{res['model_rss_mb']:.0f} |", flush=True)


def torch_threads_default() -> int:
    return max(1, os.cpu_count() or 1)


if __name__ == "__main__":
    main()
