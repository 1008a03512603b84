"""Training images: recursive folders read with tinyae's image reader, random crops, flips, colour augmentation.

Sampling is stateless: sample number g of the run (counted over all ranks) is image `perm_e[g % N]` of epoch
e = g // N, where perm_e is a permutation seeded by (seed, e), and its crop, flip and colour change come from a
generator seeded by (seed, g). So the data position is one integer (`samples_seen`), a resume continues exactly,
and with R ranks rank r reads samples start + r*B ... start + (r+1)*B - 1 of each step: disjoint shards, for any R.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..images import IMAGE_SUFFIXES, to_source

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, index) pairs over generator seeds


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
    """Random training crops from image folders. `latents_for(path)` (precomputed teacher latents) makes crops
    land on the latent grid and turns flips and colour changes off (they would not match the stored latents)."""

    def __init__(self, folders: Sequence[str], *, seed: int, flip: float, color_aug: float, multiple: int = 8,
                 latents_for: Any = None, cache_mb: int = 4096):
        self.files = list_images(folders)
        self.seed, self.multiple, self.latents_for = seed, multiple, latents_for
        self.flip, self.color_aug = (0.0, 0.0) if latents_for else (flip, color_aug)
        self._cache: dict[Path, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._cache_bytes, self._cache_limit = 0, cache_mb * 2 ** 20

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
        if path in self._cache:
            return self._cache[path]
        item = (read_rgb(path), self.latents_for(path) if self.latents_for else None)
        size = item[0].numel() * 4 + (item[1].numel() * 4 if item[1] is not None else 0)
        if self._cache_bytes + size <= self._cache_limit:
            self._cache[path] = item
            self._cache_bytes += size
        return item

    def image_index(self, g: int) -> int:
        n = len(self.files)
        perm = torch.randperm(n, generator=seeded(self.seed, g // n, 1))
        return int(perm[g % n])

    def sample(self, g: int, crop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample number g: a (3, crop, crop) image in [-1, 1] and its (C, crop/f, crop/f) latents (or None)."""
        path = self.files[self.image_index(g)]
        img, lat = self._load(path)
        gen = seeded(self.seed, g, 2)
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
        if min(h, w) < crop:  # upscale small images so the crop fits
            s = crop / min(h, w)
            img = F.interpolate(img[None], size=(max(crop, round(h * s)), max(crop, round(w * s))), mode="bicubic",
                                antialias=True, align_corners=False)[0].clamp(0, 1)
            h, w = img.shape[-2:]
        y0 = int(torch.randint(0, h - crop + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - crop + 1, (1,), generator=gen))
        x = img[:, y0:y0 + crop, x0:x0 + crop]
        u = torch.rand(2, generator=gen)
        if u[0] < self.flip:
            x = x.flip(-1)
        if u[1] < self.color_aug:
            x = color_change(x, gen)
        return x.mul(2).sub(1), None

    def batch(self, start: int, size: int, crop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Samples start .. start+size-1 stacked: images (B, 3, crop, crop) in [-1, 1], latents or None."""
        items = [self.sample(g, crop) for g in range(start, start + size)]
        x = torch.stack([i[0] for i in items])
        z = torch.stack([i[1] for i in items]) if items[0][1] is not None else None
        return x, z


def color_change(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A light random colour change of a (3, H, W) image in [0, 1]: saturation x0.6-1.4, per-channel gain
    x0.9-1.1, brightness +-0.05; clamped to [0, 1]."""
    r = torch.rand(5, generator=gen)
    gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    sat = 0.6 + 0.8 * r[0]
    gain = (0.9 + 0.2 * r[1:4]).view(3, 1, 1)
    return ((gray + (x - gray) * sat) * gain + (r[4] - 0.5) * 0.1).clamp(0, 1)


def val_images(folder: str, size: int, multiple: int) -> list[tuple[str, Path, torch.Tensor, tuple[int, int]]]:
    """(name, path, (1, 3, h, w) in [-1, 1], (top, left)) per validation image: the centre `size` x `size` crop
    (smaller images: their largest centre crop), sides and offsets multiples of `multiple`."""
    out = []
    for path in list_images([folder], "--val"):
        img = read_rgb(path)
        h, w = img.shape[-2:]
        ch, cw = (min(size, h) // multiple * multiple, min(size, w) // multiple * multiple)
        if ch == 0 or cw == 0:
            raise ValueError(f"--val {path}: {w}x{h} is smaller than the model's {multiple} px scale factor")
        y0, x0 = (h - ch) // 2 // multiple * multiple, (w - cw) // 2 // multiple * multiple
        out.append((path.name, path, img[None, :, y0:y0 + ch, x0:x0 + cw].mul(2).sub(1), (y0, x0)))
    return out
