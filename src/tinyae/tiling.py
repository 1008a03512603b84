"""Exact tiled encode/decode with bounded memory: a row-band streaming executor.

How it works. The encoder and decoder are flat stacks of layers (3x3 convs with stride 1 or 2, 1x1 convs,
activations, Upsample, residual `Block`s, the decoder's Clamp). The image is pushed through that stack in
full-width bands of rows. Every layer keeps only the few input rows that its next output rows still need (two rows
for a 3x3 conv, the skip rows of a Block until its conv branch catches up), zero-pads only at the real top and
bottom of the image, and emits every output row it can. Nothing is recomputed and nothing is guessed: each output
row is computed from exactly the input rows the untiled network uses, so the tiled result equals the untiled one
up to float rounding (max abs difference ~1e-6 in float32), for any band height >= 1 latent row.

Memory is proportional to the image *width* times a few dozen rows, plus one band; it does not grow with the
height. Time is that of the untiled run (no halo is recomputed).

GroupNorm (taef2's `Block.pool`) normalises over the whole image, so it cannot be computed band by band in one
pass. The stack is cut before the first Block that has a GroupNorm; the part before the cut runs streamed and its
output (at the lowest resolution: 1/8 of the image size per side) is kept; then for each GroupNorm in order one
extra streamed pass over that lowest-resolution stage accumulates the per-sample, per-group sum and sum of squares
of the GroupNorm's input (in float64), using the statistics already found for the GroupNorms before it; the final
pass applies them. The extra passes only cover the cheap lowest-resolution blocks.

Options (for `AutoencoderTiny.enable_tiling(**options)` and the streaming functions):
- `band_rows`: latent rows per band (image rows per band = band_rows * spatial scale factor), an integer >= 1.
  Default None: chosen from `band_pixels`.
- `band_pixels`: when `band_rows` is None, the image pixels a band holds, about (default 2**18 = 256 Ki): rows =
  max(1, band_pixels // (image width * scale factor)). A band's largest activation is then about
  band_pixels * 64 channels * 4 bytes = 64 MiB in float32.

Streaming (peak memory independent of the image height): `decode_to_png`, `encode_png`, and the generators
`decode_bands` / `encode_bands` for other progressive formats. PNG is written and read row by row with pypng.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import Block, Clamp

if TYPE_CHECKING:
    from .model import AutoencoderTiny

DEFAULT_BAND_PIXELS = 2 ** 18
OPTIONS = ("band_rows", "band_pixels")
_POINTWISE = (nn.ReLU, nn.SiLU, nn.Mish, nn.GELU, nn.Identity, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, Clamp)
# Input rows either side of floor(out_row / scale) that an Upsample output row may read.
_UPSAMPLE_REACH = {"nearest": 0, "nearest-exact": 0, "bilinear": 1, "bicubic": 2}


# ---------------------------------------------------------------------------------------------- options
def check_options(model: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Validate tiling options; return them normalised. Raises ValueError naming a bad option or layer."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown tiling option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    band_rows = options.get("band_rows")
    band_pixels = options.get("band_pixels", DEFAULT_BAND_PIXELS)
    if band_rows is not None and (isinstance(band_rows, bool) or not isinstance(band_rows, int) or band_rows < 1):
        raise ValueError(f"band_rows must be a positive integer (latent rows per band) or None, got {band_rows!r}")
    if isinstance(band_pixels, bool) or not isinstance(band_pixels, int) or band_pixels < 1:
        raise ValueError(f"band_pixels must be a positive integer (image pixels per band), got {band_pixels!r}")
    for part in ("encoder", "decoder"):
        net = getattr(model, part, None)
        if net is not None:
            for layer in _flat_layers(net):
                _check_layer(layer)
    return {"band_rows": band_rows, "band_pixels": band_pixels}


def _flat_layers(net: nn.Module) -> list[nn.Module]:
    """The layer list that `net.forward` applies in order (the decoder's Clamp first)."""
    layers = [net.clamp] if getattr(net, "clamp", None) is not None else []
    return layers + _flatten(net.layers)


def _flatten(seq: Iterable[nn.Module]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for layer in seq:
        out += _flatten(layer) if isinstance(layer, nn.Sequential) else [layer]
    return out


def _check_layer(layer: nn.Module) -> None:
    if isinstance(layer, Block):
        for sub in _flatten(layer.conv):
            _check_layer(sub)
        return
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" or layer.dilation != (1, 1) or isinstance(layer.padding, str):
            raise ValueError(f"tiling supports zero-padded, undilated convolutions, not {layer}")
        return
    if isinstance(layer, nn.Upsample):
        _upsample_params(layer)
        return
    if not isinstance(layer, _POINTWISE):
        raise ValueError(f"tiling does not support the layer {layer}")


def _upsample_params(up: nn.Upsample) -> tuple[int, int]:
    """(integer scale, reach in input rows); ValueError when the upsampling is not translation-invariant."""
    sf = up.scale_factor
    sf = sf[0] if isinstance(sf, tuple) else sf
    if up.size is not None or sf is None or float(sf) != int(sf) or up.mode not in _UPSAMPLE_REACH or up.align_corners:
        raise ValueError(f"tiling supports Upsample by an integer scale_factor in modes {tuple(_UPSAMPLE_REACH)} "
                         f"without align_corners, not {up}")
    return int(sf), _UPSAMPLE_REACH[up.mode]


# ---------------------------------------------------------------------------------------------- geometry
def _needed(layer: nn.Module, lo: int, hi: int) -> tuple[int, int]:
    """Input rows [lo', hi'] (inclusive, ignoring the image edges) that output rows [lo, hi] of `layer` read."""
    if isinstance(layer, Block):
        for sub in reversed(_flatten(layer.conv)):
            lo, hi = _needed(sub, lo, hi)
        return lo, hi  # the skip and the pool read the same row only
    if isinstance(layer, nn.Conv2d):
        k, s, p = layer.kernel_size[0], layer.stride[0], layer.padding[0]
        return s * lo - p, s * hi - p + k - 1
    if isinstance(layer, nn.Upsample):
        scale, reach = _upsample_params(layer)
        return lo // scale - reach, hi // scale + reach
    return lo, hi


def _out_rows(layer: nn.Module, n: int) -> int:
    """Output rows of `layer` for n input rows."""
    if isinstance(layer, Block):
        for sub in _flatten(layer.conv):
            n = _out_rows(sub, n)
        return n
    if isinstance(layer, nn.Conv2d):
        k, s, p = layer.kernel_size[0], layer.stride[0], layer.padding[0]
        return (n + 2 * p - k) // s + 1
    if isinstance(layer, nn.Upsample):
        return n * _upsample_params(layer)[0]
    return n


@dataclass(frozen=True)
class ReceptiveField:
    """The input box one output pixel depends on, along one axis, in input pixels.

    `before`/`after`: input pixels before the first / after the last input pixel of the output pixel's own cell
    (its cell: the input pixel it lies in when decoding, the `scale` x `scale` input pixels it summarises when
    encoding), maximised over the output pixels. `scale`: output pixels per input pixel (decoder) or input pixels
    per output pixel (encoder). GroupNorm statistics, which cover the whole image, are not counted.
    """

    before: int
    after: int
    scale: int
    upsamples: bool

    @property
    def radius(self) -> int:
        return max(self.before, self.after)


def receptive_field(net: nn.Module) -> ReceptiveField:
    """Receptive field of an Encoder or Decoder, computed from its layer stack (see `ReceptiveField`)."""
    layers = _flat_layers(net)
    n_in = 64 * 2 ** 8  # any size divisible by every scale
    n_out = n_in
    for layer in layers:
        n_out = _out_rows(layer, n_out)
    upsamples = n_out >= n_in
    scale = n_out // n_in if upsamples else n_in // n_out
    before = after = 0
    for row in range(scale if upsamples else 1):
        lo, hi = row, row
        for layer in reversed(layers):
            lo, hi = _needed(layer, lo, hi)
        cell_lo, cell_hi = (row // scale, row // scale) if upsamples else (row * scale, row * scale + scale - 1)
        before, after = max(before, cell_lo - lo), max(after, hi - cell_hi)
    return ReceptiveField(before, after, scale, upsamples)


# ---------------------------------------------------------------------------------------------- streams
# A stream turns consecutive row bands of its input (B, C, rows, W) into consecutive row bands of its output.
# push(x, final) takes the next input rows (or None) and returns every output row it can now compute (or None);
# with final=True the input is complete and it returns all its remaining rows.
Rows = "torch.Tensor | None"


def _cat(buf: torch.Tensor | None, x: torch.Tensor | None) -> torch.Tensor | None:
    if x is None:
        return buf
    return x if buf is None else torch.cat([buf, x], dim=2)


class _Pointwise:
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], n_in: int):
        self.fn, self.n_out = fn, n_in

    def push(self, x: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        return None if x is None else self.fn(x)


class _Buffered:
    """Keeps the input rows [start, received) that later output rows still need."""

    def __init__(self, n_in: int, n_out: int):
        self.n_in, self.n_out = n_in, n_out
        self.buf: torch.Tensor | None = None
        self.start = 0  # absolute index of buf's first row
        self.received = 0
        self.next_out = 0

    def _take(self, x: torch.Tensor | None) -> None:
        self.buf = _cat(self.buf, x)
        if x is not None:
            self.received += x.shape[2]

    def _rows(self, lo: int, hi: int) -> torch.Tensor:
        """Input rows [lo, hi) clipped to the image, zero-padded where they fall outside it."""
        top, bottom = max(0, -lo), max(0, hi - self.n_in)
        rows = self.buf[:, :, lo + top - self.start: hi - bottom - self.start]
        return F.pad(rows, (0, 0, top, bottom)) if top or bottom else rows

    def _drop_before(self, row: int) -> None:
        if self.buf is not None and row > self.start:
            cut = min(row - self.start, self.buf.shape[2])
            # clone: keep only the carried rows alive, not the whole band they were sliced from
            self.buf = self.buf[:, :, cut:].clone() if cut < self.buf.shape[2] else None
            self.start += cut


class _Conv(_Buffered):
    def __init__(self, conv: nn.Conv2d, n_in: int):
        super().__init__(n_in, _out_rows(conv, n_in))
        self.conv = conv
        self.k, self.s, self.p = conv.kernel_size[0], conv.stride[0], conv.padding[0]

    def push(self, x: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        self._take(x)
        k, s, p = self.k, self.s, self.p
        # output row c reads input rows s*c-p .. s*c-p+k-1
        end = self.n_out if final else min(self.n_out, (self.received - k + p) // s + 1)
        if end <= self.next_out:
            return None
        rows = self._rows(s * self.next_out - p, s * (end - 1) - p + k)
        c = self.conv
        out = F.conv2d(rows, c.weight, c.bias, (s, c.stride[1]), (0, c.padding[1]), c.dilation, c.groups)
        self.next_out = end
        self._drop_before(s * end - p)
        return out


class _Upsample(_Buffered):
    def __init__(self, up: nn.Upsample, n_in: int):
        self.scale, self.reach = _upsample_params(up)
        super().__init__(n_in, n_in * self.scale)
        self.up = up

    def push(self, x: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        self._take(x)
        k, r = self.scale, self.reach
        # output row c reads input rows c//k - r .. c//k + r (clamped to the image)
        end = self.n_out if final else min(self.n_out, (self.received - r) * k)
        if end <= self.next_out:
            return None
        lo = max(0, self.next_out // k - r)
        hi = min(self.n_in, (end - 1) // k + r + 1)
        out = self.up(self.buf[:, :, lo - self.start: hi - self.start])
        out = out[:, :, self.next_out - lo * k: end - lo * k]
        self.next_out = end
        self._drop_before(end // k - r)
        return out


class _Chain:
    def __init__(self, streams: list[Any], n_in: int):
        self.streams = streams
        self.n_out = streams[-1].n_out if streams else n_in

    def push(self, x: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        for stream in self.streams:
            x = stream.push(x, final)
        return x


# GroupNorm statistics: {id(GroupNorm module): (mean, rstd)}, each (B, groups) float64.
GNStats = dict[int, tuple[torch.Tensor, torch.Tensor]]


def _group_norm(h: torch.Tensor, gn: nn.GroupNorm, stats: GNStats) -> torch.Tensor:
    """Apply `gn` to a band with whole-image statistics."""
    if id(gn) not in stats:
        raise RuntimeError("internal error: GroupNorm statistics missing")  # a bug, never a user error
    mean, rstd = stats[id(gn)]
    b, c, rows, w = h.shape
    g = gn.num_groups
    y = (h.float().view(b, g, c // g, rows, w) - mean.float()[:, :, None, None, None]) \
        * rstd.float()[:, :, None, None, None]
    y = y.view(b, c, rows, w)
    if gn.affine:
        y = y * gn.weight.float()[None, :, None, None] + gn.bias.float()[None, :, None, None]
    return y.to(h.dtype)


def _pool(block: Block, stats: GNStats) -> Callable[[torch.Tensor], torch.Tensor]:
    conv_in, gn, act, conv_out = block.pool

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x + conv_out(act(_group_norm(conv_in(x), gn, stats)))

    return fn


class _Block:
    """relu(conv_branch(x) + skip(x)) with x = x + pool(x) first; keeps x's rows until the branch reaches them."""

    def __init__(self, block: Block, n_in: int, stats: GNStats):
        self.block = block
        self.pool = _pool(block, stats) if block.pool is not None else None
        self.branch = _chain(_flatten(block.conv), n_in, stats)
        self.n_out = self.branch.n_out
        self.fifo: torch.Tensor | None = None
        self.fifo_start = 0

    def push(self, x: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        if x is not None and self.pool is not None:
            x = self.pool(x)
        self.fifo = _cat(self.fifo, x)
        y = self.branch.push(x, final)
        if y is None:
            return None
        n = y.shape[2]
        skip = self.block.skip(self.fifo[:, :, :n])
        rest = self.fifo[:, :, n:]
        self.fifo = rest.clone() if rest.shape[2] else None
        self.fifo_start += n
        return self.block.fuse(y + skip)


def _stream(layer: nn.Module, n_in: int, stats: GNStats) -> Any:
    if isinstance(layer, Block):
        return _Block(layer, n_in, stats)
    if isinstance(layer, nn.Conv2d) and (layer.kernel_size[0], layer.stride[0], layer.padding[0]) != (1, 1, 0):
        return _Conv(layer, n_in)
    if isinstance(layer, nn.Upsample):
        return _Upsample(layer, n_in)
    _check_layer(layer)
    return _Pointwise(layer, n_in)


def _chain(layers: list[nn.Module], n_in: int, stats: GNStats) -> _Chain:
    streams = []
    n = n_in
    for layer in layers:
        streams.append(_stream(layer, n, stats))
        n = streams[-1].n_out
    return _Chain(streams, n_in)


def _run(chain: _Chain, bands: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Push the input bands through `chain`; yield its output bands."""
    for band in bands:
        out = chain.push(band, False)
        if out is not None:
            yield out
    out = chain.push(None, True)
    if out is not None:
        yield out


def _collect(bands: Iterable[torch.Tensor], rows: int) -> torch.Tensor:
    """Concatenate bands along rows into one preallocated tensor of `rows` rows."""
    out: torch.Tensor | None = None
    at = 0
    for band in bands:
        if out is None:
            out = band.new_empty(band.shape[0], band.shape[1], rows, band.shape[3])
        out[:, :, at: at + band.shape[2]] = band
        at += band.shape[2]
    if out is None or at != rows:  # a bug, never a user error
        raise RuntimeError(f"internal error: tiled run produced {at} rows, expected {rows}")
    return out


def _has_gn(layer: nn.Module) -> bool:
    return isinstance(layer, Block) and layer.pool is not None


def _gn_stats(layers: list[nn.Module], x: torch.Tensor, rows: int, stats: GNStats) -> GNStats:
    """Whole-image statistics of every GroupNorm in `layers` (each Block pool's), in order, streamed from x."""
    stats = dict(stats)
    acc_dtype = torch.float32 if x.device.type == "mps" else torch.float64
    for j, layer in enumerate(layers):
        if not _has_gn(layer):
            continue
        conv_in, gn = layer.pool[0], layer.pool[1]
        g = gn.num_groups
        total = torch.zeros(x.shape[0], g, 2, dtype=acc_dtype, device=x.device)
        count = 0
        for band in _run(_chain(layers[:j], x.shape[2], stats), x.split(rows, dim=2)):
            h = conv_in(band).to(acc_dtype)
            h = h.reshape(h.shape[0], g, -1)
            total[:, :, 0] += h.sum(-1)
            total[:, :, 1] += h.square().sum(-1)
            count += h.shape[-1]
        mean = total[:, :, 0] / count
        var = (total[:, :, 1] / count - mean.square()).clamp_min(0)
        stats[id(gn)] = (mean, torch.rsqrt(var + gn.eps))
    return stats


def _band_rows(net: nn.Module, height: int, width: int, options: dict[str, Any]) -> tuple[int, int]:
    """(input rows per band, latent rows of the image) for an input of height x width."""
    rf = receptive_field(net)
    latent_rows = height if rf.upsamples else height // rf.scale
    band = options.get("band_rows")
    if band is None:
        image_width = width * rf.scale if rf.upsamples else width
        band = max(1, options.get("band_pixels", DEFAULT_BAND_PIXELS) // (image_width * rf.scale))
    return (band if rf.upsamples else band * rf.scale), latent_rows


def stream_apply(net: nn.Module, bands: Iterable[torch.Tensor], height: int, width: int,
                 options: dict[str, Any]) -> Iterator[torch.Tensor]:
    """Run `net` (Encoder or Decoder) on an input given as consecutive row bands; yield the output row bands.

    `bands`: tensors (B, C, rows, width) in the network's convention, their rows adding up to `height`. Bands of
    any height are accepted; the output bands come as soon as they are computable. Memory: about width x
    (a few dozen rows) of activations, plus, for a network with GroupNorm, its whole lowest-resolution input.
    """
    layers = _flat_layers(net)
    cut = next((i for i, layer in enumerate(layers) if _has_gn(layer)), len(layers))
    head, tail = layers[:cut], layers[cut:]
    head_chain = _chain(head, height, {})
    if not tail:
        yield from _run(head_chain, bands)
        return
    # GroupNorm: keep the lowest-resolution input of the GroupNorm stage, find the statistics, then run the rest.
    mid = _collect(_run(head_chain, bands), head_chain.n_out)
    band_in, latent_rows = _band_rows(net, height, width, options)
    rows = max(1, band_in * mid.shape[2] // height)
    stats = _gn_stats(tail, mid, rows, {})
    yield from _run(_chain(tail, mid.shape[2], stats), mid.split(rows, dim=2))


def tiled_apply(net: nn.Module, x: torch.Tensor, **options: Any) -> torch.Tensor:
    """Exact banded equivalent of `net(x)` for an Encoder or Decoder and x (B, C, H, W) in its convention."""
    rows, _ = _band_rows(net, x.shape[2], x.shape[3], options)
    n_out = _chain(_flat_layers(net), x.shape[2], {}).n_out
    return _collect(stream_apply(net, x.split(rows, dim=2), x.shape[2], x.shape[3], options), n_out)
