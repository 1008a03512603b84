"""Latent files: float latents in safetensors, and the original project's 8-bit latent PNG.

safetensors (`<name>.safetensors`): tensor `latents` (C, h, w) or (B, C, h, w) as given (float32 by default),
optional tensor `alpha` (H, W) uint8; metadata (JSON values as strings): `format` = "tinyae.latents",
`tinyae_version`, `latent_shape`, `dtype`, and what the caller adds: `variant`, `original_size` [W, H], `grayscale`,
`source`, ...

8-bit PNG (`<name>.latent.png`): latents mapped to [0, 1] by `scale_latents` (x / (2 * magnitude) + shift, clamped;
magnitude 3, shift 0.5 for every released variant) and rounded to 8 bits. Channels are taken four at a time as
RGBA tiles of h x w, written in the original project's layout ("rgba-stack"): the G = ceil(C / 4) tiles stacked
vertically, (C, h, w) -> (4, G * h, w) (`unflatten(0, (-1, 4)).transpose(0, 1).flatten(1, 2)`); 4 channels are one
h x w RGBA PNG; missing channels of the last tile (C not a multiple of 4) zero-filled. A `tinyae` text chunk holds
the metadata as JSON (layout, latent_channels, latent_shape, magnitude, shift, original_size, variant, ...); an
RGBA source's alpha (3-channel models) rides along as a PNG-encoded base64 text chunk `tinyae.alpha`.

Read also: tinyae's earlier grid layout ("rgba-tiles": tiles row-major in `cols = 2 ** ceil(log2(G) / 2)` columns,
16 channels 2 x 2, 32 channels 4 x 2), for files whose metadata says so or has no `layout` key; and the original
project's files, which have no tinyae metadata (RGBA, magnitude 3, shift 0.5; the channel count comes from the
caller, e.g. the decoding model).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from .images import EncodedImage
from .latents import LATENT_MAGNITUDE, LATENT_SHIFT, scale_latents, unscale_latents
from ..io.files import atomic_write, first_line
from ..io.layouts import FLOAT_DTYPES

FORMAT = "tinyae.latents"
PNG_SUFFIX = ".latent.png"


class LatentFileError(ValueError):
    """A latent file that cannot be read: names the file and the problem."""


def _version() -> str:
    from .._version import __version__

    return __version__


def _as_encoded(latents: Any, metadata: dict[str, Any]) -> EncodedImage:
    if isinstance(latents, EncodedImage):
        e = latents
        meta = {**e.metadata, **metadata}
    elif isinstance(latents, torch.Tensor):
        e, meta = EncodedImage(latents), dict(metadata)
    else:
        raise ValueError(f"latents must be a tensor or an EncodedImage, got {type(latents).__name__}")
    if e.latents.dim() not in (3, 4) or not e.latents.is_floating_point():
        raise ValueError(f"latents must be a float (C, h, w) or (B, C, h, w) tensor, got {e.latents.dtype} "
                         f"{tuple(e.latents.shape)}")
    if e.size is not None:
        meta["original_size"] = list(e.size)
    if e.grayscale:
        meta["grayscale"] = True
    meta.update(tinyae_version=_version(), latent_shape=list(e.latents.shape), dtype=str(e.latents.dtype)
                .replace("torch.", ""), latent_channels=int(e.latents.shape[-3]))
    return EncodedImage(e.latents, e.size, e.alpha, e.grayscale, meta)


def save_latents(path: str | os.PathLike, latents: torch.Tensor | EncodedImage, **metadata: Any) -> Path:
    """Write latents atomically: `*.png` -> the 8-bit latent PNG, anything else -> safetensors.

    `latents`: raw latents (C, h, w) / (B, C, h, w) (PNG: (C, h, w) only), or an EncodedImage (its size, alpha,
    grayscale flag and metadata are stored too). `metadata`: JSON-serialisable values (variant, source, ...);
    PNG honours `magnitude` and `shift` (default 3 and 0.5, the released variants' values).
    """
    path = Path(path)
    e = _as_encoded(latents, metadata)
    if path.suffix.lower() == ".png":
        _save_png(path, e)
    else:
        _save_safetensors(path, e)
    return path


def _save_safetensors(path: Path, e: EncodedImage) -> None:
    from safetensors.torch import save

    tensors = {"latents": e.latents.detach().cpu().contiguous()}
    if e.alpha is not None:
        tensors["alpha"] = torch.from_numpy(np.ascontiguousarray(e.alpha, dtype=np.uint8))
    meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in e.metadata.items()}}
    data = canonical_safetensors(save(tensors, metadata=meta))
    atomic_write(path, lambda p: Path(p).write_bytes(data))


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: safetensors writes the metadata in hash-map
    order, which differs from run to run; sorted, the same latents always give the same bytes (--resume relies on
    it). Offsets are relative to the data, so only the header changes (padded with spaces to 8 bytes, as the
    format allows)."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


STACK, GRID = "rgba-stack", "rgba-tiles"  # the original project's layout (written); tinyae's earlier one (read)


def png_layout(channels: int, layout: str = STACK) -> tuple[int, int]:
    """(rows, cols) of RGBA tiles for `channels` latent channels in `layout` (STACK or GRID)."""
    groups = math.ceil(channels / 4)
    if layout == STACK:
        return groups, 1
    if layout != GRID:
        raise ValueError(f"unknown latent PNG layout {layout!r} (expected {STACK!r} or {GRID!r})")
    cols = 2 ** math.ceil(math.log2(groups) / 2) if groups > 1 else 1
    return math.ceil(groups / cols), cols


def latents_to_png(latents: torch.Tensor, magnitude: float = LATENT_MAGNITUDE, shift: float = LATENT_SHIFT,
                   layout: str = STACK) -> Image.Image:
    """Raw latents (C, h, w) -> an 8-bit RGBA image of tiles in `layout` (see the module docstring)."""
    if latents.dim() != 3:
        raise ValueError(f"the latent PNG holds one image: latents must be (C, h, w), got {tuple(latents.shape)}")
    c, h, w = latents.shape
    rows, cols = png_layout(c, layout)
    q = scale_latents(latents.detach().float().cpu(), magnitude, shift).mul(255).round().byte()
    q = torch.cat([q, q.new_zeros(rows * cols * 4 - c, h, w)])  # zero-fill the last group
    grid = q.reshape(rows, cols, 4, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, 4)
    return Image.fromarray(grid.numpy(), "RGBA")


def png_to_latents(image: Image.Image, channels: int, magnitude: float = LATENT_MAGNITUDE,
                   shift: float = LATENT_SHIFT, layout: str = STACK) -> torch.Tensor:
    """The inverse of `latents_to_png`: raw latents (C, h, w) float32 (8-bit precision)."""
    rows, cols = png_layout(channels, layout)
    if image.mode != "RGBA":
        raise ValueError(f"a latent PNG is RGBA, got mode {image.mode}")
    a = torch.from_numpy(np.asarray(image).copy())
    if a.shape[0] % rows or a.shape[1] % cols:
        raise ValueError(f"a {a.shape[1]}x{a.shape[0]} PNG cannot hold {rows}x{cols} tiles of {channels} channels")
    h, w = a.shape[0] // rows, a.shape[1] // cols
    q = a.reshape(rows, h, cols, w, 4).permute(0, 2, 4, 1, 3).reshape(rows * cols * 4, h, w)[:channels]
    return unscale_latents(q.float() / 255, magnitude, shift)


def encode_png_bytes(latents: torch.Tensor, magnitude: float = LATENT_MAGNITUDE, shift: float = LATENT_SHIFT
                     ) -> bytes:
    """The latent PNG's bytes without metadata (what its size in bits per pixel is measured on)."""
    buf = io.BytesIO()
    latents_to_png(latents, magnitude, shift).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _save_png(path: Path, e: EncodedImage) -> None:
    magnitude = float(e.metadata.get("magnitude", LATENT_MAGNITUDE))
    shift = float(e.metadata.get("shift", LATENT_SHIFT))
    meta = {**e.metadata, "format": FORMAT, "magnitude": magnitude, "shift": shift, "dtype": "uint8",
            "layout": STACK}
    image = latents_to_png(e.latents, magnitude, shift)
    info = PngImagePlugin.PngInfo()
    info.add_text("tinyae", json.dumps(meta))
    if e.alpha is not None:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(e.alpha, dtype=np.uint8), "L").save(buf, format="PNG", optimize=True)
        info.add_text("tinyae.alpha", base64.b64encode(buf.getvalue()).decode("ascii"))
    atomic_write(path, lambda p: image.save(p, format="PNG", pnginfo=info, optimize=True))


