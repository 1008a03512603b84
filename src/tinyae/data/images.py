"""Images in, latents out, and back: any size and kind of image through a tiny autoencoder.

`encode_images(model, images)` accepts PIL images, numpy arrays or tensors of any size and kind and returns one
`EncodedImage` per image; `decode_latents(model, latents)` turns latents (or `EncodedImage`s, or what
`tinyae.load_latents` read) back into PIL images or numpy arrays, in the source's size and kind.

What happens to each kind of image (documented in docs/cli.md):
- sizes that are not multiples of the model's scale factor (8; 32 for taesana) are padded by reflection on the
  bottom and right, and the decoded image is cropped back to the source size;
- grayscale is encoded as gray RGB and decoded back to grayscale (luma, ITU-R 601-2 as Pillow's "L");
- alpha (RGBA, LA, palette transparency) is kept aside, untouched by the model, and put back on decode; RGBA
  models (4 image channels, taeqi2_1) encode and decode it instead (straight alpha; sources without alpha: 1);
- 16-bit images (Pillow mode "I;16"/"I", and 16-bit RGB/RGBA PNGs, which Pillow reduces to 8 bits and pypng
  reads) are read at full precision; decoded images are 8-bit;
- the EXIF orientation of a file is applied when it is read (`read_image`).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class ImageError(ValueError):
    """An input that is not a usable image: names the input and the problem."""


@dataclass
class SourceImage:
    """An image split into what the model sees and what is kept aside.

    `rgb`: float32 (H, W, 3) in [0, 1]; `alpha`: uint8 (H, W) or None; `grayscale`: the source had no colour.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    grayscale: bool = False

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


@dataclass
class EncodedImage:
    """One encoded image: raw latents plus what decoding needs to give the source's size and kind back.

    `latents`: float32 (C, h, w) raw latents on the CPU (of the padded image: h = ceil(H / f), w = ceil(W / f));
    `size`: source (width, height) in pixels, or None when unknown (then the decoded image is h*f x w*f);
    `alpha`: the source's uint8 (H, W) alpha, or None; `grayscale`: decode to grayscale;
    `metadata`: free-form strings-to-JSON values (variant, source file, ...) stored with the latents.
    """

    latents: torch.Tensor
    size: tuple[int, int] | None = None
    alpha: np.ndarray | None = None
    grayscale: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- reading
