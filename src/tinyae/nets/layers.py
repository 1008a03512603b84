"""What each layer kind does to rows, declared once and read by every executor.

A layer's `Geometry` says how its output rows map to its input rows: `up` output rows per input row (nearest
upsample 2, PixelShuffle 2), `down` input rows per output row (stride-2 conv 2, PixelUnshuffle 2), and the input
rows of context it reads `before` and `after` the rows of the output row's own cell. Output row r's cell is input
rows [r*down//up, r*down//up + down - 1]; r reads input rows [cell_lo - before, cell_hi + after] (zero outside the
image). Derivation for a convolution (kernel k, stride s, padding p): output row r reads input rows s*r - p ..
s*r - p + k - 1, its cell is s*r .. s*r + s - 1, so before = p and after = k - 1 - p - (s - 1) = k - p - s; it has
(n + 2p - k) // s + 1 = (n + before - after) // s output rows for n input rows.

Time (video layers, `tinyae.video`): `t_down` input frames per output frame (TPool), `t_up` output frames per input
frame (TGrow). Flags: `pointwise` (element-wise: rows map 1:1 and nothing is read around them), `global_stats`
(needs statistics of the whole image: taef2's GroupNorm branch), `stateful` (also reads its own input at the
previous frame: the video MemBlocks).

Readers: the row-band streaming executor (`tinyae.tiling`) and its fast form (`tinyae.fast_stream`), the strip
planner of `optimize()` (`tinyae.engine.fastnet`), receptive-field computation, and the generated layer lists in
docs/variants.md. To add a layer kind: `@declare(TheModule)` a function returning its Geometry, then give each
executor its kernel (see docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable

import torch.nn as nn


@dataclass(frozen=True)
class Geometry:
    up: int = 1
    down: int = 1
    before: int = 0
    after: int = 0
    t_down: int = 1
    t_up: int = 1
    pointwise: bool = False
    global_stats: bool = False
    stateful: bool = False

    def needed(self, lo: int, hi: int) -> tuple[int, int]:
        """Input rows [lo', hi'] (inclusive, ignoring the image edges) that output rows [lo, hi] read."""
        return lo * self.down // self.up - self.before, hi * self.down // self.up + self.down - 1 + self.after

    def out_rows(self, n: int) -> int:
        """Output rows for n input rows."""
        return (n + self.before - self.after) // self.down * self.up

    @property
    def halo(self) -> int:
        return max(self.before, self.after)


POINTWISE = Geometry(pointwise=True)


def compose(parts: Iterable[Geometry]) -> Geometry:
    """The geometry of layers applied in a row, for stride-1, non-resampling parts (a residual branch)."""
    before = after = 0
    flags = {"global_stats": False, "stateful": False}
    for g in parts:
        if g.up != 1 or g.down != 1:
            raise ValueError("compose: only stride-1 layers without resampling compose by addition")
        before, after = before + g.before, after + g.after
        flags = {k: v or getattr(g, k) for k, v in flags.items()}
    return Geometry(before=before, after=after, pointwise=before == after == 0, **flags)


_DECLARED: dict[type, Callable[[nn.Module], Geometry]] = {}


def declare(*kinds: type) -> Callable[[Callable[[nn.Module], Geometry]], Callable[[nn.Module], Geometry]]:
    """Register the function that gives the Geometry of a layer of these module types."""
    def register(fn: Callable[[nn.Module], Geometry]) -> Callable[[nn.Module], Geometry]:
        for kind in kinds:
            _DECLARED[kind] = fn
        return fn
    return register


def geometry(layer: nn.Module) -> Geometry:
    """The declared Geometry of `layer`; ValueError naming it when its kind is not declared or not supported."""
    for kind in type(layer).__mro__:
        if kind in _DECLARED:
            return _DECLARED[kind](layer)
    raise ValueError(f"no row geometry is declared for the layer {layer} (see tinyae.layers)")


def needed(layers: list[nn.Module], lo: int, hi: int) -> tuple[int, int]:
    """Input rows of the first layer that output rows [lo, hi] of the last one read."""
    for layer in reversed(layers):
        lo, hi = geometry(layer).needed(lo, hi)
    return lo, hi


def out_rows(layers: list[nn.Module], n: int) -> int:
    for layer in layers:
        n = geometry(layer).out_rows(n)
    return n


# ---------------------------------------------------------------------------------------------- declarations
@declare(nn.ReLU, nn.SiLU, nn.Mish, nn.GELU, nn.Identity, nn.Tanh, nn.Sigmoid, nn.LeakyReLU)
def _pointwise(layer: nn.Module) -> Geometry:
    return POINTWISE


@declare(nn.Conv2d)
def _conv(conv: nn.Conv2d) -> Geometry:
    if conv.padding_mode != "zeros" or conv.dilation != (1, 1) or isinstance(conv.padding, str):
        raise ValueError(f"tinyae supports zero-padded, undilated convolutions, not {conv}")
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    g = Geometry(down=s, before=p, after=k - p - s)
    return replace(g, pointwise=True) if (k, s, p) == (1, 1, 0) else g


# Input rows either side of floor(out_row / scale) that an Upsample output row may read.
UPSAMPLE_REACH = {"nearest": 0, "nearest-exact": 0, "bilinear": 1, "bicubic": 2}


def upsample_params(up: nn.Upsample) -> tuple[int, int]:
    """(integer scale, reach in input rows); ValueError when the upsampling is not translation-invariant."""
    sf = up.scale_factor
    sf = sf[0] if isinstance(sf, tuple) else sf
    if up.size is not None or sf is None or float(sf) != int(sf) or up.mode not in UPSAMPLE_REACH or up.align_corners:
        raise ValueError(f"tiling supports Upsample by an integer scale_factor in modes {tuple(UPSAMPLE_REACH)} "
                         f"without align_corners, not {up}")
    return int(sf), UPSAMPLE_REACH[up.mode]


@declare(nn.Upsample)
def _upsample(up: nn.Upsample) -> Geometry:
    scale, reach = upsample_params(up)
    return Geometry(up=scale, before=reach, after=reach)


@declare(nn.PixelShuffle)
def _pixel_shuffle(layer: nn.PixelShuffle) -> Geometry:
    return Geometry(up=layer.upscale_factor)


@declare(nn.PixelUnshuffle)
def _pixel_unshuffle(layer: nn.PixelUnshuffle) -> Geometry:
    return Geometry(down=layer.downscale_factor)
