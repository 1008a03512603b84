"""Dataset encoding benchmark: the local runner end to end vs the encoder alone, peak RSS vs the number of images,
the Ray runner on a local 2-node cluster vs the local runner, the time to resume after kill -9, and LatentDataset
read-back (Parquet and safetensors shards) vs one .npz per image.

    python benchmarks/dataset.py --images 2000 --size 512 --subset 200 --ray   # the issue's setting (~27 min)
    python benchmarks/dataset.py --images 2000 --size 512 --ray                # all of it on 2,000 (over 1 h)
    python benchmarks/dataset.py --images 40 --size 128 --ray                  # a check that it runs
    python benchmarks/dataset.py --images 400 --size 256 --read-only           # read-back only
    python benchmarks/dataset.py --images 400 --size 512 --ratio-rounds 2      # only the ratio, interleaved rounds

`--subset S`: the local runner end to end (images/s, peak RSS) runs on all `--images`; the encoder-alone baseline,
the local runner on S images (the small-N point of the RSS comparison and the Ray runner's baseline), the Ray
runner and both resumes run on the first S images. Without it, everything runs on all images (and the small-N RSS
point on half of them).

Images are made from the shared photos (random resized crops, flips and colour changes), written as JPEG.
Needs a quiet machine: every figure is throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

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
    """images/s of model.optimize() on the same preprocessed batches, reading and preprocessing excluded (done
    batch by batch: 2,000 preprocessed 512² images would be 6 GB)."""
    import torch

    from tinyae.dataset import Preprocess
    from tinyae.dataset.encode import Encoder
    from tinyae.dataset.job import load_encoder_model
    from tinyae.data.images import read_image

    net, _ = load_encoder_model(model)
    enc = Encoder(net)
    pre = Preprocess("center", size, multiple=enc.multiple)
    files = sorted(images.iterdir())

    def batch_of(s: int) -> torch.Tensor:
        return torch.stack([pre.apply(read_image(p), p.name)[0][1] for p in files[s:s + batch]])

    enc(batch_of(0))  # warm up
    seconds = 0.0
    for s in range(0, len(files), batch):
        x = batch_of(s)
        t = time.perf_counter()
        enc(x)
        seconds += time.perf_counter() - t
    return len(files) / seconds


def run_job(images: Path, out: Path, model: str, size: int, batch: int, threads: int, runner: str,
            shard_size: int = 100, address: str | None = None, workers: int = 1) -> dict:
    from tinyae.dataset import Preprocess, encode_dataset

    t = time.perf_counter()
    s = encode_dataset(images, out, model, preprocess=Preprocess("center", size), batch_size=batch,
                       threads=threads, shard_size=shard_size, runner=runner, address=address, workers=workers)
    s["images_per_s"] = s["images"] / (time.perf_counter() - t)
    return s


def child_rss(images: Path, out: Path, args: argparse.Namespace) -> tuple[float, int]:
    """(images/s, peak RSS in MB) of the local runner in a fresh process."""
    code = (f"import sys, json, resource; sys.path.insert(0, {str(Path(__file__).parent)!r}); import dataset as b; "
            f"import torch; torch.set_num_threads({args.torch_threads}); "
            f"s = b.run_job(b.Path({str(images)!r}), b.Path({str(out)!r}), {args.model!r}, {args.size}, "
            f"{args.batch_size}, {args.threads}, 'local', {args.shard_size}); "
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


def resume_after_kill(images: Path, out: Path, args: argparse.Namespace, runner: str,
                      ray_args: Sequence[str] = ()) -> dict[str, float]:
    """`tinyae encode-dataset` killed with SIGKILL once half its shards are done, then rerun: seconds of the
    uninterrupted part, of the rerun, and of a second rerun with nothing left to do (the bookkeeping alone)."""
    import signal

    cmd = [sys.executable, "-m", "tinyae", "encode-dataset", str(images), "-o", str(out), "-m", args.model,
           "--size", str(args.size), "--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads), "--runner", runner, *ray_args]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(args.torch_threads)}
    shards = -(-len(list(images.iterdir())) // args.shard_size)
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


def first_images(images: Path, dest: Path, n: int) -> Path:
    """A folder of the first n images (hard links: the same files)."""
    dest.mkdir()
    for p in sorted(images.iterdir())[:n]:
        os.link(p, dest / p.name)
    return dest


def print_resume(runner: str, r: dict[str, float]) -> None:
    print(f"resume ({runner:5})         kill -9 at {r['shards_done_at_kill']}/{r['shards']} shards after "
          f"{r['killed_after_s']:.1f} s; rerun finished in {r['rerun_s']:.1f} s; a rerun with nothing "
          f"left took {r['nothing_to_do_s']:.1f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--subset", type=int, help="images for the encoder-alone baseline, the Ray runner and the "
                   "resumes (default: all); the local runner end to end always runs on all")
    p.add_argument("--model", default=os.environ.get("TINYAE_MODEL", f"{SHARED}/weights/taef2_encoder.pth,"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, help="default: 100, or a quarter of the subset when that is less")
    p.add_argument("--threads", type=int, default=2, help="image reading threads")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--ray", action="store_true", help="also the Ray runner, on a 2-node Ray cluster on this "
                   "machine (tinyae.dataset.ray_local; --torch-threads / 2 CPUs per node, one actor per node)")
    p.add_argument("--read-only", action="store_true", help="only the read-back part")
    p.add_argument("--ratio-rounds", type=int, default=0, help="only the local runner / encoder alone ratio, in this "
                   "many interleaved rounds (alone, runner, alone, runner, ...) on all images")
    args = p.parse_args()
    n = args.images
    sub = min(args.subset or n, n)
    args.shard_size = args.shard_size or max(1, min(100, sub // 4))
    import torch

    torch.set_num_threads(args.torch_threads)
    print(f"{n} images of {args.size}², subset {sub}, batch {args.batch_size}, shards of {args.shard_size}, "
          f"{args.threads} reading threads, {args.torch_threads} torch threads", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_images(tmp / "images", n, args.size)
        if args.read_only:
            run_job(tmp / "images", tmp / "out", args.model, args.size, args.batch_size, args.threads, "local",
                    args.shard_size)
            return print_read_back(tmp)
        if args.ratio_rounds:
            for r in range(args.ratio_rounds):
                alone = encoder_alone(tmp / "images", args.model, args.size, args.batch_size)
                rate, rss = child_rss(tmp / "images", tmp / f"out-{r}", args)
                print(f"round {r + 1}: encoder alone {alone:.2f} images/s, local runner {rate:.2f} images/s = "
                      f"{100 * rate / alone:.0f}% (peak RSS {rss} MB)", flush=True)
            return None
        small = first_images(tmp / "images", tmp / "small", sub if sub < n else n // 2)
        subset = tmp / "images" if sub == n else small
        alone = encoder_alone(subset, args.model, args.size, args.batch_size)
        print(f"encoder alone          {alone:8.1f} images/s ({sub} images; estimate of the rest of this run: "
              f"{(n + len(list(small.iterdir())) + sub + 2 * sub * args.ray) / alone / 60:.0f} min + Ray's "
              "start-ups)", flush=True)
        rate, rss = child_rss(tmp / "images", tmp / "out", args)
        print(f"local runner           {rate:8.1f} images/s  = {100 * rate / alone:.0f}% of the encoder alone "
              f"({n} images)", flush=True)
        rate_small, rss_small = child_rss(small, tmp / "out-small", args)
        print(f"peak RSS               {rss_small} MB at {len(list(small.iterdir()))} images, {rss} MB at {n}; "
              f"local runner {rate_small:.1f} images/s on {len(list(small.iterdir()))}", flush=True)
        print_resume("local", resume_after_kill(subset, tmp / "killed-local", args, "local"))
        if args.ray:
            from tinyae.dataset.ray_local import local_cluster

            cpus = max(1, args.torch_threads // 2)
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(cpus)}
            with local_cluster(nodes=2, cpus_per_node=cpus, object_store_bytes=500_000_000, env=env) as address:
                s = run_job(subset, tmp / "out-ray", args.model, args.size, args.batch_size, cpus, "ray",
                            args.shard_size, address, workers=2)
                base = rate if sub == n else rate_small
                print(f"ray runner (2 nodes)   {s['images_per_s']:8.1f} images/s  = "
                      f"{100 * s['images_per_s'] / base:.0f}% of the local runner on the same {sub} images "
                      "(connecting to Ray included)", flush=True)
                ray_args = ["--address", address, "--workers", "2", "--threads", str(cpus)]
                print_resume("ray", resume_after_kill(subset, tmp / "killed-ray", args, "ray", ray_args))
        print_read_back(tmp)


def print_read_back(tmp: Path) -> None:
    r = read_back(tmp / "out", tmp)
    print(f"read-back (shuffled)   LatentDataset Parquet {r['parquet']:.0f} rows/s, safetensors "
          f"{r['safetensors']:.0f} rows/s; one .npz per image {r['npz']:.0f} rows/s")


if __name__ == "__main__":
    main()
