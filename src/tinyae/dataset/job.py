"""`encode_dataset`: plan the job in OUT, skip what is done, make the rest locally (threads) or on Ray."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..weights import first_line
from .encode import Encoder, ShardWorker
from .manifest import (SHARDS, DatasetError, JobSpec, clean_temporaries, done_shards, open_job, pending_shards,
                       write_errors)
from .preprocess import Preprocess
from .shards import FORMATS, LATENT_DTYPES
from .sources import Source, open_source

RUNNERS = ("local", "ray")


def load_encoder_model(model: Any, device: str = "cpu") -> tuple[Any, str]:
    """(model, name) for a model object or a `--model` value (variant, folder, file, ENC,DEC pair)."""
    if not isinstance(model, (str, tuple)):
        name = getattr(model, "_tinyae_name", None) or type(model).__name__
        return model, name
    from ..cli import identify_variant, load_model

    spec = ",".join(s or "" for s in model) if isinstance(model, tuple) else model
    loaded, source = load_model(spec, device)
    return loaded, identify_variant(source, loaded) or spec


def load_vae(folder: str | Path, device: str = "cpu") -> Any:
    """A full diffusers VAE (AutoencoderKL, or another `AutoencoderKL*` class named by its config.json) from a
    local folder written by `save_pretrained`: the teacher whose posterior mean and logvar go into every row.
    safetensors weights only (nothing from the folder is executed); never downloads."""
    import diffusers

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"--vae {folder}: not a diffusers model folder (config.json: {first_line(e)})") from None
    name = config.get("_class_name", "")
    cls = getattr(diffusers, name, None) if name.startswith("AutoencoderKL") else None
    if cls is None:
        raise DatasetError(f"--vae {folder}: config.json names {name or 'no class'!r}; expected a diffusers "
                           "AutoencoderKL (a full VAE)")
    try:
        vae = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, EnvironmentError) as e:
        raise DatasetError(f"--vae {folder}: {first_line(e)}") from None
    vae._tinyae_name = f"{name}:{folder.resolve().name}"
    return vae.to(device).eval()


def encode_dataset(source: Source | str | Sequence[str], out: str | Path, model: Any = "taef2", *,
                   preprocess: Preprocess | None = None, precision: str = "auto", optimize: bool = True,
                   device: str = "cpu", latent_dtype: str = "bfloat16", format: str = "parquet",
                   shard_size: int = 1000, batch_size: int = 8, threads: int = 2, runner: str = "local",
                   address: str | None = None, workers: int = 1, num_gpus: float = 0.0,
                   on_plan: Callable[[dict[str, Any]], None] | None = None,
                   on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Encode every image of `source` into latent shards in `out`; safe to kill and rerun (see manifest.py).

    `model`: a tinyae AutoencoderTiny (encoded through `optimize(precision)` unless optimize=False), a diffusers
    AutoencoderKL (the teacher: rows also get its posterior mean and logvar), or a `--model` value.
    Returns a summary: images and shards in the plan, shards made now, rows and errors in the dataset, seconds;
    with the Ray runner also `fetched_by_workers`: images whose bytes Ray's readers did not bring (listed files that
    do not exist, tried by the actors and recorded as errors).
    Raises DatasetError when `out` holds another job (other model sha, precision, preprocessing, dtype, format).
    """
    started = time.perf_counter()
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if latent_dtype not in LATENT_DTYPES:
        raise ValueError(f"latent_dtype must be one of {', '.join(LATENT_DTYPES)}, got {latent_dtype!r}")
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    for name, v in (("shard_size", shard_size), ("batch_size", batch_size), ("workers", workers)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if not isinstance(source, Source):
        source = open_source([source] if isinstance(source, (str, Path)) else list(source))
    net, name = load_encoder_model(model, device)
    encoder = Encoder(net, precision, optimize)
    pre = replace(preprocess or Preprocess(), multiple=encoder.multiple)
    spec = JobSpec(name, encoder.sha256, encoder.precision, pre.to_dict(), pre.fingerprint(), latent_dtype, format,
                   encoder.teacher, shard_size)
    out = Path(out)
    spec, plan = open_job(out, spec, source)
    clean_temporaries(out)
    todo = pending_shards(out, plan, source)
    summary: dict[str, Any] = {"out": str(out), "images": sum(len(v) for v in plan.values()), "shards": len(plan),
                               "shards_todo": len(todo), "images_todo": sum(len(plan[s]) for s in todo),
                               "model": spec.model, "model_sha256": spec.model_sha256, "precision": spec.precision,
                               "preprocess": spec.preprocess_fingerprint, "runner": runner}
    if on_plan is not None:
        on_plan(summary)
    work = [(s, plan[s]) for s in todo]
    if work and runner == "local":
        ShardWorker(out, source, spec, pre, encoder, batch_size, threads).run(work, on_progress)
    elif work:
        from .ray_runner import run_on_ray

        summary["fetched_by_workers"] = run_on_ray(  # images Ray's readers did not bring (missing files)
            out, source, spec, pre, net, optimize, work, batch_size=batch_size, threads=threads, address=address,
            workers=workers, num_gpus=num_gpus, on_progress=on_progress)
    markers = dict(done_shards(out))
    summary.update(rows=sum(m["rows"] for s, m in markers.items() if s in plan),
                   errors=write_errors(out), seconds=round(time.perf_counter() - started, 3))
    write_index(out)
    return summary


def write_index(out: Path) -> None:
    """OUT/index.parquet: key -> (shard file, row) for every row of every finished shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..weights import atomic_write
    from .shards import Shard

    keys, files, rows = [], [], []
    for _, m in done_shards(out):
        path = Path(out) / SHARDS / m["file"]
        if path.suffix == ".parquet":
            names = pq.read_table(path, columns=["key"]).column(0).to_pylist()
        else:
            names = [r["key"] for r in Shard(path).rows]
        keys += names
        files += [m["file"]] * len(names)
        rows += range(len(names))
    table = pa.table({"key": keys, "file": files, "row": pa.array(rows, pa.int32())})
    atomic_write(Path(out) / "index.parquet", lambda p: pq.write_table(table, p))
