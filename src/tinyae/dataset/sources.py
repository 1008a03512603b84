"""Where images come from: a folder tree, a list file, Parquet files, WebDataset tar shards.

A source lists its images as `Item`s (a stable key, a locator to fetch the bytes again, and a cheap stat used on
resume to tell whether an image may have changed) and fetches their encoded bytes. Items are listed sorted by key,
so the listing, and everything planned from it, is the same on every machine.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..images import IMAGE_SUFFIXES


class SourceError(ValueError):
    """A source that cannot be listed: names the source and the problem."""


@dataclass(frozen=True)
class Item:
    """One source image. `locator`: how to fetch it (a path; `tar::member@offset:size`; `file.parquet::row`);
    `stat`: (size in bytes, mtime in ns) of what holds it, compared on resume before re-hashing."""

    key: str
    locator: str
    size: int
    mtime_ns: int


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.endswith(".latent.png")


@dataclass(frozen=True)
class Source:
    """A description of the input (kind and paths) that lists items and fetches bytes; picklable (sent to Ray)."""

    kind: str  # "folder" | "list" | "parquet" | "webdataset"
    paths: tuple[str, ...]
    image_column: str | None = None  # parquet: a column of encoded image bytes ...
    path_column: str | None = None   # ... or of image paths (relative to the Parquet file's folder)
    key_column: str | None = None    # parquet: the key (default: <file stem>/<row>)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "paths": list(self.paths), "image_column": self.image_column,
                "path_column": self.path_column, "key_column": self.key_column}

    # ------------------------------------------------------------------ listing
    def items(self) -> list[Item]:
        """Every image of the source, sorted by key; SourceError when keys repeat or nothing is found."""
        lister = {"folder": self._folder, "list": self._list, "parquet": self._parquet,
                  "webdataset": self._webdataset}[self.kind]
        items = sorted(lister(), key=lambda it: it.key)
        for a, b in zip(items, items[1:]):
            if a.key == b.key:
                raise SourceError(f"two images have the key {a.key!r} ({a.locator} and {b.locator}); keys must "
                                  "be unique")
        if not items:
            raise SourceError(f"{', '.join(self.paths)}: no images found")
        return items

    def _folder(self) -> list[Item]:
        out = []
        for root in map(Path, self.paths):
            base = root.name if len(self.paths) > 1 else ""
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in filenames:
                    p = Path(dirpath) / name
                    if not name.startswith(".") and _is_image(p):
                        out.append(Item(str(Path(base, p.relative_to(root)).as_posix()), str(p), *_stat(p)))
        return out

    def _list(self) -> list[Item]:
        out = []
        for lst in map(Path, self.paths):
            for n, line in enumerate(lst.read_text().splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                p = Path(line) if Path(line).is_absolute() else lst.parent / line
                try:
                    stat = _stat(p)
                except OSError:
                    stat = (-1, -1)  # listed but missing: an error row, not a failed job
                out.append(Item(line, str(p), *stat))
        return out

    def _parquet(self) -> list[Item]:
        import pyarrow.parquet as pq

        if bool(self.image_column) == bool(self.path_column):
            raise SourceError("a Parquet source needs exactly one of an image-bytes column (--image-column) or a "
                              "path column (--path-column)")
        out = []
        for f in map(Path, self.paths):
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            for col in (self.image_column, self.path_column, self.key_column):
                if col and col not in names:
                    raise SourceError(f"{f}: no column {col!r} (columns: {', '.join(names)})")
            size, mtime = _stat(f)
            keys = (pf.read(columns=[self.key_column]).column(0).to_pylist() if self.key_column
                    else [f"{f.stem}/{i}" for i in range(pf.metadata.num_rows)])
            paths = pf.read(columns=[self.path_column]).column(0).to_pylist() if self.path_column else None
            for i, key in enumerate(keys):
                if paths is not None:
                    p = Path(paths[i]) if Path(paths[i]).is_absolute() else f.parent / paths[i]
                    try:
                        size, mtime = _stat(p)
                    except OSError:
                        size, mtime = -1, -1
                    out.append(Item(str(key), str(p), size, mtime))
                else:
                    out.append(Item(str(key), f"{f}::{i}", size, mtime))
        return out

    def _webdataset(self) -> list[Item]:
        out = []
        for t in map(Path, self.paths):
            with tarfile.open(t) as tar:  # reads the headers only, seeking past the data
                for m in tar:
                    if m.isfile() and _is_image(Path(m.name)):
                        folder, base = posixpath.split(m.name)  # WebDataset's key: up to the first dot
                        stem = posixpath.join(folder, base.split(".", 1)[0])
                        out.append(Item(stem, f"{t}::{m.name}@{m.offset_data}:{m.size}", m.size,
                                        int(m.mtime * 1e9)))
        return out

    # ------------------------------------------------------------------ fetching
    def fetch(self, items: Sequence[Item]) -> list[bytes | Exception]:
        """The encoded bytes of each item, or the exception that says why they could not be read."""
        out: list[bytes | Exception] = []
        tables: dict[str, Any] = {}
        for it in items:
            try:
                out.append(self._fetch_one(it, tables))
            except Exception as e:  # noqa: BLE001 - reported per row in the errors table
                out.append(e)
        return out

    def _fetch_one(self, it: Item, tables: dict[str, Any]) -> bytes:
        if self.kind == "webdataset":
            tar_path, rest = it.locator.rsplit("::", 1)
            offset, size = map(int, rest.rsplit("@", 1)[1].split(":"))
            with open(tar_path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
            if len(data) != size:
                raise OSError(f"{it.locator}: tar shard truncated")
            return data
        if self.kind == "parquet" and self.image_column:
            path, row = it.locator.rsplit("::", 1)
            value = _parquet_row(tables, path, self.image_column, int(row))
            if isinstance(value, dict):  # e.g. Hugging Face datasets' {"bytes": ..., "path": ...} struct
                value = value.get("bytes")
            if not isinstance(value, (bytes, bytearray)):
                raise ValueError(f"{it.locator}: column {self.image_column!r} holds {type(value).__name__}, "
                                 "expected encoded image bytes")
            return bytes(value)
        return Path(it.locator).read_bytes()


def _parquet_row(tables: dict[str, Any], path: str, column: str, row: int) -> Any:
    """One cell, reading only the row group that holds it (cached for the next rows of the same group)."""
    import pyarrow.parquet as pq

    if path not in tables:
        pf = pq.ParquetFile(path)
        starts, s = [], 0
        for g in range(pf.metadata.num_row_groups):
            starts.append(s)
            s += pf.metadata.row_group(g).num_rows
        tables[path] = {"file": pf, "starts": starts, "group": None, "table": None}
    t = tables[path]
    g = max(i for i, s in enumerate(t["starts"]) if s <= row)
    if t["group"] != g:
        t["group"], t["table"] = g, t["file"].read_row_group(g, columns=[column]).column(0)
    return t["table"][row - t["starts"][g]].as_py()


def open_source(paths: Sequence[str], kind: str = "auto", *, image_column: str | None = None,
                path_column: str | None = None, key_column: str | None = None) -> Source:
    """A Source for command-line paths; `kind` "auto" decides from what the paths are."""
    if not paths:
        raise SourceError("no source given")
    ps = [Path(p).absolute() for p in paths]  # Ray workers run elsewhere: locators are absolute
    for p in ps:
        if not p.exists():
            raise SourceError(f"{p}: no such file or folder")
    if kind == "auto":
        kind = _guess_kind(ps)
    if kind in ("parquet", "webdataset") and any(p.is_dir() for p in ps):
        suffix = ".parquet" if kind == "parquet" else ".tar"
        ps = [f for p in ps for f in (sorted(p.glob(f"*{suffix}")) if p.is_dir() else [p])]
    if kind == "parquet" and not (image_column or path_column):
        image_column = "image"
    return Source(kind, tuple(str(p) for p in ps), image_column, path_column, key_column)


def _guess_kind(ps: list[Path]) -> str:
    if all(p.is_file() and p.suffix == ".parquet" for p in ps):
        return "parquet"
    if all(p.is_file() and p.suffix == ".tar" for p in ps):
        return "webdataset"
    if all(p.is_file() and p.suffix in (".txt", ".lst", ".list") for p in ps):
        return "list"
    if all(p.is_dir() for p in ps):
        if all(not any(_is_image(f) for f in p.rglob("*")) for p in ps):
            for kind, suffix in (("webdataset", ".tar"), ("parquet", ".parquet")):
                if all(any(p.glob(f"*{suffix}")) for p in ps):
                    return kind
        return "folder"
    raise SourceError(f"cannot tell what kind of source {', '.join(map(str, ps))} is (a folder of images, a .txt "
                      "list, .parquet files or .tar shards); name it with --source-kind")