def read_image(path: str | os.PathLike | bytes, max_pixels: int | None = None, name: str | None = None
               ) -> Image.Image:
    """Open an image file, or an encoded image held in `bytes` (named `name` in errors), fully (EXIF orientation
    applied). Raises ImageError for a missing or non-image file, or one of more than `max_pixels` pixels (checked
    on the header, before the pixels are decoded)."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        source: Any = io.BytesIO(path)
        path = Path(name or "<bytes>")
    else:
        path = source = Path(path)
        if not path.exists():
            raise ImageError(f"{path}: no such file")
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, expected an image file")
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # our own limit applies: not Pillow's warning as well
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                check_pixels(path, im.size, max_pixels)
                im.load()
                return ImageOps.exif_transpose(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (Pillow cannot identify it)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:  # truncated or corrupt data
        lines = str(e).strip().splitlines()
        raise ImageError(f"{path}: cannot read the image ({lines[0][:200] if lines else type(e).__name__})") \
            from None


def check_pixels(path: str | os.PathLike, size: tuple[int, int], max_pixels: int | None) -> None:
    """ImageError when a (width, height) image is above `max_pixels` (None: no limit)."""
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(f"{path}: {w}x{h} = {w * h / 1e6:.1f} Mpixel is above the limit of {max_pixels:,} pixels "
                         "(--max-pixels); use --stream (PNG read or written in row bands, memory flat in image size) "
                         "or raise --max-pixels")


def read_source(path: str | os.PathLike, max_pixels: int | None = None) -> "SourceImage":
    """An image file as a SourceImage at its full precision (16-bit colour PNGs through pypng)."""
    im = read_image(path, max_pixels)
    if _is_16bit_colour_png(path):
        import png

        try:
            w, h, rows, info = png.Reader(filename=str(path)).asDirect()
            a = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(h, w, info["planes"])
        except (png.Error, ValueError) as e:
            raise ImageError(f"{path}: cannot read the 16-bit PNG ({e})") from None
        s = _from_array(a, str(path))
        if im.size != (w, h):  # EXIF orientation applied by read_image: same for the 16-bit pixels
            raise ImageError(f"{path}: 16-bit PNGs with an EXIF rotation are not supported")
        return s
    return _from_pil(im)


def _is_16bit_colour_png(path: str | os.PathLike) -> bool:
    """A PNG whose IHDR says bit depth 16, colour type RGB (2) or RGBA (6): what Pillow reduces to 8 bits."""
    with open(path, "rb") as f:
        head = f.read(26)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6)


def _from_pil(im: Image.Image) -> SourceImage:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "PA"):
        im = im.convert("RGBA" if mode == "PA" else "RGB")
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float32)
        top = 65535.0 if mode != "I" or a.max(initial=0) > 255 else 255.0
        return SourceImage(np.repeat(np.clip(a / top, 0, 1)[..., None], 3, axis=2), None, True)
    if mode == "F":
        return _from_array(np.asarray(im, dtype=np.float32), "image")
    if mode in ("L", "LA", "RGB", "RGBA"):
        return _from_array(np.asarray(im), "image")
    raise ImageError(f"unsupported image mode {mode!r}")


def _from_array(a: np.ndarray, what: str) -> SourceImage:
    """HWC or HW array: uint8 (0..255), uint16 (0..65535) or float (0..1, clipped)."""
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"{what}: expected an (H, W), (H, W, 1|2|3|4) array, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"{what}: empty image of shape {a.shape}")
    if a.dtype == np.uint8:
        f = a.astype(np.float32) / 255
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / 65535
    elif np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32)
        if not np.isfinite(f).all():
            raise ImageError(f"{what}: holds NaN or infinite values")
        f = np.clip(f, 0, 1)
    else:
        raise ImageError(f"{what}: unsupported dtype {a.dtype} (use uint8, uint16 or float in [0, 1])")
    colour = f[..., :3] if a.shape[2] >= 3 else np.repeat(f[..., :1], 3, axis=2)
    alpha = f[..., -1] if a.shape[2] in (2, 4) else None
    alpha8 = None if alpha is None else np.round(alpha * 255).astype(np.uint8)
    return SourceImage(np.ascontiguousarray(colour), alpha8, a.shape[2] <= 2)


def to_source(image: Any, what: str = "image") -> SourceImage:
    """A PIL image, a path, an HWC/HW numpy array, or a (3, H, W) tensor in [-1, 1] -> SourceImage."""
    if isinstance(image, SourceImage):
        return image
    if isinstance(image, (str, os.PathLike)):
        return read_source(image)
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_array(image, what)
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ImageError(f"{what}: expected a (3, H, W) or (1, H, W) tensor, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ImageError(f"{what}: tensors must be floating point in [-1, 1], got {t.dtype}")
        a = ((t.float().cpu() + 1) / 2).permute(1, 2, 0).numpy()
        return _from_array(a, what)
    raise ImageError(f"{what}: unsupported type {type(image).__name__} (use a PIL image, a numpy array, a tensor "
                     "or a path)")


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


# ---------------------------------------------------------------------------------------------- model helpers
def scale_factor_of(model: Any) -> int:
    """Image pixels per latent pixel (8, or 32 for taesana) of a model or backend object."""
    for obj in (model, getattr(model, "config", None)):
        f = getattr(obj, "spatial_scale_factor", None)
        if isinstance(f, int):
            return f
    return 8


def _device_of(model: Any) -> torch.device:
    try:
        return torch.device(model.device)
    except (AttributeError, TypeError, RuntimeError):
        return torch.device("cpu")


def pad_to_multiple(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """Pad an (H, W, C) array on the bottom and right by reflection to multiples of `multiple`."""
    h, w = rgb.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return rgb
    return np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")


def _batches(keys: Sequence[Any], batch_size: int) -> Iterable[list[int]]:
    """Indices grouped by equal key (in first-seen order), chunked to `batch_size`."""
    groups: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            yield idx[s:s + batch_size]


# ---------------------------------------------------------------------------------------------- encode / decode
def encode_images(model: Any, images: Any, *, batch_size: int = 8) -> list[EncodedImage]:
    """Encode images of any size and kind; returns one EncodedImage per image (latents float32 on the CPU).

    `images`: one image or a list of them: PIL images, paths, numpy arrays (H, W[, C]) uint8 / uint16 / float in
    [0, 1], (C, H, W) float tensors in [-1, 1], or a batch (B, 3, H, W) tensor / (B, H, W, C) array.
    `model`: an AutoencoderTiny, or a backend object with the same `encode(x).latents` API.
    Images of equal size are encoded together, `batch_size` at a time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = _as_list(images)
    sources = [to_source(im, f"image {i}") for i, im in enumerate(items)]
    f, device = scale_factor_of(model), _device_of(model)
    rgba = _image_channels(model, "in_channels") == 4  # RGBA models encode alpha (RGB sources: alpha 1)
    padded = [pad_to_multiple(_with_alpha(s) if rgba else s.rgb, f) for s in sources]
    out: list[EncodedImage | None] = [None] * len(sources)
    with torch.inference_mode():
        for idx in _batches([p.shape for p in padded], batch_size):
            x = torch.from_numpy(np.stack([padded[i] for i in idx])).permute(0, 3, 1, 2).to(device)
            z = model.encode(x * 2 - 1).latents.float().cpu()
            for j, i in enumerate(idx):
                s = sources[i]
                out[i] = EncodedImage(z[j].clone(), s.size, None if rgba else s.alpha, s.grayscale)
    return out  # type: ignore[return-value]


