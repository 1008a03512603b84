"""`tinyae encode-dataset SOURCE -o OUT` and `tinyae decode-dataset OUT -o IMAGES` (see docs/dataset.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

from ..cli import MODEL_ENV, Reporter, _positive, run_guarded

ENCODE_EPILOG = """examples:
  tinyae encode-dataset photos/ -o latents/ --model taef2                  center crops of 512², Parquet shards
  tinyae encode-dataset photos/ -o latents/ --crop buckets --flip both    aspect buckets + flipped variants
  tinyae encode-dataset list.txt -o latents/ --format safetensors
  tinyae encode-dataset data.parquet -o latents/ --image-column image --key-column id
  tinyae encode-dataset 'shards/' -o latents/ --source-kind webdataset    a folder of WebDataset .tar shards
  tinyae encode-dataset photos/ -o teacher/ --vae sdxl-vae/                a full VAE: + mean and logvar
  tinyae encode-dataset photos/ -o latents/ --runner ray --address HOST:6379 --workers 8 --num-gpus 1
Killed or failed? Run the same command again: finished shards are kept, the rest is redone."""


def build_encode_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinyae encode-dataset", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Encode an image collection into latent shards (resumable: rerun "
                                "the same command after an interruption).", epilog=ENCODE_EPILOG)
    p.add_argument("source", nargs="+", metavar="SOURCE", help="a folder of images, a .txt list of paths, .parquet "
                   "files, or WebDataset .tar shards (or a folder of them)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the dataset folder (created; a rerun "
                   "resumes it)")
    p.add_argument("--source-kind", default="auto", choices=["auto", "folder", "list", "parquet", "webdataset"])
    p.add_argument("--image-column", help="Parquet: column of encoded image bytes (default: image)")
    p.add_argument("--path-column", help="Parquet: column of image paths instead")
    p.add_argument("--key-column", help="Parquet: column of unique keys (default: <file stem>/<row>)")
    g = p.add_argument_group("preprocessing")
    g.add_argument("--crop", default="center", choices=["center", "random", "buckets", "none"],
                   help="center / seeded random square crop of --size, aspect-ratio buckets of area --size², or "
                   "none (default center)")
    g.add_argument("--size", type=_positive, default=512, help="target side in pixels (default 512)")
    g.add_argument("--buckets", help="explicit buckets for --crop buckets: WxH,WxH,...")
    g.add_argument("--flip", default="none", choices=["none", "both"], help="both: add a horizontally flipped "
                   "variant of every image (key#flip)")
    g.add_argument("--seed", type=int, default=0, help="seed of --crop random (default 0)")
    g = p.add_argument_group("output")
    g.add_argument("--format", default="parquet", choices=["parquet", "safetensors"])
    g.add_argument("--latent-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    g.add_argument("--shard-size", type=_positive, default=1000, help="source images per shard (default 1000)")
    g = p.add_argument_group("compute")
    g.add_argument("--model", "-m", help=f"tinyae --model value (default: ${MODEL_ENV}, else taef2)")
    g.add_argument("--vae", metavar="FOLDER", help="encode with a full diffusers AutoencoderKL instead (a local "
                   "save_pretrained folder, safetensors): rows also hold its posterior mean and logvar")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="model.optimize() precision (default auto)")
    g.add_argument("--no-optimize", action="store_true", help="run the eager float32 model instead")
    g.add_argument("--batch-size", type=_positive, default=8, help="images per model call (default 8)")
    g.add_argument("--threads", type=_positive, default=2, help="image reading threads (default 2)")
    g.add_argument("--runner", default="local", choices=["local", "ray"], help="local (default) or ray")
    g.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    g.add_argument("--workers", type=_positive, default=1, help="Ray actors (default 1)")
    g.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per Ray actor (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


class _Bar:
    """A rich progress bar on stderr (a terminal only): images done, images/s, ETA."""

    def __init__(self, rep: Reporter):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                                   TimeRemainingColumn)
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(f"{task.speed or 0:.1f} img/s")

        self.bar = Progress(TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), Rate(),
                            TimeRemainingColumn(), console=rep.err, transient=True,
                            disable=not rep.err.is_terminal)
        self.task: Any = None

    def start(self, summary: dict[str, Any]) -> None:
        self.task = self.bar.add_task("encoding", total=summary["images_todo"])

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.bar.advance(self.task, n)


def _run(argv: list[str], build: Callable[[], argparse.ArgumentParser],
         body: Callable[[argparse.Namespace, Reporter], int]) -> int:
    args = build().parse_args(argv)
    rep = Reporter(args.json)
    return run_guarded(lambda: body(args, rep), args.debug,
                       "finished shards are kept (run the same command again to resume)")


def _encode(args: argparse.Namespace, rep: Reporter) -> int:
    from ..cli import CliError, _resolve_device
    from .job import encode_dataset, load_vae
    from .preprocess import Preprocess
    from .sources import open_source

    buckets = None
    if args.buckets:
        try:
            buckets = tuple(tuple(int(v) for v in b.lower().split("x")) for b in args.buckets.split(","))
        except ValueError:
            raise ValueError(f"--buckets {args.buckets!r}: expected WxH,WxH,...") from None
    source = open_source(args.source, args.source_kind, image_column=args.image_column,
                         path_column=args.path_column, key_column=args.key_column)
    if args.vae and args.model:
        raise CliError("give --model (a TAE) or --vae (a full VAE), not both")
    if args.vae and args.precision != "auto":
        raise CliError(f"--precision {args.precision} is for a TAE's optimize(); a --vae runs as loaded (float32)")
    device = _resolve_device(args.device)
    model = load_vae(args.vae, device) if args.vae else args.model or os.environ.get(MODEL_ENV) or "taef2"
    bar = _Bar(rep)
    with bar.bar:
        s = encode_dataset(source, args.output, model, device=device,
                           preprocess=Preprocess(args.crop, args.size, args.flip, args.seed, buckets),
                           precision=args.precision, optimize=not args.no_optimize, latent_dtype=args.latent_dtype,
                           format=args.format, shard_size=args.shard_size, batch_size=args.batch_size,
                           threads=args.threads, runner=args.runner, address=args.address, workers=args.workers,
                           num_gpus=args.num_gpus, on_plan=bar.start, on_progress=bar.advance)
    rep.emit({"command": "encode-dataset", **s})
    done = s["shards"] - s["shards_todo"]
    rep.line(f"encode-dataset: {s['images']} images in {s['shards']} shards ({done} already done, "
             f"{s['shards_todo']} made now): {s['rows']} rows, {s['errors']} errors (see {s['out']}/errors.parquet) "
             f"in {s['seconds']:.1f} s")
    return 0


def main(argv: list[str]) -> int:
    """`tinyae encode-dataset`."""
    return _run(argv, build_encode_parser, _encode)


# ---------------------------------------------------------------------------------------------- decode-dataset
def build_decode_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinyae decode-dataset", description="Decode rows of a latent dataset to "
                                "PNG images, for spot checks.")
    p.add_argument("dataset", metavar="OUT", help="a folder written by tinyae encode-dataset")
    p.add_argument("-o", "--output", required=True, metavar="IMAGES", help="folder for <key>.png")
    p.add_argument("--keys", nargs="+", help="decode these keys (default: the first --limit rows)")
    p.add_argument("--limit", type=_positive, default=16, help="rows to decode without --keys (default 16)")
    p.add_argument("--model", "-m", help="decoder (default: $TINYAE_MODEL, else the dataset's model)")
    p.add_argument("--vae", metavar="FOLDER", help="decode with a full diffusers AutoencoderKL (its posterior "
                   "mean where the rows hold it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def _decode(args: argparse.Namespace, rep: Reporter) -> int:
    from ..cli import CliError, load_model, save_image
    from ..images import EncodedImage, decode_latents
    from .job import load_vae
    from .reader import LatentDataset

    ds = LatentDataset(args.dataset)
    if args.keys:
        where = {ds.shard(n).rows[i]["key"]: (n, i) for n in range(len(ds.files)) for i in range(len(ds.shard(n)))}
        missing = [k for k in args.keys if k not in where]
        if missing:
            raise ValueError(f"{args.dataset}: no rows with key(s) {', '.join(missing[:5])}")
        rows = [ds.row(*where[k]) for k in args.keys]
    else:
        rows = [ds[i] for i in range(min(args.limit, len(ds)))]
    spec = args.model or os.environ.get(MODEL_ENV)
    if args.vae:
        vae = load_vae(args.vae, args.device)
        images = [_vae_decode(vae, r) for r in rows]
    else:
        if not spec and ds.manifest.get("teacher"):
            raise CliError(f"{args.dataset} was encoded by a full VAE ({ds.manifest['model']}): decode it with "
                           "--vae FOLDER, or --model a TAE of the same latent space")
        model, _ = load_model(spec or ds.manifest["model"], args.device)
        images = decode_latents(model, [EncodedImage(r["latents"].float()) for r in rows])
    out = Path(args.output)
    written = []
    names = output_names([r["key"] for r in rows])
    for r, name, im in zip(rows, names, images):
        path = out / name
        save_image(im, path, "png")
        written.append(str(path))
        rep.line(f"{r['key']} -> {path}  ({im.size[0]}x{im.size[1]})")
    rep.emit({"command": "decode-dataset", "written": written})
    return 0


def _vae_decode(vae: Any, row: dict[str, Any]) -> Any:
    """A full VAE's decode of one row: its stored posterior mean, else latents / scaling_factor + shift_factor."""
    import torch
    from PIL import Image

    cfg = vae.config
    z = row["mean"] if "mean" in row else row["latents"] / cfg.scaling_factor + (cfg.get("shift_factor") or 0.0)
    p = next(vae.parameters())
    with torch.inference_mode():
        x = vae.decode(z[None].to(p.device, p.dtype)).sample[0].float().cpu()
    return Image.fromarray(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())


def output_names(keys: list[str]) -> list[str]:
    """PNG file names for row keys: folders joined by "__", the source's image suffix dropped, "#flip" as "-flip"
    ("sub/im01.png#flip" -> "sub__im01-flip.png"); a name two keys would share keeps the whole key instead."""
    from ..images import IMAGE_SUFFIXES

    def short(key: str) -> str:
        base, _, variant = key.partition("#")
        stem, dot, suffix = base.rpartition(".")
        if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES and stem:
            base = stem
        return base.replace("/", "__") + (f"-{variant}" if variant else "") + ".png"

    def whole(key: str) -> str:
        return key.replace("/", "__").replace("#", "-") + ".png"

    names = [short(k) for k in keys]
    names = [whole(k) if names.count(n) > 1 else n for k, n in zip(keys, names)]  # "a.png", "a.jpg"
    seen: dict[str, int] = {}
    for i, n in enumerate(names):  # still shared (keys that differ only in "/" vs "__"): numbered
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n[:-4]}~{seen[n] - 1}.png"
    return names


def decode_main(argv: list[str]) -> int:
    """`tinyae decode-dataset`."""
    return _run(argv, build_decode_parser, _decode)
