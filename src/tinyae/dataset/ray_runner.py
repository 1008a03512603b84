"""The Ray runner: the same shards, made by a pool of Ray actors that each load the model once.

Where the source is files (a folder, a list, Parquet with a path column), Ray's own reader brings the bytes:
`ray.data.read_binary_files(files, include_paths=True)`, each file tagged with its planned shard, then
`groupby("shard").map_groups(...)` packs each shard's files into one row, and `map_batches(_ShardEncoder,
compute=ray.data.ActorPoolStrategy(size=workers))` hands each row to an actor: it gets one whole shard's bytes,
runs the very `ShardWorker` the local runner uses on them (in plan order, so the rows are byte for byte the local
runner's) and writes the shard and its marker into OUT (a folder every node sees). For
rows inside containers (Parquet image bytes, WebDataset members), which Ray's readers cannot address by tinyae's
key, each pending shard is one input row and the actor fetches its items itself.

The group-by is an all-to-all exchange (it needs all its input before it emits a group), so shards go through
Ray in waves of `WAVE_PER_WORKER * workers` shards, each read and grouped (materialized in the object store)
before its actors start: memory in flight stays bounded in the number of images.
Ray restarts a killed actor and retries its task (Ray Data 2.60's defaults for actor pools: `max_restarts=-1`,
`max_task_retries=-1`), and re-executes a lost read from its lineage; a retried shard is rewritten whole,
atomically, so every row is there exactly once. docs/dataset.md says why Ray's `write_parquet` and
`CheckpointConfig` are not used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from .manifest import JobSpec, read_plan
from .preprocess import Preprocess
from .sources import Item, Source

WAVE_PER_WORKER = 4  # shards per actor in one wave through Ray's group-by


def ray_reads(source: Source) -> bool:
    """Whether Ray's file reader can fetch this source's images (whole files, one per item)."""
    return source.kind in ("folder", "list") or (source.kind == "parquet" and bool(source.path_column))


class _Fetched:
    """A source whose bytes Ray's reader already brought (by locator); any other item is fetched as usual."""

    def __init__(self, source: Source, data: dict[str, bytes]):
        self.source, self.data = source, data

    def fetch(self, items: Sequence[Item]) -> list[bytes | Exception]:
        return [self.data[it.locator] if it.locator in self.data else self.source.fetch([it])[0] for it in items]


class _ShardEncoder:
    """A Ray actor: loads the model once, then makes the shards it is handed (with their bytes, or without)."""

    def __init__(self, out: str, source: Source, spec: JobSpec, pre: Preprocess, model: Any, optimize: bool,
                 batch_size: int, threads: int):
        import torch

        from .encode import Encoder

        torch.set_num_threads(threads)
        self.encoder = Encoder(model, spec.precision if optimize else "auto", optimize)
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
        source: Any = self.source
        if "bytes" in batch.column_names:  # the shard's files' bytes, as Ray's reader brought them
            data = {p: b for ps, bs in zip(batch["paths"].to_pylist(), batch["bytes"].to_pylist())
                    for p, b in zip(ps, bs) if p}
            source = _Fetched(self.source, data)
        worker = ShardWorker(self.out, source, self.spec, self.pre, self.encoder, self.batch_size, self.threads)
        markers = worker.run([(s, self.plan[s]) for s in shards])
        return pa.table({"shard": shards, "images": [len(m["inputs"]) for m in markers],
                         "rows": [m["rows"] for m in markers]})


def _tag(batch: Any, shard_of: dict[str, list[int]]) -> Any:
    """Rows of read_binary_files (path, bytes) -> (shard, path, bytes): a file listed in n shards gives n rows."""
    import pyarrow as pa

    shards, paths, data = [], [], []
    for p, b in zip(batch["path"].to_pylist(), batch["bytes"].to_pylist()):
        for s in shard_of.get(_norm(p), ()):
            shards.append(s)
            paths.append(_norm(p))
            data.append(b)
    return pa.table({"shard": pa.array(shards, pa.int64()), "path": pa.array(paths, pa.string()),
                     "bytes": pa.array(data, pa.binary())})


def _pack(group: Any) -> Any:
    """One group of the group-by (the rows of one shard) -> one row: shard, [paths], [bytes]."""
    import pyarrow as pa

    return pa.table({"shard": pa.array([group["shard"][0].as_py()], pa.int64()),
                     "paths": pa.array([group["path"].to_pylist()], pa.list_(pa.string())),
                     "bytes": pa.array([group["bytes"].to_pylist()], pa.large_list(pa.large_binary()))})


def _norm(path: str) -> str:
    return str(Path(path).absolute())


def _waves(work: Sequence[tuple[int, list[Item]]], size: int) -> list[Sequence[tuple[int, list[Item]]]]:
    return [work[i:i + size] for i in range(0, len(work), size)]


def run_on_ray(out: Path, source: Source, spec: JobSpec, pre: Preprocess, model: Any, optimize: bool,
               work: Sequence[tuple[int, list[Item]]], *, batch_size: int, threads: int, address: str | None,
               workers: int, num_gpus: float, on_progress: Callable[[int], None] | None) -> None:
    try:
        import ray
    except ImportError:
        raise ImportError("--runner ray needs Ray: pip install 'tinyae[ray]'") from None
    import pyarrow as pa

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # tinyae's own bar counts images
        ctx.print_on_execution_start = False
        encode = dict(compute=ray.data.ActorPoolStrategy(size=workers), batch_format="pyarrow",
                      fn_constructor_kwargs={"out": str(Path(out).resolve()), "source": source, "spec": spec,
                                             "pre": pre, "model": model, "optimize": optimize,
                                             "batch_size": batch_size, "threads": threads},
                      num_cpus=threads, num_gpus=num_gpus or None)  # Ray 2.60's actor pools default to
        # max_restarts=-1 and max_task_retries=-1 (passing them goes through the deprecated **ray_remote_args)
        waves = _waves(work, WAVE_PER_WORKER * workers) if ray_reads(source) else [work]
        for wave in waves:
            shard_ids = [s for s, _ in wave]
            if ray_reads(source):
                shard_of: dict[str, list[int]] = {}
                for s, items in wave:
                    for it in items:
                        if Path(it.locator).is_file():  # a missing file is the actor's to report, as an error row
                            shard_of.setdefault(_norm(it.locator), []).append(s)
                # one empty row per shard, so that a shard none of whose files could be read still has a group
                empty = ray.data.from_arrow(pa.table({"shard": pa.array(shard_ids, pa.int64()),
                                                      "path": pa.array([""] * len(wave), pa.string()),
                                                      "bytes": pa.array([b""] * len(wave), pa.binary())}))
                ds = empty
                if shard_of:
                    read = ray.data.read_binary_files(sorted(shard_of), include_paths=True)
                    ds = read.map_batches(_tag, batch_format="pyarrow", fn_kwargs={"shard_of": shard_of}
                                          ).union(empty)
                # The group-by runs (and its output is held in the object store) before the actors start: they
                # may take every CPU of the cluster, which would leave none to the reads and the exchange.
                ds = ds.groupby("shard", num_partitions=len(wave)).map_groups(_pack, batch_format="pyarrow")
                ds = ds.materialize().map_batches(_ShardEncoder, batch_size=1, **encode)
            else:
                ds = ray.data.from_items([{"shard": s} for s in shard_ids], override_num_blocks=len(wave))
                ds = ds.map_batches(_ShardEncoder, batch_size=1, **encode)
            for row in ds.iter_rows():
                if on_progress is not None:
                    on_progress(int(row["images"]))
    finally:
        if started_here:
            ray.shutdown()
