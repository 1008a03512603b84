"""Resize and crop policies of diffusion training, and horizontal-flip variants, with what was done recorded.

Every policy resizes (bicubic, antialiased, in float) so the image covers the target, then crops to it:
- "center": a size x size square from the middle;
- "random": a size x size square at an offset drawn from a generator seeded by (seed, key), so the crop of an image
  is the same on every run and machine, whatever the order;
- "buckets": the aspect-ratio bucket (width, height, both multiples of the step, area about size²) closest to the
  image's aspect ratio, chosen per image, centre-cropped;
- "none": the image as it is (padded by reflection to the model's scale factor, as `tinyae.encode_images` does).
`flip="both"` adds a horizontally flipped variant of every image (key suffix "#flip"). Each row records the original
size, the resized size and the crop box (left, top, width, height in resized pixels): SDXL's size conditioning.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..images import pad_to_multiple, to_source

CROPS = ("center", "random", "buckets", "none")
FLIPS = ("none", "both")
VERSION = 1  # bump when the pixels a policy produces change


@dataclass(frozen=True)
class Preprocess:
    """What is done to each image before encoding. `size`: target side in pixels (buckets: the side of a square of
    the target area); `buckets`: explicit (width, height) list for crop="buckets" (default: generated)."""

    crop: str = "center"
    size: int = 512
    flip: str = "none"
    seed: int = 0
    buckets: tuple[tuple[int, int], ...] | None = None
    multiple: int = field(default=8)  # the model's scale factor: sides of what is encoded are multiples of it

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.flip not in FLIPS:
            raise ValueError(f"flip must be one of {', '.join(FLIPS)}, got {self.flip!r}")
        if self.crop in ("center", "random") and (self.size < 1 or self.size % self.multiple):
            raise ValueError(f"size {self.size} must be a positive multiple of the model's scale factor "
                             f"{self.multiple}")
        for w, h in self.buckets or ():
            if w % self.multiple or h % self.multiple or w < 1 or h < 1:
                raise ValueError(f"bucket {w}x{h}: sides must be positive multiples of {self.multiple}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["buckets"] = [list(b) for b in self.bucket_list()] if self.crop == "buckets" else None
        if self.crop == "none":
            d["size"] = None
        if self.crop != "random":
            d["seed"] = None
        return {**d, "version": VERSION}

    def fingerprint(self) -> str:
        """A short hash of everything that changes the pixels encoded: equal fingerprints, equal rows."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def bucket_list(self) -> list[tuple[int, int]]:
        if self.buckets:
            return [tuple(b) for b in self.buckets]  # type: ignore[misc]
        step = max(self.multiple, self.size // 8 // self.multiple * self.multiple)
        area, out = self.size * self.size, []
        w = step
        while w <= 2 * self.size:
            h = max(step, round(area / w / step) * step)
            if 0.5 <= w / h <= 2:
                out.append((w, h))
            w += step
        return sorted(set(out))

    # ------------------------------------------------------------------ applying
    def apply(self, image: Any, key: str) -> list[tuple[str, torch.Tensor, dict[str, Any]]]:
        """(key, (3, H, W) float32 in [-1, 1], record) for each variant of one image (PIL or array)."""
        rgb = to_source(image, key).rgb  # (H, W, 3) float32 in [0, 1]; alpha is dropped, gray becomes RGB
        h, w = rgb.shape[:2]
        if self.crop == "none":
            out, (tw, th), (rw, rh), (left, top) = pad_to_multiple(rgb, self.multiple), (w, h), (w, h), (0, 0)
            x = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)
        else:
            tw, th = self._target(w, h)
            s = max(tw / w, th / h)
            rw, rh = max(tw, round(w * s)), max(th, round(h * s))
            left, top = (rw - tw) // 2, (rh - th) // 2
            if self.crop == "random":
                rng = random.Random(f"{self.seed}:{key}")
                left, top = rng.randint(0, rw - tw), rng.randint(0, rh - th)
            if (rw, rh) != (w, h):
                x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
                x = torch.nn.functional.interpolate(x, size=(rh, rw), mode="bicubic", antialias=True,
                                                    align_corners=False).clamp_(0, 1)
                x = x[0, :, top:top + th, left:left + tw]
            else:
                x = torch.from_numpy(rgb[top:top + th, left:left + tw].transpose(2, 0, 1))
        # numpy, not torch: a torch op from a reading thread starts its own OpenMP team, which competes with the
        # encoder's threads for the cores (float32 x * 2 - 1 is exact in both, so the values are the same)
        x = torch.from_numpy(np.ascontiguousarray(x.numpy() * 2 - 1))
        record = {"original_size": [w, h], "resized_size": [rw, rh], "crop": [left, top, tw, th], "flipped": False}
        variants = [(key, x, record)]
        if self.flip == "both":
            variants.append((f"{key}#flip", torch.from_numpy(np.ascontiguousarray(x.numpy()[..., ::-1])),
                             {**record, "flipped": True}))
        return variants

    def _target(self, w: int, h: int) -> tuple[int, int]:
        if self.crop in ("center", "random"):
            return self.size, self.size
        aspect = math.log(w / h)
        return min(self.bucket_list(), key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), b))
