"""The eager row-band executor's streams (used by `tinyae.engine.tiling`; see its docstring for how it works).

A stream turns consecutive row bands of its input (B, C, rows, W) into consecutive row bands of its output, keeping
only the input rows its next output rows still need; each layer kind's rows come from its declaration in
`tinyae.nets.layers`. GroupNorm (taef2's `Block.pool`) gets its whole-image statistics from `_gn_stats` passes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nets.blocks import Block
from ..nets.layers import geometry, upsample_params

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