def _image_channels(model: Any, side: str) -> int:
    """3 (RGB) or 4 (RGBA: taeqi2_1) image channels of a model or backend (3 when it does not say)."""
    config = getattr(model, "config", None)
    try:
        return int(config[side]) if config is not None and side in config else 3
    except (TypeError, KeyError):
        return 3


def _with_alpha(s: SourceImage) -> np.ndarray:
    """(H, W, 4) float32 in [0, 1]: the source's straight alpha, or 1 for sources without one."""
    alpha = np.ones(s.rgb.shape[:2], np.float32) if s.alpha is None else s.alpha.astype(np.float32) / 255
    return np.concatenate([s.rgb, alpha[..., None]], axis=2)


def _as_encoded(item: Any, what: str) -> list[EncodedImage]:
    if isinstance(item, EncodedImage):
        z = item.latents
        if z.dim() == 4:
            return [EncodedImage(zz, item.size, item.alpha, item.grayscale, item.metadata) for zz in z]
        return [item]
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if isinstance(item, torch.Tensor):
        if item.dim() == 3:
            return [EncodedImage(item)]
        if item.dim() == 4:
            return [EncodedImage(zz) for zz in item]
        raise ValueError(f"{what}: latents must be (C, h, w) or (B, C, h, w), got shape {tuple(item.shape)}")
    raise ValueError(f"{what}: unsupported type {type(item).__name__} (use a tensor or an EncodedImage)")


def check_channels(model: Any, latents: torch.Tensor, what: str = "latents", made_by: str | None = None) -> None:
    """ValueError when the latents' channels differ from the model's latent_channels (another variant's file)."""
    config = getattr(model, "config", None)
    want = getattr(config, "latent_channels", None) if config is not None else None
    if want is not None and latents.shape[-3] != want:
        by = f" (made by {made_by})" if made_by else ""
        raise ValueError(f"{what}: latents have {latents.shape[-3]} channels{by} but the model expects {want}; "
                         "decode them with the variant that encoded them (--model)")


def decode_latents(model: Any, latents: Any, *, output: str = "pil", batch_size: int = 8) -> list[Any]:
    """Decode latents to images in the source's size and kind.

    `latents`: a (C, h, w) or (B, C, h, w) tensor/array of raw latents, an EncodedImage, or a list of these.
    Returns a list of PIL images (`output="pil"`; mode L, LA, RGB or RGBA) or uint8 (H, W, C) arrays
    (`output="numpy"`; C = 1, 2, 3 or 4). Raises ValueError when the latents do not fit the model.
    """
    if output not in ("pil", "numpy"):
        raise ValueError(f"output must be 'pil' or 'numpy', got {output!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [e for i, item in enumerate(_as_list(latents)) for e in _as_encoded(item, f"latents {i}")]
    f, device = scale_factor_of(model), _device_of(model)
    for i, e in enumerate(encoded):
        check_channels(model, e.latents, f"latents {i}", e.metadata.get("variant"))
    results: list[Any] = [None] * len(encoded)
    with torch.inference_mode():
        for idx in _batches([tuple(e.latents.shape) for e in encoded], batch_size):
            z = torch.stack([encoded[i].latents for i in idx]).float().to(device)
            y = model.decode(z).sample.float().clamp(-1, 1).add(1).mul(127.5).round().byte().cpu()
            for j, i in enumerate(idx):
                results[i] = _finish(y[j].permute(1, 2, 0).numpy(), encoded[i], f, output)
    return results


def _finish(rgb: np.ndarray, e: EncodedImage, f: int, output: str) -> Any:
    """Crop to the source size, restore grayscale and alpha."""
    w, h = e.size if e.size else (rgb.shape[1], rgb.shape[0])
    if w > rgb.shape[1] or h > rgb.shape[0] or w <= rgb.shape[1] - f or h <= rgb.shape[0] - f:
        raise ValueError(f"recorded source size {w}x{h} does not fit latents of {e.latents.shape[-1]}x"
                         f"{e.latents.shape[-2]} (scale factor {f})")
    model_alpha = rgb[:h, :w, 3] if rgb.shape[2] == 4 else None  # an RGBA model decodes alpha itself
    im = Image.fromarray(np.ascontiguousarray(rgb[:h, :w, :3]), "RGB")
    if e.grayscale:
        im = im.convert("L")
    if model_alpha is not None:
        im.putalpha(Image.fromarray(np.ascontiguousarray(model_alpha), "L"))
    elif e.alpha is not None:
        if e.alpha.shape != (h, w):
            raise ValueError(f"alpha of shape {e.alpha.shape} does not fit the image {w}x{h}")
        im.putalpha(Image.fromarray(np.ascontiguousarray(e.alpha), "L"))
    if output == "pil":
        return im
    a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a
