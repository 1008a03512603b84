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
- `band_pixels`: when `band_rows` is None, the image pixels a band holds, about (default 2**16 = 64 Ki): rows =
  max(1, band_pixels // (image width * scale factor)). A band's largest activation is then about
  band_pixels * 64 channels * 4 bytes = 16 MiB in float32 (raise it on a GPU: fewer, larger kernels).

Streaming (peak memory independent of the image height): `decode_to_png`, `encode_png`, and the generators
`decode_bands` / `encode_bands` for other progressive formats. PNG is written and read row by row with pypng.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nets.blocks import Block
from ..nets.layers import geometry, needed, out_rows, upsample_params

if TYPE_CHECKING:
    from ..nets.model import AutoencoderTinyBase as AutoencoderTiny

DEFAULT_BAND_PIXELS = 2 ** 16
OPTIONS = ("band_rows", "band_pixels")


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
        if net is not None and _fast(net):
            from .fast_stream import check

            check(net)
        elif net is not None:
            for layer in _flat_layers(net):
                _check_layer(layer)
    return {"band_rows": band_rows, "band_pixels": band_pixels}


def _fast(net: nn.Module) -> bool:
    """True for an optimized network (`tinyae.runtime.FastNet`), which streams on its own kernels (fast_stream)."""
    from .runtime import FastNet

    return isinstance(net, FastNet)


def _flat_layers(net: nn.Module) -> list[nn.Module]:
    """The layer list that `net.forward` applies in order (the decoder's Clamp first; an optimized net's ops)."""
    if _fast(net):
        return list(net.ops)
    layers = [net.clamp] if getattr(net, "clamp", None) is not None else []
    return layers + _flatten(net.layers)


def _flatten(seq: Iterable[nn.Module]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for layer in seq:
        out += _flatten(layer) if isinstance(layer, nn.Sequential) else [layer]
    return out


def _check_layer(layer: nn.Module) -> None:
    """ValueError naming a layer the streaming executor has no kernel for (its geometry is read from tinyae.layers)."""
    for sub in _flatten(layer.conv) if isinstance(layer, Block) else ():
        _check_layer(sub)
    try:
        g = geometry(layer)
    except ValueError:
        raise ValueError(f"tiling does not support the layer {layer}") from None
    if not (g.pointwise or isinstance(layer, (Block, nn.Conv2d, nn.Upsample, *REARRANGEMENTS))):
        raise ValueError(f"tiling does not support the layer {layer} yet (no streaming kernel)")


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
    n_out = out_rows(layers, n_in)
    upsamples = n_out >= n_in
    scale = n_out // n_in if upsamples else n_in // n_out
    before = after = 0
    for row in range(scale if upsamples else 1):
        lo, hi = needed(layers, row, row)
        cell_lo, cell_hi = (row // scale, row // scale) if upsamples else (row * scale, row * scale + scale - 1)
        before, after = max(before, cell_lo - lo), max(after, hi - cell_hi)
    return ReceptiveField(before, after, scale, upsamples)


# ---------------------------------------------------------------------------------------------- streams
# A stream turns consecutive row bands of its input (B, C, rows, W) into consecutive row bands of its output.
# push(x, final) takes the next input rows (or None) and returns every output row it can now compute (or None);
# with final=True the input is complete and it returns all its remaining rows.

def _cat(buf: torch.Tensor | None, x: torch.Tensor | None) -> torch.Tensor | None:
    if x is None:
        return buf
    return x if buf is None else torch.cat([buf, x], dim=2)


class _Pointwise:
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], n_in: int):
        self.fn, self.n_out = fn, n_in
        self.done = False

    def push(self, x: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        self.done = final
        return None if x is None else self.fn(x)


class _Buffered:
    """Keeps the input rows [start, received) that later output rows still need."""

    def __init__(self, n_in: int, n_out: int):
        self.n_in, self.n_out = n_in, n_out
        self.buf: torch.Tensor | None = None
        self.start = 0  # absolute index of buf's first row
        self.received = 0
        self.next_out = 0
        self.cap = n_out  # most output rows per push: keeps the final flush (the field's lag) in band-sized steps

    @property
    def done(self) -> bool:
        return self.next_out >= self.n_out

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
        super().__init__(n_in, geometry(conv).out_rows(n_in))
        self.conv = conv
        self.k, self.s, self.p = conv.kernel_size[0], conv.stride[0], conv.padding[0]

    def push(self, x: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        self._take(x)
        k, s, p = self.k, self.s, self.p
        # output row c reads input rows s*c-p .. s*c-p+k-1
        end = self.n_out if final else min(self.n_out, (self.received - k + p) // s + 1)
        end = min(end, self.next_out + self.cap)
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
        self.scale, self.reach = upsample_params(up)
        super().__init__(n_in, n_in * self.scale)
        self.up = up

    def push(self, x: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        self._take(x)
        k, r = self.scale, self.reach
        # output row c reads input rows c//k - r .. c//k + r (clamped to the image)
        end = self.n_out if final else min(self.n_out, (self.received - r) * k)
        end = min(end, self.next_out + self.cap)
        if end <= self.next_out:
            return None
        lo = max(0, self.next_out // k - r)
        hi = min(self.n_in, (end - 1) // k + r + 1)
        out = self.up(self.buf[:, :, lo - self.start: hi - self.start])
        out = out[:, :, self.next_out - lo * k: end - lo * k]
        self.next_out = end
        self._drop_before(end // k - r)
        return out


REARRANGEMENTS = (nn.PixelShuffle, nn.PixelUnshuffle)  # rows regrouped, nothing read around them


class _Rearrange(_Buffered):
    """PixelShuffle / PixelUnshuffle: whole cells of `down` input rows at a time, `up` output rows per cell (the
    declared geometry; no context rows)."""

    def __init__(self, layer: nn.Module, n_in: int):
        g = geometry(layer)
        if g.before or g.after:
            raise ValueError(f"tiling: {layer} reads context rows; not a rearrangement")
        super().__init__(n_in, g.out_rows(n_in))
        self.layer, self.up, self.down = layer, g.up, g.down

    def push(self, x: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        self._take(x)
        cells = min((self.received - self.start) // self.down, self.cap // self.up + 1)
        end = min(self.n_out, self.next_out + cells * self.up)
        if end <= self.next_out:
            return None
        rows = (end - self.next_out) // self.up * self.down
        out = self.layer(self.buf[:, :, :rows])
        self.next_out = end
        self._drop_before(self.start + rows)
        return out


class _Chain:
    def __init__(self, streams: list[Any], n_in: int):
        self.streams = streams
        self.n_out = streams[-1].n_out if streams else n_in

    @property
    def done(self) -> bool:
        return all(stream.done for stream in self.streams)

    def push(self, x: torch.Tensor | None, final: bool) -> torch.Tensor | None:
        """final: the chain's input is complete; a stream's input is complete when every stream before it is done."""
        for stream in self.streams:
            x = stream.push(x, final)
            final = final and stream.done
        return x

    def set_cap(self, fraction: float) -> None:
        """Limit every layer's output per push to about twice its share of one band (fraction of the image)."""
        for stream in self.streams:
            if isinstance(stream, _Block):
                stream.branch.set_cap(fraction)
            elif isinstance(stream, _Buffered):
                stream.cap = max(1, 2 * math.ceil(fraction * stream.n_out))


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

    @property
    def done(self) -> bool:
        return self.branch.done

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
    _check_layer(layer)
    if isinstance(layer, nn.Conv2d) and not geometry(layer).pointwise:
        return _Conv(layer, n_in)
    if isinstance(layer, nn.Upsample):
        return _Upsample(layer, n_in)
    if isinstance(layer, REARRANGEMENTS):
        return _Rearrange(layer, n_in)
    return _Pointwise(layer, n_in)


def _chain(layers: list[nn.Module], n_in: int, stats: GNStats) -> _Chain:
    streams = []
    n = n_in
    for layer in layers:
        streams.append(_stream(layer, n, stats))
        n = streams[-1].n_out
    return _Chain(streams, n_in)


def _run(chain: _Chain, bands: Iterable[torch.Tensor], fraction: float) -> Iterator[torch.Tensor]:
    """Push the input bands (each about `fraction` of the input's rows) through `chain`; yield its output bands."""
    chain.set_cap(fraction)
    for band in bands:
        out = chain.push(band, False)
        if out is not None:
            yield out
    while not chain.done:  # flush the rows still in flight, band by band
        out = chain.push(None, True)
        if out is not None:
            yield out


def _collect(bands: Iterable[torch.Tensor], rows: int,
             memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Concatenate bands along rows into one preallocated tensor of `rows` rows."""
    out: torch.Tensor | None = None
    at = 0
    for band in bands:
        if out is None:
            out = torch.empty((band.shape[0], band.shape[1], rows, band.shape[3]), dtype=band.dtype,
                              device=band.device, memory_format=memory_format)
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
        for band in _run(_chain(layers[:j], x.shape[2], stats), x.split(rows, dim=2), rows / x.shape[2]):
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
    band_in, _ = _band_rows(net, height, width, options)
    if _fast(net):
        from . import fast_stream

        yield from fast_stream.stream_apply(net, bands, height, width, band_in)
        return
    layers = _flat_layers(net)
    cut = next((i for i, layer in enumerate(layers) if _has_gn(layer)), len(layers))
    head, tail = layers[:cut], layers[cut:]
    head_chain = _chain(head, height, {})
    if not tail:
        yield from _run(head_chain, bands, band_in / height)
        return
    # GroupNorm: keep the lowest-resolution input of the GroupNorm stage, find the statistics, then run the rest.
    mid = _collect(_run(head_chain, bands, band_in / height), head_chain.n_out)
    rows = max(1, band_in * mid.shape[2] // height)
    stats = _gn_stats(tail, mid, rows, {})
    yield from _run(_chain(tail, mid.shape[2], stats), mid.split(rows, dim=2), rows / mid.shape[2])


def tiled_apply(net: nn.Module, x: torch.Tensor, **options: Any) -> torch.Tensor:
    """Exact banded equivalent of `net(x)` for an Encoder or Decoder and x (B, C, H, W) in its convention."""
    rows, _ = _band_rows(net, x.shape[2], x.shape[3], options)
    if _fast(net):
        from . import fast_stream

        return fast_stream.tiled_apply(net, x, rows)
    n_out = out_rows(_flat_layers(net), x.shape[2])
    return _collect(stream_apply(net, x.split(rows, dim=2), x.shape[2], x.shape[3], options), n_out)


# ---------------------------------------------------------------------------------------------- streaming API
def _no_grad(it: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Advance `it` under torch.no_grad without leaking the grad mode into the caller between items."""
    while True:
        with torch.no_grad():
            item = next(it, None)
        if item is None:
            return
        yield item


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C): clamp, scale by 255, round to nearest."""
    return images.add(1).div(2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)


def decode_bands(model: "AutoencoderTiny", latents: torch.Tensor, **options: Any) -> Iterator[torch.Tensor]:
    """Decode raw latents (B, C, h, w) band by band; yield image bands (B, out_channels, rows, w*f) in [-1, 1].

    The bands, concatenated along rows, equal `model.decode(latents)` with `model.enable_tiling(**options)`
    bit for bit (and the untiled decode to ~1e-6). Runs without autograd. Options: see the module docstring.
    """
    opts = check_options(model, options)  # checked now, not at the first next()
    decoder = model._part("decoder")
    from .fast_stream import Bands  # converted to the model's dtype band by band, never as a whole copy

    z = model._check(latents, "latents", model.config.latent_channels, 1)
    rows, _ = _band_rows(decoder, z.shape[2], z.shape[3], opts)
    bands = stream_apply(decoder, Bands(z, rows, model.dtype), z.shape[2], z.shape[3], opts)
    wide = torch.promote_types(model.dtype, latents.dtype)  # elementwise bf16 math is slow on CPUs
    return (band.to(wide).mul_(2).sub_(1).to(latents.dtype) for band in _no_grad(bands))


def encode_bands(model: "AutoencoderTiny", bands: Iterable[torch.Tensor], height: int, width: int,
                 **options: Any) -> torch.Tensor:
    """Encode an image given as consecutive row bands (B, in_channels, rows, width) in [-1, 1].

    `height`, `width`: the image size, multiples of `model.spatial_scale_factor`. Returns the raw latents
    (B, latent_channels, height/f, width/f), equal to `model.encode` of the whole image with tiling enabled.
    Only the bands being processed are held in memory (plus, for taef2, the 1/8-size lowest-resolution stage).
    """
    opts = check_options(model, options)
    encoder = model._part("encoder")
    f = model.spatial_scale_factor
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % f:
            raise ValueError(f"image {name} must be a positive multiple of {f}, got {v!r}")
    seen = [0]
    wide = torch.promote_types(model.dtype, torch.float32)

    def prepared() -> Iterator[torch.Tensor]:
        for band in bands:
            if not isinstance(band, torch.Tensor) or band.dim() != 4 or band.shape[3] != width:
                raise ValueError(f"image bands must be tensors (B, C, rows, {width}), got "
                                 f"{tuple(band.shape) if isinstance(band, torch.Tensor) else type(band).__name__}")
            band = model._check(band, "images", model.config.in_channels, 1)
            seen[0] += band.shape[2]
            if seen[0] > height:
                raise ValueError(f"the image bands hold more than height={height} rows")
            yield band.to(wide).add(1).div_(2).to(model.dtype)
        if seen[0] != height:
            raise ValueError(f"the image bands hold {seen[0]} rows, expected height={height}")

    n_out = out_rows(_flat_layers(encoder), height)
    return _collect(_no_grad(stream_apply(encoder, prepared(), height, width, opts)), n_out)


def decode_to_png(model: "AutoencoderTiny", latents: torch.Tensor, path: str | os.PathLike,
                  compression: int | None = None, size: tuple[int, int] | None = None, **options: Any) -> None:
    """Decode raw latents (1, C, h, w) straight into a PNG file, written row band by row band.

    Peak memory does not grow with the image height (see the module docstring); the file is written atomically
    (temporary file, then rename), so an existing file is only replaced by a complete one. The pixels equal
    `to_uint8(model.decode(latents).sample)` with the same tiling options, exactly. `compression`: zlib level
    0-9 (None: zlib's default). 1-, 3- or 4-channel outputs (greyscale, RGB, or RGBA with the model's straight
    alpha: taeqi2_1). `size`: (width, height) to keep
    of the decoded image (its top-left part), e.g. the source's size before padding to a multiple of 8.
    """
    import png

    from ..io.files import atomic_write

    if isinstance(latents, torch.Tensor) and latents.dim() == 4 and latents.shape[0] != 1:
        raise ValueError(f"a PNG holds one image: latents must have batch size 1, got shape {tuple(latents.shape)}")
    if compression is not None and (isinstance(compression, bool) or compression not in range(10)):
        raise ValueError(f"compression must be a zlib level 0-9 or None, got {compression!r}")
    channels = model.config.out_channels
    if channels not in (1, 3, 4):
        raise ValueError(f"PNG output needs a 1-, 3- or 4-channel decoder, this one has {channels} channels")
    bands = decode_bands(model, latents, **options)  # validates latents and options before a file is touched
    f = model.decoder_scale_factor
    height, width = latents.shape[2] * f, latents.shape[3] * f
    if size is not None:
        if not (0 < size[0] <= width and 0 < size[1] <= height):
            raise ValueError(f"size {size} must fit inside the decoded {width}x{height} image")
        width, height = int(size[0]), int(size[1])

    def rows() -> Iterator[bytes]:
        left = height
        for band in bands:
            pixels = to_uint8(band)[0, :left, :width].cpu().numpy()
            left -= pixels.shape[0]
            for row in pixels.reshape(pixels.shape[0], width * channels):  # a band may be empty
                yield row.tobytes()

    def write(tmp: str) -> None:
        writer = png.Writer(width, height, greyscale=channels == 1, alpha=channels == 4, bitdepth=8,
                            compression=compression)
        with open(tmp, "wb") as fh:
            writer.write(fh, rows())

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


def encode_png(model: "AutoencoderTiny", path: str | os.PathLike, **options: Any) -> torch.Tensor:
    """Encode a PNG file read row band by row band; return raw latents (1, latent_channels, H/f, W/f), float32.

    The image's height and width must be multiples of `model.spatial_scale_factor`. The result equals
    `model.encode(x)` with the same tiling options, for x the image as (1, C, H, W) float32 in [-1, 1]
    (uint8 / 127.5 - 1), exactly: C = 3 (RGB), or 4 for an RGBA model (taeqi2_1; alpha 255 for a PNG without).
    """
    opts = check_options(model, options)
    channels = model.config.in_channels
    if channels not in (3, 4):
        raise ValueError(f"PNG input needs a 3- or 4-channel encoder, this one has {channels} channels")
    f = model.spatial_scale_factor
    probe_h, probe_w, _ = read_png_bands(path, 1)
    if probe_h % f or probe_w % f:
        raise ValueError(f"{path}: image size {probe_w}x{probe_h} is not a multiple of {f}; crop or pad it first")
    band, _ = _band_rows(model._part("encoder"), probe_h, probe_w, opts)
    height, width, bands = read_png_bands(path, band, channels)

    def tensors() -> Iterator[torch.Tensor]:
        for rgb in bands:
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(torch.float32) / 127.5 - 1
            yield x.to(model.device)

    return encode_bands(model, tensors(), height, width, **opts).to(torch.float32)
