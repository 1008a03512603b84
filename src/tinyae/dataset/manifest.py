"""The job folder's bookkeeping: what makes a job resumable and exactly-once.

OUT/manifest.json   what every row depends on (model sha, precision, preprocessing, latent dtype, format); a rerun
                    with anything else is refused, so shards of two different jobs never mix.
OUT/plan.parquet    every source item and the shard it belongs to (key, shard, locator, size, mtime). Written
                    before any shard. Items are assigned in key order, `shard_size` per shard; a rerun keeps every
                    known key in its shard and puts new keys in new shards, so the plan is the same whichever runner
                    (or machine) reads it.
OUT/shards/NNNNN.parquet|.safetensors   the rows of shard NNNNN, written atomically (temporary file + rename);
OUT/shards/NNNNN.done.json              then its marker: the shard file's size and sha256 and, per input key, the
                    source's sha256, size and mtime (and the errors). A shard without a valid marker is redone whole.
A shard is done when its marker exists, its file has the recorded size, it holds exactly the plan's keys, and no
source changed: a source whose size or mtime differs is hashed again, and a new sha256 redoes its shard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..weights import atomic_write
from .sources import Item, Source

MANIFEST, PLAN, SHARDS, ERRORS = "manifest.json", "plan.parquet", "shards", "errors.parquet"
FORMAT_VERSION = 1
# What must be equal for rows of two runs to belong to one dataset.
IDENTITY = ("model_sha256", "precision", "preprocess_fingerprint", "latent_dtype", "format", "teacher")


class DatasetError(ValueError):
    """A job that cannot run as asked (refused resume, bad folder): one line naming the problem."""


@dataclass
class JobSpec:
    """Everything a job's rows depend on (the identity) and how it is laid out."""

    model: str
    model_sha256: str
    precision: str
    preprocess: dict[str, Any]
    preprocess_fingerprint: str
    latent_dtype: str = "bfloat16"
    format: str = "parquet"
    teacher: bool = False
    shard_size: int = 1000

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **self.__dict__}


def write_json(path: Path, doc: Any) -> None:
    text = json.dumps(doc, indent=1, sort_keys=True)
    atomic_write(path, lambda p: Path(p).write_text(text))


def read_manifest(out: Path) -> dict[str, Any]:
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{out}: not a tinyae latent dataset (no {MANIFEST})")
    return json.loads(path.read_text())


def check_same_job(recorded: dict[str, Any], spec: JobSpec, out: Path) -> None:
    for k in IDENTITY:
        if recorded.get(k) != getattr(spec, k):
            raise DatasetError(f"{out} holds latents made with {k} {recorded.get(k)!r}; this job has "
                               f"{getattr(spec, k)!r}. Mixing them would make a dataset of two different encodings"
                               "; write to another folder (or delete this one)")


