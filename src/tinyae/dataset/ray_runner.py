"""The Ray runner: the same shards, made by a pool of Ray actors that each load the model once.

Ray's own readers bring the bytes of every source kind: `read_binary_files` for files (a folder, a list, Parquet
with a path column), `read_parquet(include_paths=True, include_row_hash=True)` for Parquet image bytes and
`read_webdataset(decoder=None)` for WebDataset members (renamed to one column). A `map_batches` tags each row
with its planned shard (and locator), `groupby("shard").map_groups(...)` packs each shard's bytes into one row,
and `map_batches(_ShardEncoder, compute=ray.data.ActorPoolStrategy(size=workers))` hands each row to an actor: it
gets one whole shard's bytes, runs the very `ShardWorker` the local runner uses on them (in plan order, so the rows
are byte for byte the local runner's) and writes the shard and its marker into OUT (a folder every node sees).

The group-by is an all-to-all exchange (it needs all its input before it emits a group), so shards go through
Ray in waves of `WAVE_PER_WORKER * workers` shards, each read and grouped (materialized in the object store)
before its actors start: memory in flight stays bounded in the number of images.
Ray restarts a killed actor and retries its task (Ray Data 2.60's defaults for actor pools: `max_restarts=-1`,
`max_task_retries=-1`), re-executes a lost read from its lineage, and retries reads on transient I/O errors
(`DataContext.retried_io_errors`); a retried shard is rewritten whole, atomically, so every row is there exactly
once. docs/dataset.md says why Ray's `write_parquet` and `CheckpointConfig` are not used.
"""

from __future__ import annotations

import hashlib
import posixpath
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

from .manifest import JobSpec, read_plan
from .preprocess import Preprocess
from .sources import Item, Source

WAVE_PER_WORKER = 4  # shards per actor in one wave through Ray's group-by
INIT_DEATHS = 3  # actors that may die while loading the model (killed, OOM) before the job fails
_MASK = (1 << 64) - 1
_MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # splitmix64's multipliers (Ray's row_hash)
_UNMIX = tuple(pow(m, -1, 1 << 64) for m in _MIX)
_IMAGE = "tinyae_image"  # the column of a WebDataset member's bytes (_rename)


def reader_of(source: Source) -> str:
    """Which of Ray's readers brings this source's bytes: "binary_files", "parquet" or "webdataset"."""
    if source.kind == "webdataset":
        return "webdataset"
    return "parquet" if source.kind == "parquet" and source.image_column else "binary_files"


def row_of_hash(path: str, row_hash: int) -> int:
    """The file row that Ray 2.60's `read_parquet(include_row_hash=True)` hashed into `row_hash`.

    Ray's row hash is splitmix64(seed(path) + row), row the row's position in its file (datasource V2, no filter);
    splitmix64 is a bijection, so the row is recovered exactly: each step undone in reverse."""
    x = int(row_hash)
    x ^= (x >> 31) ^ (x >> 62)
    x = x * _UNMIX[1] & _MASK
    x ^= (x >> 27) ^ (x >> 54)
    x = x * _UNMIX[0] & _MASK
    x ^= (x >> 30) ^ (x >> 60)
    seed = int.from_bytes(hashlib.md5(path.encode()).digest()[:8], "little")
    return (x - seed) & _MASK


class _Fetched:
    """A source whose bytes Ray's reader already brought (by locator); any other item is fetched as usual (and
    counted): a listed file that does not exist, which then becomes an error row."""

    def __init__(self, source: Source, data: dict[str, bytes]):
        self.source, self.data, self.missed = source, data, 0

    def fetch(self, items: Sequence[Item]) -> list[bytes | Exception]:
        out = []
        for it in items:
            if it.locator in self.data:
                out.append(self.data[it.locator])
            else:
                self.missed += 1
                out.append(self.source.fetch([it])[0])
        return out


