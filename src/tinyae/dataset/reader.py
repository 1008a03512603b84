"""Reading latent shards back: `LatentDataset`, a torch Dataset over every finished shard of a job folder.

Random access (`ds[i]`) opens the shard that holds row i (the last few stay open); iterating `ds.shuffled(seed)`
is what a trainer wants at scale: shards in a seeded random order, rows shuffled within each shard, split across
DataLoader workers by shard, each shard read once per epoch. Latents are decoded to tensors only when a row is read.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .manifest import SHARDS, done_shards, read_manifest
from .shards import TENSOR_FIELDS, Shard


class LatentDataset(Dataset):
    """Rows of a latent dataset folder (written by `encode_dataset` / `tinyae encode-dataset`).

    Each item is a dict: "latents" (C, h, w) tensor in `dtype` (None: as stored, e.g. bfloat16), "mean"/"logvar"
    when the job stored a teacher's posterior, and the row's metadata ("key", "source", "source_sha256",
    "original_size", "resized_size", "crop", "flipped", "model", ...). `keep_open`: shards kept open at once.
    """

    def __init__(self, folder: str | Path, dtype: torch.dtype | None = torch.float32, keep_open: int = 2):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.dtype, self.keep_open = dtype, max(1, keep_open)
        self.files: list[Path] = []
        self.offsets: list[int] = [0]
        for _, m in done_shards(self.folder):
            self.files.append(self.folder / SHARDS / m["file"])
            self.offsets.append(self.offsets[-1] + m["rows"])
        self._open: OrderedDict[int, Shard] = OrderedDict()

    def __len__(self) -> int:
        return self.offsets[-1]

    def shard(self, n: int) -> Shard:
        if n not in self._open:
            self._open[n] = Shard(self.files[n])
            while len(self._open) > self.keep_open:
                self._open.popitem(last=False)
        self._open.move_to_end(n)
        return self._open[n]

    def row(self, shard: int, i: int) -> dict[str, Any]:
        s = self.shard(shard)
        item = dict(s.rows[i])
        for f in s.fields:
            t = s.tensor(i, f)
            item[f] = t.clone() if self.dtype is None else t.to(self.dtype, copy=True)  # not a view of the shard
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        import bisect

        n = bisect.bisect_right(self.offsets, index) - 1
        return self.row(n, index - self.offsets[n])

    def shuffled(self, seed: int = 0, epoch: int = 0) -> "ShuffledLatents":
        """An IterableDataset over every row once, shuffled by shard and by row with `seed` and `epoch`."""
        return ShuffledLatents(self, seed, epoch)


class ShuffledLatents(IterableDataset):
    """Every row once per pass, shards in a seeded order, rows shuffled within each shard; with DataLoader
    workers, worker w of W reads the shards w, w + W, ... of that order. `set_epoch(e)` changes the order."""

    def __init__(self, data: LatentDataset, seed: int = 0, epoch: int = 0):
        self.data, self.seed, self.epoch = data, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def batches(self, batch_size: int, drop_last: bool = False) -> "LatentBatches":
        """The same rows in batches of one latent shape (aspect buckets never mix); see LatentBatches."""
        return LatentBatches(self, batch_size, drop_last)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        order = list(range(len(self.data.files)))
        rng.shuffle(order)
        info = get_worker_info()
        if info is not None:
            order = order[info.id::info.num_workers]
        for n in order:
            rows = list(range(self.data.offsets[n + 1] - self.data.offsets[n]))
            random.Random(f"{self.seed}:{self.epoch}:{n}").shuffle(rows)
            for i in rows:
                yield self.data.row(n, i)


class LatentBatches(IterableDataset):
    """Batches of `batch_size` rows of one latent shape, from a ShuffledLatents pass: {"latents": (B, C, h, w),
    "mean"/"logvar" likewise when stored, "rows": the B rows' metadata dicts}. Rows wait per shape until a batch
    is full; at the end the partial batches come out (in shape order) unless `drop_last`. Use it with
    `DataLoader(batches, batch_size=None, num_workers=W)`: each worker batches the shards it reads."""

    def __init__(self, rows: ShuffledLatents, batch_size: int, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.rows, self.batch_size, self.drop_last = rows, batch_size, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.rows.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        waiting: dict[tuple[int, ...], list[dict[str, Any]]] = {}
        for row in self.rows:
            group = waiting.setdefault(tuple(row["latent_shape"]), [])
            group.append(row)
            if len(group) == self.batch_size:
                yield _stack(waiting.pop(tuple(row["latent_shape"])))
        for shape in sorted(waiting):
            if not self.drop_last:
                yield _stack(waiting[shape])


def _stack(rows: list[dict[str, Any]]) -> dict[str, Any]:
    fields = [f for f in TENSOR_FIELDS if f in rows[0]]
    return {**{f: torch.stack([r.pop(f) for r in rows]) for f in fields}, "rows": rows}