def open_job(out: Path, spec: JobSpec, source: Source) -> tuple[JobSpec, dict[int, list[Item]]]:
    """Create or reopen the job in `out`: (the spec in force, shard -> items). Refuses another job's folder."""
    out = Path(out)
    items = source.items()
    if (out / MANIFEST).exists():
        recorded = read_manifest(out)
        check_same_job(recorded, spec, out)
        spec.shard_size = int(recorded["shard_size"])  # the plan's; a different --shard-size would reshuffle rows
    elif out.exists():
        for stale in out.glob(f".{MANIFEST}.*.tmp"):  # a run killed while writing its first manifest
            stale.unlink()
        if any(out.iterdir()):
            raise DatasetError(f"{out}: exists and is not a tinyae latent dataset; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / MANIFEST, {**spec.to_dict(), "source": source.describe()})
    (out / SHARDS).mkdir(exist_ok=True)
    old = read_plan(out)
    plan = assign(items, old, spec.shard_size)
    if plan != old:
        write_plan(out, plan)
    return spec, plan


def assign(items: list[Item], old: dict[int, list[Item]], shard_size: int) -> dict[int, list[Item]]:
    """Shard of each item: its old shard if the plan had its key, else new shards in key order after the last."""
    where = {it.key: s for s, its in old.items() for it in its}
    plan: dict[int, list[Item]] = {s: [] for s in old}
    new = [it for it in items if it.key not in where]
    for it in items:
        if it.key in where:
            plan[where[it.key]].append(it)
    first = max(old, default=-1) + 1
    for n in range(0, len(new), shard_size):
        plan[first + n // shard_size] = new[n:n + shard_size]
    return {s: its for s, its in sorted(plan.items())}


def read_plan(out: Path) -> dict[int, list[Item]]:
    path = Path(out) / PLAN
    if not path.exists():
        return {}
    import pyarrow.parquet as pq

    plan: dict[int, list[Item]] = {}
    for r in pq.read_table(path).to_pylist():
        plan.setdefault(r["shard"], []).append(Item(r["key"], r["locator"], r["size"], r["mtime_ns"]))
    return plan


def write_plan(out: Path, plan: dict[int, list[Item]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(s, it) for s, its in plan.items() for it in its]
    table = pa.table({"key": [it.key for _, it in rows], "shard": pa.array([s for s, _ in rows], pa.int32()),
                      "locator": [it.locator for _, it in rows], "size": [it.size for _, it in rows],
                      "mtime_ns": [it.mtime_ns for _, it in rows]})
    atomic_write(Path(out) / PLAN, lambda p: pq.write_table(table, p))


# ---------------------------------------------------------------------------------------------- shard state
def marker_path(out: Path, shard: int) -> Path:
    return Path(out) / SHARDS / f"{shard:05d}.done.json"


def read_marker(out: Path, shard: int) -> dict[str, Any] | None:
    try:
        return json.loads(marker_path(out, shard).read_text())
    except (OSError, ValueError):
        return None


def pending_shards(out: Path, plan: dict[int, list[Item]], source: Source) -> list[int]:
    """Shards to (re)do: no valid marker, another set of keys, a missing/truncated file, or a changed source."""
    import hashlib

    todo = []
    for shard, items in plan.items():
        m = read_marker(out, shard)
        if not items:  # every key of the shard left the source: drop its outputs
            if m is not None:
                _remove_shard(out, shard, m)
            continue
        if m is None or set(m["inputs"]) != {it.key for it in items}:
            todo.append(shard)
            continue
        f = Path(out) / SHARDS / m["file"]
        if not f.is_file() or f.stat().st_size != m["bytes"]:
            todo.append(shard)
            continue
        moved = [it for it in items if m["inputs"][it.key][1:] != [it.size, it.mtime_ns]]
        for it, data in zip(moved, source.fetch(moved)):
            sha = hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else None
            if sha is None or sha != m["inputs"][it.key][0]:
                todo.append(shard)
                break
    return todo


def _remove_shard(out: Path, shard: int, marker: dict[str, Any]) -> None:
    marker_path(out, shard).unlink(missing_ok=True)
    (Path(out) / SHARDS / marker["file"]).unlink(missing_ok=True)


def clean_temporaries(out: Path) -> None:
    """Remove what a killed run left half-written (atomic_write's temporaries)."""
    for stale in [*Path(out).glob(".*.tmp"), *(Path(out) / SHARDS).glob(".*.tmp")]:
        stale.unlink(missing_ok=True)


def done_shards(out: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(shard, marker) of every finished shard in the folder, in shard order."""
    for p in sorted((Path(out) / SHARDS).glob("*.done.json")):
        m = json.loads(p.read_text())
        yield int(p.name.split(".")[0]), m


def write_errors(out: Path) -> int:
    """Gather every finished shard's errors into OUT/errors.parquet (key, source, error); returns how many."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [e for _, m in done_shards(out) for e in m["errors"]]
    table = pa.table({"key": [e[0] for e in rows], "source": [e[1] for e in rows], "error": [e[2] for e in rows]},
                     schema=pa.schema([("key", pa.string()), ("source", pa.string()), ("error", pa.string())]))
    atomic_write(Path(out) / ERRORS, lambda p: pq.write_table(table, p))
    return len(rows)