class _ShardEncoder:
    """A Ray actor: loads the model once, then makes the shards it is handed, with their bytes."""

    def __init__(self, out: str, source: Source, spec: JobSpec, pre: Preprocess, model: Any, optimize: bool,
                 batch_size: int, threads: int):
        import torch

        from .encode import Encoder

        torch.set_num_threads(threads)
        # the job records what its precision resolved to; "int8" is what "auto" picks for calibrated weights
        # (tinyae.engine.calibration), so a worker asks for "auto" there and must resolve to the same
        requested = spec.precision if optimize and spec.precision in ("fp32", "bf16", "fp16") else "auto"
        self.encoder = Encoder(model, requested, optimize)
        if (self.encoder.sha256, self.encoder.precision) != (spec.model_sha256, spec.precision):
            raise RuntimeError(f"this Ray worker encodes with precision {self.encoder.precision} (model sha "
                               f"{self.encoder.sha256[:12]}), the job with {spec.precision} "
                               f"({spec.model_sha256[:12]})")
        self.out, self.source, self.spec, self.pre = Path(out), source, spec, pre
        self.batch_size, self.threads = batch_size, threads
        self.plan = read_plan(self.out)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from .encode import ShardWorker

        shards = [int(s) for s in batch["shard"].to_pylist()]
        data = {loc: b for ls, bs in zip(batch["locators"].to_pylist(), batch["bytes"].to_pylist())
                for loc, b in zip(ls, bs) if loc}
        source = _Fetched(self.source, data)
        worker = ShardWorker(self.out, source, self.spec, self.pre, self.encoder, self.batch_size, self.threads)
        markers = worker.run([(s, self.plan[s]) for s in shards])
        return pa.table({"shard": shards, "images": [len(m["inputs"]) for m in markers],
                         "rows": [m["rows"] for m in markers], "missed": [source.missed] + [0] * (len(shards) - 1)})


# ---------------------------------------------------------------------------------------------- reading
def _identities(batch: Any, reader: str, rows_in: dict[str, int]) -> list[str]:
    """What each row of Ray's reader is, in the terms of `_wanted`: a file path; `file.parquet::row`;
    `shard.tar::key`."""
    if reader == "binary_files":
        return [_norm(p) for p in batch["path"].to_pylist()]
    if reader == "webdataset":
        return [f"{_norm(u)}::{k}" for u, k in zip(batch["__url__"].to_pylist(), batch["__key__"].to_pylist())]
    out = []
    for p, h in zip(batch["path"].to_pylist(), batch["row_hash"].to_pylist()):
        row, rows = row_of_hash(p, h), rows_in.get(_norm(p))
        if rows is None or row >= rows:  # would pair a key with another row's image: refuse
            raise RuntimeError(f"{p}: Ray's read_parquet gave a row (row_hash {h}) that is no row of the files "
                               "planned (does this Ray hash rows differently from Ray 2.60?); use --runner local")
        out.append(f"{_norm(p)}::{row}")
    return out


def _tag(batch: Any, reader: str, wanted: dict[str, list[tuple[int, str, str]]], rows_in: dict[str, int]) -> Any:
    """Rows of a Ray reader -> (shard, locator, bytes) for each planned use of each row (a file listed in n shards
    gives n rows; rows of no shard of this wave are dropped)."""
    import pyarrow as pa

    shards, locators, data = [], [], []
    for i, ident in enumerate(_identities(batch, reader, rows_in)):
        for shard, locator, column in wanted.get(ident, ()):
            value = batch[column][i].as_py() if column in batch.column_names else None
            if isinstance(value, dict):  # e.g. Hugging Face datasets' {"bytes": ..., "path": ...} struct
                value = value.get("bytes")
            if isinstance(value, (bytes, bytearray)):  # else the actor fetches it and reports what is wrong
                shards.append(shard)
                locators.append(locator)
                data.append(bytes(value))
    return pa.table({"shard": pa.array(shards, pa.int64()), "locator": pa.array(locators, pa.string()),
                     "bytes": pa.array(data, pa.binary())})


def _wanted(source: Source, reader: str, wave: Sequence[tuple[int, list[Item]]]
            ) -> tuple[dict[str, list[tuple[int, str, str]]], list[str]]:
    """(identity -> [(shard, locator, column of the bytes)], the files Ray reads) for one wave's items."""
    wanted: dict[str, list[tuple[int, str, str]]] = {}
    for s, items in wave:
        for it in items:
            if reader == "binary_files":
                if not Path(it.locator).is_file():  # a missing file is the actor's to report, as an error row
                    continue
                ident, column = _norm(it.locator), "bytes"
            elif reader == "parquet":
                path, row = it.locator.rsplit("::", 1)
                ident, column = f"{_norm(path)}::{row}", str(source.image_column)
            else:  # webdataset: the wave's members are renamed to one column (see _read)
                tar = it.locator.rsplit("::", 1)[0]
                ident, column = f"{_norm(tar)}::{it.key}", _IMAGE
            wanted.setdefault(ident, []).append((s, it.locator, column))
    files = {i if reader == "binary_files" else i.rsplit("::", 1)[0] for i in wanted}
    return wanted, sorted(files)


def _rename(members: frozenset[str], name: str) -> str:
    """A wanted WebDataset member's name -> <its key>.tinyae_image: every sample then has its image bytes in one
    column of one type (members of another suffix would give columns of bytes and NaN, which Ray pickles)."""
    if name not in members:
        return name
    folder, base = posixpath.split(name)
    return f"{posixpath.join(folder, base.split('.', 1)[0])}.{_IMAGE}"


