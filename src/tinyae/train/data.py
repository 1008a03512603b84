"""Training images: recursive folders read with tinyae's image reader, random crops, flips, colour augmentation.

Sampling is stateless: sample number g of the run (counted over all ranks) is image `perm_e[g % N]` of epoch
e = g // N, where perm_e is a permutation seeded by (seed, e), and its crop, flip and colour change come from a
generator seeded by (seed, g). So the data position is one integer (`samples_seen`), a resume continues exactly,
and with R ranks rank r reads samples start + r*B ... start + (r+1)*B - 1 of each step: disjoint shards, for any R.

Crop policies (`TrainConfig.crop_policy`):
- "crop": a square crop side x side at the image's own resolution (images smaller than the crop: their largest
  centre-line square, upscaled);
- "buckets": aspect-ratio buckets. Each image goes to the bucket whose aspect ratio (w/h, one of ASPECTS) is
  nearest its own; a bucket's shape has about side^2 pixels (sides multiples of the model's scale factor); the
  image is resized to cover that shape and randomly cropped to it (a few percent trimmed). An epoch groups the
  shuffled images into chunks of B images of one bucket (a bucket's last chunk is filled with its first images
  again) in a shuffled chunk order, so every rank's batch is one bucket, for any number of ranks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..images import IMAGE_SUFFIXES, to_source

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, index) pairs over generator seeds
CROP_POLICIES = ("crop", "buckets")
WHOLE_MAX_PIXELS = 2 ** 21  # --teacher-latents whole: larger images are encoded crop by crop (memory)
ASPECTS = (1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 1.0, 4 / 3, 3 / 2, 2.0, 3.0, 4.0)  # bucket aspect ratios, w / h


def list_images(folders: Sequence[str | Path], what: str = "--data") -> list[Path]:
    """Every image file under the folders (recursive, sorted). ValueError for a missing or empty folder."""
    found: list[Path] = []
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            raise ValueError(f"{what} {folder}: not a folder")
        found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ValueError(f"{what} {' '.join(map(str, folders))}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def seeded(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integers (stable across runs and machines)."""
    s = 0
    for k in keys:
        s = (s * _MIX + int(k) + 1) % (2 ** 63)
    return torch.Generator().manual_seed(s)


