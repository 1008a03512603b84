"""PNG files row band by row band (pypng): the reader of `encode_png` and the writer of `decode_to_png`, so neither
holds a whole image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np


def write_png_rows(path: str | os.PathLike, width: int, height: int, channels: int, rows: Iterable[bytes],
                   compression: int | None = None) -> None:
    """Write `height` rows of `width` uint8 pixels with `channels` 1 (grey), 3 (RGB) or 4 (RGBA, straight alpha)
    to a PNG, atomically (a temporary file, then rename: an existing file is only replaced by a complete one).
    `rows`: bytes of width * channels each, consumed as the file is written. `compression`: zlib level 0-9."""
    import png

    from ..io.files import atomic_write

    def write(tmp: str) -> None:
        writer = png.Writer(width, height, greyscale=channels == 1, alpha=channels == 4, bitdepth=8,
                            compression=compression)
        with open(tmp, "wb") as fh:
            writer.write(fh, rows)

    atomic_write(path, write)


def read_png_bands(path: str | os.PathLike, rows: int, channels: int = 3
                   ) -> tuple[int, int, Iterator[np.ndarray]]:
    """Open a PNG and read it lazily: (height, width, iterator of uint8 bands (rows, width, channels)).

    `channels` 3: RGB, alpha dropped; 4: RGBA, the file's straight alpha (transparency chunks included), 255 where
    it has none. Greyscale is expanded to RGB, palettes are expanded, 16-bit samples keep their high byte (as
    Pillow's convert("RGB")). Interlaced PNGs are decoded whole by pypng (no memory saving).
    """
    import png

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        width, height, pixel_rows, info = png.Reader(filename=str(path)).asDirect()
    except (png.Error, OSError) as e:
        raise ValueError(f"{path}: not a readable PNG ({e})") from None
    planes, depth = info["planes"], info["bitdepth"]

    def to_rgb(block: list) -> np.ndarray:
        a = np.asarray(block, dtype=np.uint16 if depth > 8 else np.uint8).reshape(len(block), width, planes)
        if depth > 8:
            a = (a >> (depth - 8)).astype(np.uint8)
        elif depth < 8:
            a = (a.astype(np.uint16) * 255 // (2 ** depth - 1)).astype(np.uint8)
        colour = a[..., :3] if planes >= 3 else np.repeat(a[..., :1], 3, axis=2)
        if channels == 3:
            return colour
        alpha = a[..., -1:] if planes in (2, 4) else np.full((*a.shape[:2], 1), 255, np.uint8)
        return np.concatenate([colour, alpha], axis=2)

    def bands() -> Iterator[np.ndarray]:
        block: list = []
        for row in pixel_rows:
            block.append(row)
            if len(block) == rows:
                yield to_rgb(block)
                block = []
        if block:
            yield to_rgb(block)

    return height, width, bands()
