"""Spatial row-band tiling of the video networks: exact (the same values as untiled), read from each layer's
declared `Geometry` (tinyae.video.layers), for both executors (parallel over time and frame streaming).

A band of output rows [a, b) of the whole layer list is traced back layer by layer: a layer with stride s and
halo h (zero-padded, kernel 2h+1) needs input rows [s*a - h, s*(b-1) + h + 1) (start rounded down to a multiple of
s so the stride keeps its phase), an upscale by u needs [a // u, (b-1) // u + 1), clipped to the frame; temporal
and memory layers act per pixel in space, so a band keeps its own temporal state. Run forward on the band's input
rows, each layer's output is cropped to what the next layer needs (`execute.run_parallel(..., crops)`), and the
bands' outputs, stacked, are the untiled output. Only rows are tiled; peak activation memory falls with the band.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .execute import FrameStream, run_parallel
from .layers import geometry


@dataclass(frozen=True)
class Band:
    """One row band: input rows [lo, hi) and, per layer, the slice of its output kept."""

    lo: int
    hi: int
    crops: list[tuple[int, int]]


def row_sizes(layers: nn.Sequential, rows: int) -> list[int]:
    """Rows at each layer's input, and at the end, for `rows` input rows."""
    sizes = [rows]
    for layer in layers:
        g = geometry(layer)
        rows = -(-rows // g.down) * g.up
        sizes.append(rows)
    return sizes


def plan_bands(layers: nn.Sequential, rows: int, band: int) -> list[Band]:
    """Row bands of at most `band` output rows covering the output of `layers` applied to `rows` input rows."""
    if isinstance(band, bool) or not isinstance(band, int) or band < 1:
        raise ValueError(f"band rows must be a positive integer, got {band!r}")
    geoms = [geometry(layer) for layer in layers]
    sizes = row_sizes(layers, rows)
    bands = []
    for a0 in range(0, sizes[-1], band):
        a, b = a0, min(a0 + band, sizes[-1])
        crops: list[tuple[int, int]] = []
        for i in range(len(geoms) - 1, -1, -1):
            g, n = geoms[i], sizes[i]
            if g.up > 1:
                lo, hi = a // g.up, (b - 1) // g.up + 1
                origin = lo * g.up
            else:
                s = g.down
                lo = max(0, (s * a - g.halo) // s * s)
                hi = min(n, s * (b - 1) + g.halo + 1)
                origin = lo // s
            crops.append((a - origin, b - origin))
            a, b = lo, hi
        bands.append(Band(a, b, crops[::-1]))
    return bands


def run_banded(layers: nn.Sequential, x: torch.Tensor, band: int) -> torch.Tensor:
    """`run_parallel(layers, x)` computed in row bands of `band` output rows. x: (N, T, C, H, W)."""
    outs = [run_parallel(layers, x[..., p.lo:p.hi, :], p.crops) for p in plan_bands(layers, x.shape[-2], band)]
    return torch.cat(outs, -2)


class BandedFrameStream:
    """`FrameStream` computed in row bands of `band` output rows: one stream (with its own temporal state) per
    band, planned at the first frame; `push` returns what `FrameStream(layers).push` would."""

    def __init__(self, layers: nn.Sequential, band: int):
        self.layers, self.band = layers, band
        self._streams: list[tuple[Band, FrameStream]] | None = None
        self._rows: int | None = None

    def reset(self) -> None:
        """Forget all state (and the frame height): the next frame is a first frame."""
        self._streams = None

    @property
    def pending(self) -> int:
        return self._streams[0][1].pending if self._streams else 0

    def push(self, frame: torch.Tensor) -> list[torch.Tensor]:
        if self._streams is not None and self._rows != frame.shape[-2]:
            raise ValueError(f"frame height changed from {self._rows} to {frame.shape[-2]} within a video")
        if self._streams is None:
            self._rows = frame.shape[-2]
            self._streams = [(p, FrameStream(self.layers, p.crops))
                             for p in plan_bands(self.layers, self._rows, self.band)]
        outs = [s.push(frame[..., p.lo:p.hi, :]) for p, s in self._streams]
        return [torch.cat(parts, -2) for parts in zip(*outs)]