def read_rgb(path: Path) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] (grayscale as gray RGB, alpha dropped, 16-bit kept)."""
    rgb = to_source(path).rgb
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


class ImageData:
    """Random training crops from image folders (`crop_policy`: "crop" or "buckets", see the module docstring;
    `batch_size`: the per-rank batch, which bucket chunks are made of). `latents_for(path)` (precomputed teacher
    latents) makes crops land on the latent grid and turns flips and colour changes off (they would not match the
    stored latents); it needs the "crop" policy (resized images would not match either). `encode`
    (`--teacher-latents whole`: the teacher, (B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f)) encodes each image and
    its mirror image once, whole, and hands out crops on the latent grid with their window of those latents."""

    def __init__(self, folders: Sequence[str], *, seed: int, flip: float, color_aug: float, multiple: int = 8,
                 latents_for: Any = None, cache_mb: int = 4096, crop_policy: str = "crop", batch_size: int = 1,
                 encode: Callable[[torch.Tensor], torch.Tensor] | None = None, hue: float = 0.0,
                 tint: float = 0.0):
        if encode is not None and (latents_for or crop_policy != "crop"):
            raise ValueError("--teacher-latents whole needs an image teacher and --crop-policy crop")
        if crop_policy not in CROP_POLICIES:
            raise ValueError(f"--crop-policy must be one of {', '.join(CROP_POLICIES)}, got {crop_policy!r}")
        if crop_policy == "buckets" and latents_for:
            raise ValueError("--crop-policy buckets resizes the images, which precomputed latents (latents:DIR) "
                             "cannot follow; use --crop-policy crop")
        self.files = list_images(folders)
        self.seed, self.multiple, self.latents_for, self.encode, self.hue = seed, multiple, latents_for, encode, hue
        self.policy, self.batch_size = crop_policy, batch_size
        self.flip, self.color_aug = (0.0, 0.0) if latents_for else (flip, color_aug)
        self.tint = 0.0 if latents_for else tint
        self._cache: dict[Path, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._cache_bytes, self._cache_limit = 0, cache_mb * 2 ** 20
        self.buckets: list[int] = []
        self._layout: tuple[int, list[int]] | None = None
        if crop_policy == "buckets":
            self.buckets = [nearest_aspect(*image_size(p)) for p in self.files]
            self.epoch_length = batch_size * sum(-(-self.buckets.count(b) // batch_size) for b in set(self.buckets))

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
        if path in self._cache:
            return self._cache[path]
        img = read_rgb(path)
        lat = self.latents_for(path) if self.latents_for else None
        h, w = img.shape[-2:]
        f = self.multiple
        if self.encode is not None and min(h, w) >= f and h * w <= WHOLE_MAX_PIXELS:
            whole = img[None, :, :h // f * f, :w // f * f].mul(2).sub(1)
            lat = torch.stack([self.encode(whole)[0]] + ([self.encode(whole.flip(-1))[0]] if self.flip > 0 else []))
        item = (img, lat)
        size = item[0].numel() * 4 + (item[1].numel() * 4 if item[1] is not None else 0)
        if self._cache_bytes + size <= self._cache_limit:
            self._cache[path] = item
            self._cache_bytes += size
        return item

    def image_index(self, g: int) -> int:
        if self.policy == "buckets":
            e, pos = divmod(g, self.epoch_length)
            return self._epoch_layout(e)[pos]
        n = len(self.files)
        perm = torch.randperm(n, generator=seeded(self.seed, g // n, 1))
        return int(perm[g % n])

    def _epoch_layout(self, e: int) -> list[int]:
        """Epoch e of the bucket policy: image indices, in chunks of batch_size images of one bucket."""
        if self._layout is None or self._layout[0] != e:
            perm = torch.randperm(len(self.files), generator=seeded(self.seed, e, 1)).tolist()
            chunks = []
            for b in sorted(set(self.buckets)):
                members = [i for i in perm if self.buckets[i] == b]
                k = -(-len(members) // self.batch_size)
                filled = (members * -(-k * self.batch_size // len(members)))[:k * self.batch_size]
                chunks += [filled[j * self.batch_size:(j + 1) * self.batch_size] for j in range(k)]
            order = torch.randperm(len(chunks), generator=seeded(self.seed, e, 4)).tolist()
            self._layout = (e, [i for c in order for i in chunks[c]])
        return self._layout[1]

    def shape(self, index: int, side: int) -> tuple[int, int]:
        """(height, width) of image `index`'s samples at crop side `side`."""
        if self.policy == "buckets":
            return bucket_shape(ASPECTS[self.buckets[index]], side, self.multiple)
        return side, side

    def sample(self, g: int, crop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample number g: a (3, h, w) image in [-1, 1] ((crop, crop), or its bucket's shape) and its
        (C, h/f, w/f) latents (or None: the trainer's teacher encodes the batch)."""
        x, z = self._sample(g, crop)
        if z is None and self.encode is not None:
            z = self.encode(x[None])[0]
        return x, z

    def _sample(self, g: int, crop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        index = self.image_index(g)
        path = self.files[index]
        img, lat = self._load(path)
        gen = seeded(self.seed, g, 2)
        if self.encode is not None:
            return self._whole_sample(img, lat, crop, gen, g)
        h, w = img.shape[-2:]
        if lat is not None:
            f = self.multiple
            if h < crop or w < crop:
                raise ValueError(f"{path}: {w}x{h} is smaller than the {crop} px crop (precomputed latents cannot be "
                                 "resized)")
            y0 = f * int(torch.randint(0, (h - crop) // f + 1, (1,), generator=gen))
            x0 = f * int(torch.randint(0, (w - crop) // f + 1, (1,), generator=gen))
            z = lat[:, y0 // f:(y0 + crop) // f, x0 // f:(x0 + crop) // f]
            if z.shape[-2:] != (crop // f, crop // f):
                raise ValueError(f"{path}: its latents {tuple(lat.shape)} do not cover the image {w}x{h}")
            return img[:, y0:y0 + crop, x0:x0 + crop].mul(2).sub(1), z
        th, tw = self.shape(index, crop)
        x = fit_crop(img, th, tw, gen, cover=self.policy == "buckets")
        u = torch.rand(2, generator=gen)
        if u[0] < self.flip:
            x = x.flip(-1)
        x = self._tinted(x, g)
        if u[1] < self.color_aug:
            x = color_change(x, gen, self.hue)
        return x.mul(2).sub(1), None

    def _tinted(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """`tint`: a gray crop (all channels equal) of sample g given a random smooth colour (see `tint`) with
        probability self.tint; other crops unchanged. Its own generator: the other draws stay as without it."""
        if self.tint <= 0 or not (torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])):
            return x
        gen = seeded(self.seed, g, 3)
        return tint(x, gen) if float(torch.rand(1, generator=gen)) < self.tint else x

    def _whole_sample(self, img: torch.Tensor, lat: torch.Tensor | None, crop: int, gen: torch.Generator, g: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """`--teacher-latents whole`: a crop on the latent grid of the image (flipped: of the flipped image) and the
        same window of the whole image's teacher latents; a colour-changed or tinted crop, or one of an image too
        large (WHOLE_MAX_PIXELS) or too small for whole-image latents, is encoded by itself."""
        f = self.multiple
        h, w = img.shape[-2:]
        fits = lat is not None and h >= crop and w >= crop
        if fits:
            y0 = f * int(torch.randint(0, (h // f * f - crop) // f + 1, (1,), generator=gen))
            x0 = f * int(torch.randint(0, (w // f * f - crop) // f + 1, (1,), generator=gen))
        else:
            x = fit_crop(img, crop, crop, gen, cover=False)
        u = torch.rand(2, generator=gen)
        flip = bool(u[0] < self.flip)
        if fits:
            src = img[:, :h // f * f, :w // f * f]
            x = (src.flip(-1) if flip else src)[:, y0:y0 + crop, x0:x0 + crop]
        elif flip:
            x = x.flip(-1)
        tinted = self._tinted(x, g)
        plain = tinted is x and not u[1] < self.color_aug
        x = color_change(tinted, gen, self.hue) if u[1] < self.color_aug else tinted
        if fits and plain:
            return x.mul(2).sub(1), lat[int(flip)][:, y0 // f:(y0 + crop) // f, x0 // f:(x0 + crop) // f]
        return x.mul(2).sub(1), None  # to be encoded by itself (batch: together with the batch's others)

    def batch(self, start: int, size: int, crop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Samples start .. start+size-1 stacked: images (B, 3, h, w) in [-1, 1], latents or None. With buckets,
        a batch is one bucket when start is a multiple of batch_size and size is batch_size (as the trainer reads)."""
        items = [self._sample(g, crop) for g in range(start, start + size)]
        x = torch.stack([i[0] for i in items])
        if self.encode is not None:  # whole-image latents; the crops that need their own, encoded together
            todo = [k for k, i in enumerate(items) if i[1] is None]
            if todo:
                for k, zk in zip(todo, self.encode(x[todo])):
                    items[k] = (items[k][0], zk)
        z = torch.stack([i[1] for i in items]) if items[0][1] is not None else None
        return x, z


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file as tinyae reads it (EXIF orientation applied), from its header."""
    from ..images import ImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                w, h = h, w
    except Exception as e:
        raise ImageError(f"{path}: not an image ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
                         ) from None
    return h, w


def nearest_aspect(h: int, w: int) -> int:
    """Index in ASPECTS of the aspect ratio (w / h) nearest the image's, in log scale."""
    r = math.log(w / h)
    return min(range(len(ASPECTS)), key=lambda i: abs(math.log(ASPECTS[i]) - r))


def bucket_shape(aspect: float, side: int, multiple: int) -> tuple[int, int]:
    """(height, width) of about side^2 pixels with w / h about `aspect`, sides multiples of `multiple`."""
    w = max(multiple, round(side * math.sqrt(aspect) / multiple) * multiple)
    h = max(multiple, round(side / math.sqrt(aspect) / multiple) * multiple)
    return h, w


def fit_crop(img: torch.Tensor, th: int, tw: int, gen: torch.Generator, cover: bool) -> torch.Tensor:
    """A random (3, th, tw) crop of a (3, H, W) image in [0, 1]. The image is scaled by s (cover: so that it
    just covers th x tw; else 1, or up just enough when it is smaller than th x tw) and cropped; the crop is cut
    from the original (a region of th/s x tw/s) and only that is resized (bicubic, antialiased), so a tiny or a
    very wide image never becomes a large one."""
    h, w = img.shape[-2:]
    s = max(th / h, tw / w)
    if not cover:
        s = max(1.0, s)
    rh, rw = min(h, max(1, round(th / s))), min(w, max(1, round(tw / s)))
    y0 = int(torch.randint(0, h - rh + 1, (1,), generator=gen))
    x0 = int(torch.randint(0, w - rw + 1, (1,), generator=gen))
    x = img[:, y0:y0 + rh, x0:x0 + rw]
    if (rh, rw) != (th, tw):
        x = F.interpolate(x[None], size=(th, tw), mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)
    return x


def color_change(x: torch.Tensor, gen: torch.Generator, hue: float = 0.0) -> torch.Tensor:
    """A light random colour change of a (3, H, W) image in [0, 1]: saturation x0.6-1.4, per-channel gain
    x0.9-1.1, brightness +-0.05; with `hue` > 0 (degrees) first a hue rotation by up to +-hue (the chroma of
    YIQ rotated, luma kept); clamped to [0, 1]."""
    r = torch.rand(5, generator=gen)
    if hue > 0:
        a = math.radians(hue) * (2 * float(torch.rand(1, generator=gen)) - 1)
        x = torch.einsum("ij,jhw->ihw", _hue_rotation(a), x)
    gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    sat = 0.6 + 0.8 * r[0]
    gain = (0.9 + 0.2 * r[1:4]).view(3, 1, 1)
    return ((gray + (x - gray) * sat) * gain + (r[4] - 0.5) * 0.1).clamp(0, 1)


def tint(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A gray (3, H, W) image in [0, 1] given a random smooth colour: its luma kept, the chroma (YIQ's I and Q)
    a random constant plus a random field on a coarse grid (2-6 cells a side), bicubic upsampled, scaled by
    4 Y (1 - Y) (as in photos: little colour near black and white); I, Q mostly within +-0.3; clamped to [0, 1].
    For training sets poor in colour: the teacher encodes the tinted crop, so the target stays exact."""
    h, w = x.shape[-2:]
    cells = int(torch.randint(2, 7, (1,), generator=gen))
    r = torch.rand(3, generator=gen)
    field = torch.randn(1, 2, cells, cells, generator=gen) * (0.05 + 0.15 * r[0])
    field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=False)[0]
    chroma = (field + (r[1:].view(2, 1, 1) - 0.5) * 0.3) * (4 * x[:1] * (1 - x[:1]))
    return torch.einsum("ij,jhw->ihw", _YIQ_INV, torch.cat([x[:1], chroma])).clamp(0, 1)


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]])
_YIQ_INV = torch.linalg.inv(_YIQ)


def _hue_rotation(a: float) -> torch.Tensor:
    """RGB -> RGB: to YIQ, rotate (I, Q) by a radians, back."""
    c, s = math.cos(a), math.sin(a)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return _YIQ_INV @ rot @ _YIQ


def val_images(folder: str, size: int, multiple: int, what: str = "--val"
               ) -> list[tuple[str, Path, torch.Tensor, tuple[int, int]]]:
    """(name, path, (1, 3, h, w) in [-1, 1], (top, left)) per validation image: the centre `size` x `size` crop
    (smaller images: their largest centre crop), sides and offsets multiples of `multiple`."""
    out = []
    for path in list_images([folder], what):
        img = read_rgb(path)
        h, w = img.shape[-2:]
        ch, cw = (min(size, h) // multiple * multiple, min(size, w) // multiple * multiple)
        if ch == 0 or cw == 0:
            raise ValueError(f"{what} {path}: {w}x{h} is smaller than the model's {multiple} px scale factor")
        y0, x0 = (h - ch) // 2 // multiple * multiple, (w - cw) // 2 // multiple * multiple
        out.append((path.name, path, img[None, :, y0:y0 + ch, x0:x0 + cw].mul(2).sub(1), (y0, x0)))
    return out