def load_latents(path: str | os.PathLike, latent_channels: int | None = None) -> EncodedImage:
    """Read a latent file written by `save_latents` (safetensors or latent PNG, told apart by content), or an
    8-bit latent PNG of the original project (no tinyae metadata: give `latent_channels`, the decoding model's).

    Returns an EncodedImage: `latents` float tensor as stored, `size`, `alpha`, `grayscale` and `metadata`.
    Raises LatentFileError for a missing, unreadable or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise LatentFileError(f"{path}: no such file" if not path.exists() else f"{path}: is not a file")
    with open(path, "rb") as f:
        head = f.read(8)
    if head == b"\x89PNG\r\n\x1a\n":
        e = _load_png(path, latent_channels)
    else:
        e = _load_safetensors(path)
    size = e.metadata.get("original_size")
    if size is not None:
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  and v > 0 for v in size)):
            raise LatentFileError(f"{path}: bad original_size {size!r} in the metadata")
        e.size = (size[0], size[1])
    grayscale = e.metadata.get("grayscale", False)
    if not isinstance(grayscale, bool):
        raise LatentFileError(f"{path}: bad grayscale {grayscale!r} in the metadata (expected true or false)")
    e.grayscale = grayscale
    shape = e.metadata.get("latent_shape")
    if shape is not None and shape != list(e.latents.shape):
        raise LatentFileError(f"{path}: the metadata's latent_shape {shape!r} is not the stored "
                              f"{list(e.latents.shape)}")
    if e.latents.numel() == 0:
        raise LatentFileError(f"{path}: holds empty latents {tuple(e.latents.shape)}")
    if not torch.isfinite(e.latents).all():
        raise LatentFileError(f"{path}: the latents hold NaN or infinite values")
    if e.alpha is not None and (e.alpha.ndim != 2 or e.alpha.dtype != np.uint8):
        raise LatentFileError(f"{path}: bad alpha {e.alpha.dtype} {e.alpha.shape} (expected uint8 (H, W))")
    return e


MAX_CHANNELS = 1024  # latent channels a latent PNG may declare (the released variants have 4 to 128)
MAX_MAGNITUDE = 1000.0  # |latents| a latent PNG may declare (the released variants: 3)


def _number(path: Path, meta: dict[str, Any], key: str, low: float, high: float, integer: bool = False,
            low_open: bool = False) -> Any:
    """meta[key] range-checked (LatentFileError naming the field): `low` <= value <= `high` (`low` < with
    low_open), an int when `integer`."""
    v = meta.get(key)
    kinds = (int,) if integer else (int, float)
    ok = isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v) and v <= high and (
        v > low if low_open else v >= low)
    if not ok:
        what = "an integer" if integer else "a number"
        bound = f"{'>' if low_open else '>='} {low:g} and <= {high:g}"
        raise LatentFileError(f"{path}: bad {key} {v!r} in the latent PNG's metadata (expected {what} {bound})")
    return int(v) if integer else float(v)


def _load_safetensors(path: Path) -> EncodedImage:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            keys = set(f.keys())
            if "latents" not in keys:
                raise LatentFileError(f"{path}: no 'latents' tensor (holds {sorted(keys)[:5]}); is it a weights "
                                      "file?")
            latents = f.get_tensor("latents")
            alpha = f.get_tensor("alpha").numpy() if "alpha" in keys else None
    except LatentFileError:
        raise
    except Exception as e:  # not safetensors, truncated, ...
        raise LatentFileError(f"{path}: not a latent file ({first_line(e, 150)})") from None
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "format":
            continue
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    if latents.dtype not in FLOAT_DTYPES or latents.dim() not in (3, 4):
        raise LatentFileError(f"{path}: 'latents' is {latents.dtype} {tuple(latents.shape)}, expected float "
                              "(C, h, w) or (B, C, h, w)")
    return EncodedImage(latents, None, alpha, False, meta)


def _load_png(path: Path, latent_channels: int | None) -> EncodedImage:
    try:
        with Image.open(path) as im:
            im.load()
            text = dict(getattr(im, "text", {}) or {})
            image = im.copy()
    except Exception as e:
        raise LatentFileError(f"{path}: cannot read the PNG ({first_line(e, 150)})") from None
    if "tinyae" not in text:  # the original project's latent PNG, or an ordinary image
        if image.mode != "RGBA":
            raise LatentFileError(f"{path}: a {image.mode} PNG without tinyae latent metadata (an ordinary image, "
                                  "not a latent PNG)")
        if latent_channels is None:
            raise LatentFileError(f"{path}: an RGBA PNG without tinyae latent metadata; read as the original "
                                  "project's latent PNG it needs the channel count (load_latents(path, "
                                  "latent_channels=C); the CLI takes the decoding model's)")
        meta: Any = {"layout": STACK, "latent_channels": latent_channels, "magnitude": LATENT_MAGNITUDE,
                     "shift": LATENT_SHIFT}
    else:
        try:
            meta = json.loads(text["tinyae"])
        except ValueError as e:
            raise LatentFileError(f"{path}: damaged latent PNG (metadata: {first_line(e)})") from None
        if not isinstance(meta, dict):
            raise LatentFileError(f"{path}: damaged latent PNG (metadata: not a JSON object)")
    channels = _number(path, meta, "latent_channels", 1, MAX_CHANNELS, integer=True)
    magnitude = _number(path, meta, "magnitude", 0, MAX_MAGNITUDE, low_open=True)
    shift = _number(path, meta, "shift", 0, 1)
    layout = meta.get("layout", GRID)  # tinyae's files from before the original's layout: the grid
    if layout not in (STACK, GRID):
        raise LatentFileError(f"{path}: bad layout {layout!r} in the latent PNG's metadata (expected {STACK!r} or "
                              f"{GRID!r})")
    try:
        latents = png_to_latents(image, channels, magnitude, shift, layout)
        alpha = None
        if "tinyae.alpha" in text:
            with Image.open(io.BytesIO(base64.b64decode(text["tinyae.alpha"]))) as a:
                alpha = np.asarray(a.convert("L")).copy()
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise LatentFileError(f"{path}: damaged latent PNG ({type(e).__name__}: {e})") from None
    meta.pop("format", None)
    return EncodedImage(latents, None, alpha, False, meta)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a latent file without reading its tensors ({} for a file without any)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            png = f.read(8) == b"\x89PNG\r\n\x1a\n"
        if png:
            with Image.open(path) as im:
                meta = json.loads(getattr(im, "text", {}).get("tinyae", "{}"))
            return meta if isinstance(meta, dict) else {}
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: _json_or_text(v) for k, v in (f.metadata() or {}).items() if k != "format"}
    except Exception:
        return {}


def _json_or_text(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v