def _renamed(name: str) -> bool:
    return name.endswith(f".{_IMAGE}")


def _read(ray: Any, source: Source, reader: str, files: list[str], wave: Sequence[tuple[int, list[Item]]]) -> Any:
    """Ray's reader over the files of one wave."""
    if reader == "binary_files":
        return ray.data.read_binary_files(files, include_paths=True)
    if reader == "parquet":
        cols = [str(source.image_column), "path", "row_hash"]
        return ray.data.read_parquet(files, include_paths=True, include_row_hash=True, file_extensions=None
                                     ).select_columns(cols)
    members = frozenset(it.locator.rsplit("::", 1)[1].rsplit("@", 1)[0] for _, items in wave for it in items)
    return ray.data.read_webdataset(files, decoder=None, filerename=partial(_rename, members), fileselect=_renamed)


def _pack(group: Any) -> Any:
    """One group of the group-by (the rows of one shard) -> one row: shard, [locators], [bytes]."""
    import pyarrow as pa

    return pa.table({"shard": pa.array([group["shard"][0].as_py()], pa.int64()),
                     "locators": pa.array([group["locator"].to_pylist()], pa.list_(pa.string())),
                     "bytes": pa.array([group["bytes"].to_pylist()], pa.large_list(pa.large_binary()))})


def _norm(path: str) -> str:
    return str(Path(path).absolute())


def _waves(work: Sequence[tuple[int, list[Item]]], size: int) -> list[Sequence[tuple[int, list[Item]]]]:
    return [work[i:i + size] for i in range(0, len(work), size)]


# ---------------------------------------------------------------------------------------------- the job
def run_on_ray(out: Path, source: Source, spec: JobSpec, pre: Preprocess, model: Any, optimize: bool,
               work: Sequence[tuple[int, list[Item]]], *, batch_size: int, threads: int, address: str | None,
               workers: int, num_gpus: float, on_progress: Callable[[int], None] | None) -> int:
    """Make the shards of `work` on Ray; returns how many images' bytes Ray's readers did *not* bring (listed
    files that do not exist: the actors try them and record the error)."""
    try:
        import ray
    except ImportError:
        raise ImportError("--runner ray needs Ray: pip install 'tinyae[ray]'") from None
    import pyarrow as pa
    import pyarrow.parquet as pq

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    settings = {"enable_progress_bars": False,  # tinyae's own bar counts images
                "print_on_execution_start": False,
                "use_datasource_v2": True,  # its row_hash counts rows from the file's start (row_of_hash)
                "max_consecutive_actor_init_deaths": INIT_DEATHS}  # 0 by default: the first death fails the job
    saved = {k: getattr(ctx, k) for k in settings}
    missed = 0
    try:
        for k, v in settings.items():
            setattr(ctx, k, v)
        encode = dict(compute=ray.data.ActorPoolStrategy(size=workers), batch_format="pyarrow",
                      fn_constructor_kwargs={"out": str(Path(out).resolve()), "source": source, "spec": spec,
                                             "pre": pre, "model": model, "optimize": optimize,
                                             "batch_size": batch_size, "threads": threads},
                      num_cpus=threads, num_gpus=num_gpus or None)  # Ray 2.60's actor pools default to
        # max_restarts=-1 and max_task_retries=-1 (passing them goes through the deprecated **ray_remote_args)
        reader = reader_of(source)
        for wave in _waves(work, WAVE_PER_WORKER * workers):
            wanted, files = _wanted(source, reader, wave)
            rows_in = {_norm(f): pq.ParquetFile(f).metadata.num_rows for f in files} if reader == "parquet" else {}
            # one empty row per shard, so that a shard none of whose images Ray brought still has a group
            shard_ids = [s for s, _ in wave]
            ds = ray.data.from_arrow(pa.table({"shard": pa.array(shard_ids, pa.int64()),
                                               "locator": pa.array([""] * len(wave), pa.string()),
                                               "bytes": pa.array([b""] * len(wave), pa.binary())}))
            if files:
                read = _read(ray, source, reader, files, wave)
                ds = read.map_batches(_tag, batch_format="pyarrow",
                                      fn_kwargs={"reader": reader, "wanted": wanted, "rows_in": rows_in}).union(ds)
            # The group-by runs (and its output is held in the object store) before the actors start: they
            # may take every CPU of the cluster, which would leave none to the reads and the exchange.
            ds = ds.groupby("shard", num_partitions=len(wave)).map_groups(_pack, batch_format="pyarrow")
            ds = ds.materialize().map_batches(_ShardEncoder, batch_size=1, **encode)
            for row in ds.iter_rows():
                missed += int(row["missed"])
                if on_progress is not None:
                    on_progress(int(row["images"]))
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        if started_here:
            ray.shutdown()
    return missed
