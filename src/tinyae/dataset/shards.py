"""Shard files: Parquet (one row per image, latents as raw bytes plus shape and dtype) or safetensors (one tensor
per row and field, the rows' other columns as JSON in the header). Written atomically; reading is lazy per row.
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
    atomic_write(path, lambda p: pq.write_table(table, p, compression="zstd", row_group_size=256))


def _write_safetensors(path: Path, rows: list[dict[str, Any]]) -> None:
    from safetensors.torch import save_file

    tensors = {f"{i:06d}/{f}": r[f].detach().to("cpu", LATENT_DTYPES[r["latent_dtype"]]).contiguous()
               for i, r in enumerate(rows) for f in TENSOR_FIELDS if f in r}
    meta = {"format": "pt", "tinyae": "latent-shard",
            "rows": json.dumps([{k: r[k] for k in META_FIELDS} for r in rows], separators=(",", ":"))}
    atomic_write(path, lambda p: save_file(tensors, p, metadata=meta))


class Shard:
    """One shard file opened for reading: `rows` (the metadata of each row) and `tensor(i, field)` on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix == ".parquet":
            import pyarrow.parquet as pq

            self._table = pq.read_table(self.path)
            meta = [c for c in self._table.column_names if c not in TENSOR_FIELDS]
            self.rows: list[dict[str, Any]] = self._table.select(meta).to_pylist()
            self.fields = [f for f in TENSOR_FIELDS if f in self._table.column_names]
        else:
            from safetensors import safe_open

            self._file = safe_open(str(self.path), framework="pt")
            self.rows = json.loads((self._file.metadata() or {}).get("rows", "[]"))
            names = set(self._file.keys())
            self.fields = [f for f in TENSOR_FIELDS if f"{0:06d}/{f}" in names]

    def __len__(self) -> int:
        return len(self.rows)

    def tensor(self, i: int, field: str = "latents") -> torch.Tensor:
        """Row i's tensor in its stored dtype, shape `latent_shape` (C, h, w)."""
        if self.path.suffix == ".parquet":
            r = self.rows[i]
            return bytes_tensor(self._table.column(field)[i].as_py(), r["latent_shape"], r["latent_dtype"])
        return self._file.get_tensor(f"{i:06d}/{field}")
