"""Shard files: Parquet (one row per image, latents as raw bytes plus shape and dtype) or safetensors (one tensor
per row and field, the rows' other columns as JSON in the header). Written atomically; reading is lazy per row group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..weights import atomic_write

FORMATS = {"parquet": ".parquet", "safetensors": ".safetensors"}
LATENT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
TENSOR_FIELDS = ("latents", "mean", "logvar")  # mean/logvar: a full VAE's posterior (teacher), when asked for
# Columns of every row besides the tensors; job-wide ones (model, precision, preprocess) repeat per row by design:
# a row copied elsewhere still says how it was made (Parquet's dictionary encoding makes them nearly free).
META_FIELDS = ("key", "source", "source_sha256", "original_size", "resized_size", "crop", "flipped",
               "latent_shape", "latent_dtype", "model", "model_sha256", "precision", "preprocess")


def shard_name(index: int, fmt: str) -> str:
    return f"{index:05d}{FORMATS[fmt]}"


def tensor_bytes(t: torch.Tensor, dtype: torch.dtype) -> bytes:
    return t.detach().to("cpu", dtype).contiguous().flatten().view(torch.uint8).numpy().tobytes()


def bytes_tensor(data: bytes, shape: Sequence[int], dtype: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=LATENT_DTYPES[dtype]).reshape(tuple(shape))


def write_shard(path: Path, rows: list[dict[str, Any]], fmt: str) -> None:
    """Write rows (META_FIELDS plus tensors for the TENSOR_FIELDS they have) to one shard file, atomically."""
    if fmt == "parquet":
        _write_parquet(path, rows)
    else:
        _write_safetensors(path, rows)


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [("key", pa.string()), ("source", pa.string()), ("source_sha256", pa.string()),
              ("original_size", pa.list_(pa.int32())), ("resized_size", pa.list_(pa.int32())),
              ("crop", pa.list_(pa.int32())), ("flipped", pa.bool_()), ("latent_shape", pa.list_(pa.int32())),
              ("latent_dtype", pa.string()), ("model", pa.string()), ("model_sha256", pa.string()),
              ("precision", pa.string()), ("preprocess", pa.string())]
    tensors = [f for f in TENSOR_FIELDS if rows and f in rows[0]]
    schema = pa.schema(fields + [(f, pa.binary()) for f in tensors])
    columns = {name: [r[name] for r in rows] for name, _ in fields}
    for f in tensors:
        columns[f] = [tensor_bytes(r[f], LATENT_DTYPES[r["latent_dtype"]]) for r in rows]
    table = pa.Table.from_pydict(columns, schema=schema)
    # tensor columns uncompressed: zstd shrinks bf16 latents only to ~78 % and its decompression was most of a
    # shuffled read-back (docs/benchmarks.md); the metadata columns compress well and stay zstd
    meta = [f"{name}.list.element" if pa.types.is_list(t) else name for name, t in fields]  # leaf column paths
    compression = {**{name: "zstd" for name in meta}, **{f: "none" for f in tensors}}
    atomic_write(path, lambda p: pq.write_table(table, p, compression=compression, row_group_size=256,
                                                use_dictionary=meta))


def _write_safetensors(path: Path, rows: list[dict[str, Any]]) -> None:
    from safetensors.torch import save_file

    tensors = {f"{i:06d}/{f}": r[f].detach().to("cpu", LATENT_DTYPES[r["latent_dtype"]]).contiguous()
               for i, r in enumerate(rows) for f in TENSOR_FIELDS if f in r}
    meta = {"format": "pt", "tinyae": "latent-shard",
            "rows": json.dumps([{k: r[k] for k in META_FIELDS} for r in rows], separators=(",", ":"))}
    atomic_write(path, lambda p: save_file(tensors, p, metadata=meta))


class Shard:
    """One shard file opened for reading: `rows` (the metadata of each row) and `tensor(i, field)` on demand.

    Parquet: the metadata columns are read at open; a tensor column is read (memory-mapped) one row group at a
    time, the first time a row of that group is asked for, into one buffer per group (one copy out of Arrow per
    group, none per row) of which each row is a view. safetensors: memory-mapped by safetensors, one tensor per
    row read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix == ".parquet":
            import pyarrow.parquet as pq

            self._file = pq.ParquetFile(self.path, memory_map=True)
            names = self._file.schema_arrow.names
            self.fields = [f for f in TENSOR_FIELDS if f in names]
            meta = [c for c in names if c not in TENSOR_FIELDS]
            self.rows: list[dict[str, Any]] = self._file.read(columns=meta).to_pylist()
            md = self._file.metadata
            self._starts = [0]
            for g in range(md.num_row_groups):
                self._starts.append(self._starts[-1] + md.row_group(g).num_rows)
            self._groups: dict[tuple[int, str], tuple[torch.Tensor, Any]] = {}
        else:
            from safetensors import safe_open

            self._file = safe_open(str(self.path), framework="pt")
            self.rows = json.loads((self._file.metadata() or {}).get("rows", "[]"))
            names = set(self._file.keys())
            self.fields = [f for f in TENSOR_FIELDS if f"{0:06d}/{f}" in names]

    def __len__(self) -> int:
        return len(self.rows)

    def tensor(self, i: int, field: str = "latents") -> torch.Tensor:
        """Row i's tensor in its stored dtype, shape `latent_shape` (C, h, w). Parquet: a view into the shard's
        buffer of that row group (read-only use; `.to()`/`.clone()` before changing it in place)."""
        if not 0 <= i < len(self.rows):
            raise IndexError(f"{self.path}: row {i} out of range for {len(self.rows)} rows")
        if self.path.suffix != ".parquet":
            return self._file.get_tensor(f"{i:06d}/{field}")
        import bisect

        g = bisect.bisect_right(self._starts, i) - 1
        if (g, field) not in self._groups:
            self._groups[(g, field)] = self._read_group(g, field)
        data, offsets = self._groups[(g, field)]
        j = i - self._starts[g]
        r = self.rows[i]
        return data[offsets[j]:offsets[j + 1]].view(LATENT_DTYPES[r["latent_dtype"]]).reshape(r["latent_shape"])

    def _read_group(self, g: int, field: str) -> tuple[torch.Tensor, Any]:
        """(all bytes of the group's `field` cells as one uint8 tensor, the cells' start offsets into it)."""
        import numpy as np

        col = self._file.read_row_group(g, columns=[field]).column(0).combine_chunks()
        _, offsets_buf, data_buf = col.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int32)[col.offset:col.offset + len(col) + 1]
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        base = int(offsets[0])
        return torch.from_numpy(data[base:int(offsets[-1])].copy()), (offsets - base).tolist()
