"""Encoding shards: read and preprocess images on threads, encode in batches, write each shard on a writer thread.

`ShardWorker.run` is the one way a shard is made, by the local runner and by each Ray actor alike, so both produce
the same files: a shard's images are batched in plan order (grouped by shape), and its rows sorted by key.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..images import read_image
from ..weights import sha256_file
from .manifest import SHARDS, JobSpec, marker_path, write_json
from .preprocess import Preprocess
from .shards import LATENT_DTYPES, shard_name, write_shard
from .sources import Item, Source


# ---------------------------------------------------------------------------------------------- the model
def _is_full_vae(model: Any) -> bool:
    return type(model).__name__.startswith("AutoencoderKL")  # diffusers' full VAEs (AutoencoderKL, ...Flux2)


class Encoder:
    """Images (B, 3, H, W) in [-1, 1] -> {"latents"} (a tinyae AutoencoderTiny, through `optimize()` unless
    `optimize=False`), or {"latents", "mean", "logvar"} for a full diffusers AutoencoderKL (the teacher): latents
    are then the posterior mean as the diffusion model sees it, (mean - shift_factor) * scaling_factor, and
    mean/logvar the raw posterior."""

    def __init__(self, model: Any, precision: str = "auto", optimize: bool = True):
        self.teacher = _is_full_vae(model)
        if self.teacher:
            self.net, self.multiple = model.eval(), 2 ** (len(model.config.block_out_channels) - 1)
            self.precision = f"eager-{str(model.dtype).replace('torch.', '')}"
        else:
            if getattr(model, "encoder", None) is None:
                raise ValueError("the model has no encoder (its weights hold only the decoder)")
            self.net = model.optimize(precision) if optimize else model.eval()
            self.precision = self.net.precision if optimize else f"eager-{str(model.dtype).replace('torch.', '')}"
            self.multiple = model.spatial_scale_factor
        self.sha256 = model_sha256(model)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            p = next(self.net.parameters())
            x = x.to(p.device)
            if not self.teacher:
                return {"latents": self.net.encode(x).latents.float().cpu()}
            dist = self.net.encode(x.to(p.dtype)).latent_dist
            cfg = self.net.config
            shift = getattr(cfg, "shift_factor", None) or 0.0
            mean, logvar = dist.mean.float().cpu(), dist.logvar.float().cpu()
            return {"latents": (mean - shift) * cfg.scaling_factor, "mean": mean, "logvar": logvar}


def model_sha256(model: Any) -> str:
    """sha256 of the encoder's tensors (names, dtypes, shapes and bytes, in name order): the same for the same
    weights in any file format."""
    net = model if _is_full_vae(model) else model.encoder
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- one image
@dataclass
class Prepared:
    """One source item after reading: its sha256 and variants (key, image, record), or the error."""

    item: Item
    sha256: str | None = None
    variants: list[tuple[str, torch.Tensor, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None


def prepare(source: Source, item: Item, pre: Preprocess) -> Prepared:
    data = source.fetch([item])[0]
    if isinstance(data, Exception):
        return Prepared(item, error=_reason(data))
    out = Prepared(item, hashlib.sha256(data).hexdigest())
    try:
        out.variants = pre.apply(read_image(data, name=item.locator), item.key)
    except Exception as e:  # noqa: BLE001 - a bad image is a row in the errors table, not a failed job
        out.error = _reason(e)
    return out


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.filename or ''}: {e.strerror}".lstrip(": ")
    return " ".join(text.split())[:500]


# ---------------------------------------------------------------------------------------------- shards
class ShardWorker:
    """Makes shards of one job: `run([(shard, items), ...])` reads ahead on `threads` threads, encodes in batches
    of `batch_size` images of one shape, and writes each finished shard (then its marker) on a writer thread."""

    def __init__(self, out: Path, source: Source, spec: JobSpec, pre: Preprocess, encoder: Encoder,
                 batch_size: int = 8, threads: int = 2):
        self.out, self.source, self.spec, self.pre, self.encoder = Path(out), source, spec, pre, encoder
        self.batch_size, self.threads = batch_size, max(1, threads)
        self.lookahead = max(2 * batch_size, 4 * self.threads)

    def run(self, shards: Sequence[tuple[int, list[Item]]], on_progress: Callable[[int], None] | None = None
            ) -> list[dict[str, Any]]:
        """Make the given shards; returns each one's marker. `on_progress(n)` after every n images read+encoded."""
        markers: list[dict[str, Any]] = []
        writing: Future | None = None
        with ThreadPoolExecutor(self.threads, thread_name_prefix="tinyae-read") as readers, \
                ThreadPoolExecutor(1, thread_name_prefix="tinyae-write") as writer:
            stream = self._prepared(readers, shards)
            for shard, items in shards:
                marker_path(self.out, shard).unlink(missing_ok=True)  # a shard being redone is not done
                rows, errors = self._encode(stream, items, on_progress)
                if writing is not None:
                    markers.append(writing.result())  # at most one shard waits to be written
                writing = writer.submit(self._finish, shard, items, rows, errors)
            if writing is not None:
                markers.append(writing.result())
        return markers

    def _prepared(self, pool: ThreadPoolExecutor, shards: Sequence[tuple[int, list[Item]]]
                  ) -> Iterator[Prepared]:
        """Prepared items in plan order, `lookahead` of them in flight (memory bounded in the number of images)."""
        todo = (it for _, items in shards for it in items)
        window: deque[Future] = deque()
        for it in todo:
            window.append(pool.submit(prepare, self.source, it, self.pre))
            if len(window) >= self.lookahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def _encode(self, stream: Iterator[Prepared], items: list[Item], on_progress: Callable[[int], None] | None
                ) -> tuple[list[dict[str, Any]], dict[str, Prepared]]:
        rows: list[dict[str, Any]] = []
        done: dict[str, Prepared] = {}
        waiting: dict[tuple[int, ...], list[tuple[Prepared, str, torch.Tensor, dict[str, Any]]]] = {}

        def flush(shape: tuple[int, ...]) -> None:
            batch = waiting.pop(shape)
            out = self.encoder(torch.stack([x for _, _, x, _ in batch]))
            # the stored dtype here, on the encoding thread: a torch op on the writer thread would start another
            # OpenMP team competing with the encoder's threads
            out = {k: v.to(LATENT_DTYPES[self.spec.latent_dtype]) for k, v in out.items()}
            for j, (p, key, _, record) in enumerate(batch):
                rows.append(self._row(p, key, record, {k: v[j] for k, v in out.items()}))

        for _ in items:
            p = next(stream)
            done[p.item.key] = Prepared(p.item, p.sha256, error=p.error)  # without its pixels (memory)
            for key, x, record in p.variants:
                waiting.setdefault(tuple(x.shape), []).append((p, key, x, record))
                if len(waiting[tuple(x.shape)]) >= self.batch_size:
                    flush(tuple(x.shape))
            if on_progress is not None:
                on_progress(1)
        for shape in list(waiting):
            flush(shape)
        return rows, done

    def _row(self, p: Prepared, key: str, record: dict[str, Any], tensors: dict[str, torch.Tensor]
             ) -> dict[str, Any]:
        s = self.spec
        return {"key": key, "source": p.item.locator, "source_sha256": p.sha256, **record,
                "latent_shape": list(tensors["latents"].shape), "latent_dtype": s.latent_dtype, "model": s.model,
                "model_sha256": s.model_sha256, "precision": s.precision, "preprocess": s.preprocess_fingerprint,
                **{k: v.clone() for k, v in tensors.items()}}

    def _finish(self, shard: int, items: list[Item], rows: list[dict[str, Any]], done: dict[str, Prepared]
                ) -> dict[str, Any]:
        rows.sort(key=lambda r: r["key"])
        path = self.out / SHARDS / shard_name(shard, self.spec.format)
        write_shard(path, rows, self.spec.format)
        marker = {"shard": shard, "file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                  "rows": len(rows),
                  "inputs": {it.key: [done[it.key].sha256, it.size, it.mtime_ns] for it in items},
                  "errors": [[p.item.key, p.item.locator, p.error] for p in done.values() if p.error]}
        write_json(marker_path(self.out, shard), marker)
        return marker
