"""The Ray runner: the same shards, made by a pool of Ray actors that each load the model once.

Each planned shard is one input row of a Ray Dataset; `map_batches` hands shards to `_ShardEncoder` actors
(`compute=ray.data.ActorPoolStrategy(size=workers)`, `num_gpus` per actor where GPUs exist), and each actor runs
the very `ShardWorker` the local runner uses, writing the shard and its marker into OUT (which must be a folder
every node sees: a shared filesystem). Ray restarts a killed actor and retries its task (Ray Data 2.60's
defaults for actor pools: `max_restarts=-1`, `max_task_retries=-1`); a retried shard is rewritten whole, atomically, so every row is there exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from .manifest import JobSpec, read_plan
from .preprocess import Preprocess
from .sources import Item, Source


class _ShardEncoder:
    """A Ray actor: loads the model once, then makes the shards it is handed."""

    def __init__(self, out: str, source: Source, spec: JobSpec, pre: Preprocess, model: Any, optimize: bool,
                 batch_size: int, threads: int):
        import torch

        from .encode import Encoder, ShardWorker

        torch.set_num_threads(threads)
        encoder = Encoder(model, spec.precision if optimize else "auto", optimize)
        if (encoder.sha256, encoder.precision) != (spec.model_sha256, spec.precision):
            raise RuntimeError(f"this Ray worker encodes with precision {encoder.precision} (model sha "
                               f"{encoder.sha256[:12]}), the job with {spec.precision} ({spec.model_sha256[:12]})")
        self.plan = read_plan(Path(out))
        self.worker = ShardWorker(Path(out), source, spec, pre, encoder, batch_size, threads)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        shards = [int(s) for s in batch["shard"]]
        markers = self.worker.run([(s, self.plan[s]) for s in shards])
        return {"shard": shards, "images": [len(m["inputs"]) for m in markers], "rows": [m["rows"] for m in markers]}


def run_on_ray(out: Path, source: Source, spec: JobSpec, pre: Preprocess, model: Any, optimize: bool,
               work: Sequence[tuple[int, list[Item]]], *, batch_size: int, threads: int, address: str | None,
               workers: int, num_gpus: float, on_progress: Callable[[int], None] | None) -> None:
    try:
        import ray
    except ImportError:
        raise ImportError("--runner ray needs Ray: pip install 'tinyae[ray]'") from None

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # tinyae's own bar counts images
        ctx.print_on_execution_start = False
        ds = ray.data.from_items([{"shard": s} for s, _ in work], override_num_blocks=len(work))
        ds = ds.map_batches(
            _ShardEncoder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
            fn_constructor_kwargs={"out": str(Path(out).resolve()), "source": source, "spec": spec, "pre": pre,
                                   "model": model, "optimize": optimize, "batch_size": batch_size,
                                   "threads": threads},
            num_cpus=threads, num_gpus=num_gpus or None)  # Ray 2.60's actor pools default to max_restarts=-1 and
        # max_task_retries=-1 (passing them goes through the deprecated **ray_remote_args)
        for row in ds.iter_rows():
            if on_progress is not None:
                on_progress(int(row["images"]))
    finally:
        if started_here:
            ray.shutdown()
