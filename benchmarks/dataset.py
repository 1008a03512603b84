"""Dataset encoding benchmark: the local runner end to end vs the encoder alone, peak RSS vs the number of images,
the Ray runner vs the local one, the time to resume after kill -9, and LatentDataset read-back (Parquet and
safetensors shards) vs one .npz per image.

    python benchmarks/dataset.py                                # the issue's setting: 2,000 images of 512²
    python benchmarks/dataset.py --images 200 --size 256 --ray  # a small run
    python benchmarks/dataset.py --images 400 --size 256 --read-only  # resume and read-back only

Images are made from the shared photos (random resized crops, flips and colour changes), written as JPEG.
Needs a quiet machine: every figure is throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TINYAE_SHARED", ROOT.parent / "shared"))


def make_images(folder: Path, n: int, size: int) -> None:
    from PIL import Image, ImageEnhance, ImageOps

    photos = [Image.open(p).convert("RGB") for p in sorted((SHARED / "images").rglob("*.png"))]
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = photos[i % len(photos)]
        side = rng.randint(min(im.size) // 3, min(im.size))
        x, y = rng.randint(0, im.width - side), rng.randint(0, im.height - side)
        im = im.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
        im = ImageEnhance.Color(im).enhance(rng.uniform(0.6, 1.4))
        im.save(folder / f"{i:05d}.jpg", quality=92)


def encoder_alone(images: Path, model: str, size: int, batch: int) -> float:
    """images/s of model.optimize() on the same preprocessed batches, decoding excluded."""
    import torch

    from tinyae.dataset import Preprocess
    from tinyae.dataset.encode import Encoder
    from tinyae.dataset.job import load_encoder_model
    from tinyae.data.images import read_image

    net, _ = load_encoder_model(model)
    enc = Encoder(net)
    pre = Preprocess("center", size, multiple=enc.multiple)
    xs = [pre.apply(read_image(p), p.name)[0][1] for p in sorted(images.iterdir())]
    enc(torch.stack(xs[:batch]))  # warm up
    t = time.perf_counter()
    for s in range(0, len(xs), batch):
        enc(torch.stack(xs[s:s + batch]))
    return len(xs) / (time.perf_counter() - t)


def run_job(images: Path, out: Path, model: str, size: int, batch: int, threads: int, runner: str) -> dict:
    from tinyae.dataset import Preprocess, encode_dataset

    t = time.perf_counter()
    s = encode_dataset(images, out, model, preprocess=Preprocess("center", size), batch_size=batch,
                       threads=threads, shard_size=100, runner=runner)
    s["images_per_s"] = s["images"] / (time.perf_counter() - t)
    return s


def child_rss(images: Path, out: Path, args: argparse.Namespace) -> tuple[float, int]:
    """(images/s, peak RSS in MB) of the local runner in a fresh process."""
    code = (f"import sys, json, resource; sys.path.insert(0, {str(Path(__file__).parent)!r}); import dataset as b; "
            f"import torch; torch.set_num_threads({args.torch_threads}); "
            f"s = b.run_job(b.Path({str(images)!r}), b.Path({str(out)!r}), {args.model!r}, {args.size}, "
            f"{args.batch_size}, {args.threads}, 'local'); "
            "print(json.dumps([s['images_per_s'], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    rate, rss = json.loads(got.stdout.strip().splitlines()[-1])
    return rate, rss


def as_safetensors(out: Path, dest: Path) -> Path:
    """A copy of a Parquet-sharded dataset folder with safetensors shards (same rows), for the read-back."""
    import shutil

    from tinyae.dataset import LatentDataset
    from tinyae.dataset.manifest import SHARDS, done_shards, marker_path, write_json
    from tinyae.dataset.shards import Shard, write_shard

    shutil.copytree(out, dest)
    for n, m in done_shards(out):
        shard = Shard(out / SHARDS / m["file"])
        rows = [{**r, **{f: shard.tensor(i, f) for f in shard.fields}} for i, r in enumerate(shard.rows)]
        (dest / SHARDS / m["file"]).unlink()
        name = m["file"].replace(".parquet", ".safetensors")
        write_shard(dest / SHARDS / name, rows, "safetensors")
        write_json(marker_path(dest, n), {**m, "file": name})
    LatentDataset(dest)  # opens
    return dest


def read_back(out: Path, tmp: Path, repeats: int = 3) -> dict[str, float]:
    """rows/s of LatentDataset.shuffled() over Parquet and safetensors shards and of reading the same latents from
    one .npz per row (float32 tensors in the end, all three); the best of `repeats` interleaved passes."""
    import numpy as np
    import torch

    from tinyae.dataset import LatentDataset

    ds = LatentDataset(out)
    npz = tmp / "npz"
    npz.mkdir()
    for i in range(len(ds)):  # what per-image caches store (.npz has no bfloat16: float16)
        np.savez(npz / f"{i:06d}.npz", latents=ds[i]["latents"].half().numpy())
    st = as_safetensors(out, tmp / "out-safetensors")
    files = sorted(npz.iterdir())
    random.Random(0).shuffle(files)

    def shards(folder: Path) -> float:
        t = time.perf_counter()
        n = sum(1 for r in LatentDataset(folder).shuffled(0) if r["latents"] is not None)
        return n / (time.perf_counter() - t)

    def per_file() -> float:
        t = time.perf_counter()
        for f in files:
            with np.load(f) as z:
                torch.from_numpy(z["latents"].astype(np.float32))
        return len(files) / (time.perf_counter() - t)

    best = {"parquet": 0.0, "safetensors": 0.0, "npz": 0.0}
    for _ in range(repeats):
        for name, f in (("parquet", lambda: shards(out)), ("safetensors", lambda: shards(st)), ("npz", per_file)):
            best[name] = max(best[name], f())
    return best


def resume_after_kill(images: Path, out: Path, args: argparse.Namespace, runner: str) -> dict[str, float]:
    """`tinyae encode-dataset` killed with SIGKILL once half its shards are done, then rerun: seconds of the
    uninterrupted part, of the rerun, and of a second rerun with nothing left to do (the bookkeeping alone)."""
    import signal

    cmd = [sys.executable, "-m", "tinyae", "encode-dataset", str(images), "-o", str(out), "-m", args.model,
           "--size", str(args.size), "--shard-size", "100", "--batch-size", str(args.batch_size), "--threads",
           str(args.threads), "--runner", runner]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(args.torch_threads)}
    shards = -(-len(list(images.iterdir())) // 100)
    t = time.perf_counter()
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while job.poll() is None and len(list((out / "shards").glob("*.done.json"))) < max(1, shards // 2):
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    first = time.perf_counter() - t
    done = len(list((out / "shards").glob("*.done.json")))
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    rerun = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return {"killed_after_s": first, "shards_done_at_kill": done, "shards": shards, "rerun_s": rerun,
            "nothing_to_do_s": time.perf_counter() - t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--model", default=os.environ.get("TINYAE_MODEL", f"{SHARED}/weights/taef2_encoder.pth,"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="image reading threads")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--ray", action="store_true", help="also the Ray runner (a local Ray started by ray.init)")
    p.add_argument("--read-only", action="store_true", help="only the read-back (and resume) part")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_images(tmp / "images", args.images, args.size)
        if args.read_only:
            run_job(tmp / "images", tmp / "out", args.model, args.size, args.batch_size, args.threads, "local")
        else:
            make_images(tmp / "half", args.images // 2, args.size)
            alone = encoder_alone(tmp / "images", args.model, args.size, args.batch_size)
            rate, rss = child_rss(tmp / "images", tmp / "out", args)
            _, rss_half = child_rss(tmp / "half", tmp / "out-half", args)
            print(f"encoder alone          {alone:8.1f} images/s ({args.size}², batch {args.batch_size})")
            print(f"local runner           {rate:8.1f} images/s  = {100 * rate / alone:.0f}% of the encoder alone")
            print(f"peak RSS               {rss_half} MB at {args.images // 2} images, {rss} MB at {args.images}")
        if args.ray and not args.read_only:
            s = run_job(tmp / "images", tmp / "out-ray", args.model, args.size, args.batch_size, args.threads,
                        "ray")
            print(f"ray runner (1 actor)   {s['images_per_s']:8.1f} images/s  = {100 * s['images_per_s'] / rate:.0f}%"
                  " of the local runner (includes starting Ray)")
        for runner in ("local", "ray") if args.ray else ("local",):
            r = resume_after_kill(tmp / "images", tmp / f"killed-{runner}", args, runner)
            print(f"resume ({runner:5})         kill -9 at {r['shards_done_at_kill']}/{r['shards']} shards after "
                  f"{r['killed_after_s']:.1f} s; rerun finished in {r['rerun_s']:.1f} s; a rerun with nothing "
                  f"left took {r['nothing_to_do_s']:.1f} s")
        r = read_back(tmp / "out", tmp)
        print(f"read-back (shuffled)   LatentDataset Parquet {r['parquet']:.0f} rows/s, safetensors "
              f"{r['safetensors']:.0f} rows/s; one .npz per image {r['npz']:.0f} rows/s")


if __name__ == "__main__":
    main()
