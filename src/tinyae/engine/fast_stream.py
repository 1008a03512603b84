"""Row-band streaming of an optimized network (`FastNet`): tiling and streaming on the fast kernels.

The eager streaming executor (`tinyae.tiling`) carries rows between bands layer by layer, which costs a copy per
convolution; the fused kernels of `optimize()` instead compute whole residual blocks in one go. Here every fused op
runs on chunks of its input rows plus the rows of context its declared geometry (`tinyae.layers`) asks for. The op
zero-pads at the chunk's edges: right where the chunk edge is the image edge, wrong inside, where the wrong values
reach at most `before` / `after` rows inward, exactly the context rows that are then cropped away. So every output
row is computed from the same input rows, with the same kernels, as in memory; the recomputed context is the cost
(2 x halo rows per op and chunk, a few percent with the chunk sizes below).

Derivation of the crop: a chunk starting at input row L (a multiple of the op's `down`) makes output rows starting
at L * up / down (stride-s convolution: chunk output row i reads chunk rows s*i - p.., i.e. image rows L + s*i - p..,
which is image output row L/s + i; upsampling by u: row u*L + i). Output rows [a, b) read input rows
`geometry.needed(a, b - 1)`, clipped to the image; the chunk is those rows, widened to multiples of `down`.

GroupNorm (taef2) needs whole-image statistics. Where the GroupNorm stage (its ops run at the lowest resolution, 1/8
of the image per side) is small (widest activation <= STAGE_BYTES: a 2048² image's is 8 MB), it runs whole, as in
memory, on its collected input, and only the ops after it stream: the statistics passes below would recompute the
stage once per GroupNorm (measured: ~0.5 s of a 3.3 s tiled 2048² decode on an AMX Xeon). Otherwise one streamed
pass per GroupNorm accumulates its statistics (float64 sums), and the last pass applies them
(`FastBlock.forward(stats=...)`). Only the statistics are kept, not activations, where the input can be read again
(a tensor given as `Bands`, or a list) and the ops before the first GroupNorm are cheap (no residual block: taef2's
decoder, one convolution at latent resolution): every pass then starts from the input. Otherwise (the encoder, or a
one-shot iterator of bands), as in the eager executor, the stack is cut before the first GroupNorm block and that
stage's lowest-resolution input is kept.

Memory: each resolution level holds its input rows for the next chunk plus one chunk's activations, a chunk being
about CHUNK_BYTES of its widest activation (8 MiB: the in-memory strips' size, so the same rows are recomputed), so
the engine holds a few dozen MB at 2048 columns, about width / 2048 times that at wider images. Streamed GroupNorm
stages get tiles down to 128 columns (2048² fp32 encode, AVX2 EPYC: 182 -> 122 MB, 0.25x in memory, +5% time).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

from . import tiling
from ..nets.layers import Geometry, geometry
from .runtime import FastBlock, FastNet, FastStem
from .sizes import _activation_bytes, _stage_bytes  # noqa: F401 (_activation_bytes: used by tests too)

_CL = torch.channels_last
CHUNK_BYTES = 8 << 20  # an op's chunk: about this many bytes of its widest activation ...
MIN_CHUNK_ROWS = 64  # ... and at least this many output rows (the recomputed context is 2 x halo rows a chunk)
MIN_TILE_COLUMNS = 128  # wider chunks run in column tiles of CHUNK_BYTES, each at least this wide (see Memory)
STATS_BYTES = 4 << 20  # the float64 slices a GroupNorm statistics pass converts at a time
STAGE_BYTES = 32 << 20  # a GroupNorm stage whose widest activation is at most this runs whole (see stream_apply)
SEGMENTS = "level"  # "level": one segment per resolution level (context recomputed per chunk); "op": one per op
# (each op carries its input rows between chunks: less recomputed, one more copy of every activation)


class Bands:
    """The row bands of a tensor x (B, C, H, W), `rows` rows each, converted to `dtype` (or by `prepare`, which
    must return that dtype) one band at a time as they are read (the whole input is never copied); iterable more
    than once, so a streamed run can read it again."""

    def __init__(self, x: torch.Tensor, rows: int, dtype: torch.dtype,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.x, self.rows, self.dtype, self.prepare = x, rows, dtype, prepare

    def __iter__(self) -> Iterator[torch.Tensor]:
        for band in self.x.split(self.rows, dim=2):
            yield band.to(self.dtype) if self.prepare is None else self.prepare(band)

Stats = dict[int, tuple[torch.Tensor, torch.Tensor]]  # id(FastBlock) -> (mean, rstd), each (B, groups) float64


def ops_of(net: FastNet) -> list[nn.Module]:
    return list(net.ops)


def check(net: FastNet) -> None:
    """ValueError naming an op whose geometry is not declared."""
    for op in ops_of(net):
        geometry(op)


class _Segment:
    """Consecutive ops at one resolution (a resampling op first, if any), fed consecutive input row bands; returns
    its output rows as soon as a chunk of them is computable. The segment's context is the composition of its ops'
    declared geometries: one copy of the input rows per segment, the context recomputed once per chunk."""

    def __init__(self, ops: list[nn.Module], n_in: int, stats: Stats):
        self.ops, self.n_in, self.stats = ops, n_in, stats
        self.geos = [geometry(op) for op in ops]
        self.up = math.prod(g.up for g in self.geos)
        self.down = math.prod(g.down for g in self.geos)
        self.pointwise = all(g.pointwise for g in self.geos)
        n = n_in
        for g in self.geos:
            n = g.out_rows(n)
        self.n_out = n
        self.store: torch.Tensor | None = None  # input rows [start, received) in store[:, :, :received - start]
        self.start = self.received = self.next_out = 0
        self.min_rows = 1
        self.cap = self.n_out
        self.tile: int | None = None  # output columns per column tile (None: whole rows)
        self.pending: list[torch.Tensor] = []  # a pointwise segment's inputs not yet passed on

    @property
    def done(self) -> bool:
        return self.next_out >= self.n_out

    def needed(self, lo: int, hi: int) -> tuple[int, int]:
        for g in reversed(self.geos):
            lo, hi = g.needed(lo, hi)
        return lo, hi

    def _computable(self) -> int:
        """End (exclusive) of the output rows whose input rows have all been received (needed() is monotonic)."""
        if self.received >= self.n_in:
            return self.n_out
        lo, hi = self.next_out, self.n_out  # the answer lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.needed(mid - 1, mid - 1)[1] <= self.received - 1:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _call(self, x: torch.Tensor, top: bool, bottom: bool) -> torch.Tensor:
        for i, op in enumerate(self.ops):
            if isinstance(op, FastStem):
                x = op(x, top=top, bottom=bottom)
            elif isinstance(op, FastBlock):  # the segment's own intermediates may be overwritten, not its input
                x = op(x, overwrite=i > 0, stats=self.stats[id(op)] if op.pool is not None else None)
            else:
                x = op(x)
        return x

    def _call_tiled(self, x: torch.Tensor, top: bool, bottom: bool) -> torch.Tensor:
        """_call on column tiles of x when its rows are wider than `tile` output columns, so a chunk's activations
        stay about CHUNK_BYTES at any width (the cache-sized strips of the in-memory path) without more recomputed
        rows. Columns are cut as rows are: every layer kind is square (k x k kernels, equal strides and scales in
        both directions), so the declared row geometry gives the columns a tile needs; its edge columns are wrong
        exactly within that context, which is cropped."""
        w_in = x.shape[3]
        w_out = w_in * self.up // self.down
        if self.tile is None or w_out <= self.tile:
            return self._call(x, top, bottom)
        out = None
        for c0 in range(0, w_out, self.tile):
            c1 = min(w_out, c0 + self.tile)
            lo, hi = self.needed(c0, c1 - 1)
            a = max(0, lo) // self.down * self.down
            b = min(w_in, -(-(hi + 1) // self.down) * self.down)
            y = self._call(x[..., a:b].contiguous(memory_format=_CL), top, bottom)
            if out is None:
                out = torch.empty((*y.shape[:3], w_out), dtype=y.dtype, device=y.device, memory_format=_CL)
            offset = a * self.up // self.down
            out[..., c0:c1] = y[..., c0 - offset: c1 - offset]
            del y
        return out

    def take(self, x: torch.Tensor | None) -> None:
        """The next input rows (None: nothing new)."""
        if x is None:
            return
        if self.pointwise:
            self.pending.append(x)
        else:
            self._append(x)

    def produce(self, final: bool) -> torch.Tensor | None:
        """The next chunk of output rows, or None when none is computable yet. `final`: the input is complete."""
        if self.pointwise:
            if not self.pending:
                return None
            x = self.pending.pop(0)
            self.next_out += x.shape[2]
            return self._call(x.contiguous(memory_format=_CL), True, True)
        end = min(self._computable(), self.next_out + self.cap)
        if end <= self.next_out or (end - self.next_out < self.min_rows and end < self.n_out and not final):
            return None
        lo, hi = self.needed(self.next_out, end - 1)
        first = max(0, lo) // self.down * self.down
        last = min(self.n_in, -(-(hi + 1) // self.down) * self.down)
        chunk = self.store[:, :, first - self.start: last - self.start]
        y = self._call_tiled(chunk, first == 0, last == self.n_in)
        offset = first * self.up // self.down
        out = y[:, :, self.next_out - offset: end - offset]
        self.next_out = end
        keep = max(0, self.needed(end, end)[0]) // self.down * self.down  # the next output row's first input row
        self._drop_before(min(keep, self.received))
        return out

    # The input rows live in one buffer per segment (grown by a quarter when too small), reused across pushes: a
    # fresh allocation of this size is a new mmap whose pages fault in each time, and torch.cat along rows of
    # channels_last tensors is a slow copy.
    def _append(self, x: torch.Tensor) -> None:
        held, n = self.received - self.start, x.shape[2]
        if self.store is None or held + n > self.store.shape[2]:
            rows = held + n + (held + n) // 4
            grown = torch.empty((x.shape[0], x.shape[1], rows, x.shape[3]), dtype=x.dtype, device=x.device,
                                memory_format=_CL)
            if held:
                grown[:, :, :held] = self.store[:, :, :held]
            self.store = grown
        self.store[:, :, held: held + n] = x
        self.received += n

    def _drop_before(self, row: int) -> None:
        cut, held = row - self.start, self.received - self.start
        if cut <= 0:
            return
        left = held - cut
        if left > 0:
            rest = self.store[:, :, cut:held]
            self.store[:, :, :left] = rest if cut >= left else rest.clone()  # overlapping copy needs a temporary
        self.start = row


class _Chain:
    """The ops cut into segments, one per resolution level, as the in-memory strips: a new segment starts at every
    upsampling op (which reads the level below) and after every downsampling op (which ends the level it reads),
    so each segment keeps the rows of its lower-resolution end (the encoder's first segment: image rows, not its
    64-channel full-resolution activations)."""

    def __init__(self, ops: list[nn.Module], n_in: int, stats: Stats, width: int):
        groups: list[list[nn.Module]] = []
        ended = True
        for op in ops:
            g = geometry(op)
            if ended or g.up != 1 or SEGMENTS == "op":
                groups.append([])
            groups[-1].append(op)
            ended = g.down != 1
        self.streams: list[_Segment] = []
        n, w = n_in, width
        for group in groups:
            s = _Segment(group, n, stats)
            w_in, w = w, w * s.up // s.down
            # bytes per output row of the widest activation, or of the input rows it reads (a stride-2 segment
            # reads 2 rows twice as wide); GroupNorm's two float32 temporaries (scale-and-shift) count 4 times
            row_bytes = max(w, w_in * s.down) * max(_activation_bytes(op) for op in group)
            if any(isinstance(op, FastBlock) and op.pool is not None for op in group):
                row_bytes *= 4
            s.min_rows = max(MIN_CHUNK_ROWS, CHUNK_BYTES // max(1, row_bytes))
            columns = max(MIN_TILE_COLUMNS, CHUNK_BYTES * w // max(1, row_bytes * s.min_rows))
            s.tile = columns if columns < w and not s.pointwise else None
            self.streams.append(s)
            n = s.n_out
        self.n_out = n

    @property
    def done(self) -> bool:
        return all(s.done for s in self.streams)

    def feed(self, x: torch.Tensor | None, final: bool, i: int = 0) -> Iterator[torch.Tensor]:
        """Give segment i its next input rows (`final`: its input is complete) and yield the chain's output rows.
        Depth first: every chunk a segment makes goes all the way down before the segment makes the next, so each
        level holds about one chunk plus its context, whatever the order the levels could compute in."""
        if i == len(self.streams):
            if x is not None:
                yield x
            return
        s = self.streams[i]
        s.take(x)
        del x  # copied into the segment's rows: the level above may free it
        while (y := s.produce(final)) is not None:
            below = self.feed(y, final and s.done, i + 1)
            del y  # held by `below` only until the next level has copied it
            yield from below
        if final and s.done:
            yield from self.feed(None, True, i + 1)  # the levels below flush what they still hold

    def set_cap(self, fraction: float) -> None:
        """Chunks of min_rows output rows, whatever the input bands' `fraction` of the input: larger bands do not
        make larger chunks, so the memory stays that of one chunk per level."""
        for s in self.streams:
            s.cap = s.min_rows


def _run(chain: _Chain, bands: Iterable[torch.Tensor], fraction: float) -> Iterator[torch.Tensor]:
    """Push the input bands (each about `fraction` of the input's rows) through `chain`; yield its output bands."""
    chain.set_cap(fraction)
    for band in bands:
        yield from chain.feed(band, False)
    yield from chain.feed(None, True)
    if not chain.done:  # a bug, never a user error
        raise RuntimeError("internal error: the streamed run ended with rows in flight")


def _collect(bands: Iterable[torch.Tensor], rows: int,
             memory_format: torch.memory_format = _CL) -> torch.Tensor:
    return tiling._collect(bands, rows, memory_format)


def _gn_stats(ops: list[nn.Module], first: int, source: Callable[[], Iterable[torch.Tensor]], height: int,
              width: int, fraction: float) -> Stats:
    """Whole-image (mean, rstd) of every GroupNorm in ops[first:], in order, each from a streamed pass of
    ops[:j] over the input `source()` (height x width, bands of about `fraction` of its rows)."""
    stats: Stats = {}
    for j in range(first, len(ops)):
        op = ops[j]
        if not (isinstance(op, FastBlock) and op.pool is not None):
            continue
        c, g = op.pool_in.weight.shape[0], op.gn_groups
        s1 = s2 = None
        count = 0
        for band in _run(_Chain(ops[:j], height, stats, width), source(), fraction):
            h = op.pool_in(band.contiguous(memory_format=_CL))
            if s1 is None:
                s1 = torch.zeros(h.shape[0], c, dtype=torch.float64, device=h.device)
                s2 = torch.zeros_like(s1)
            step = max(1, STATS_BYTES // max(1, h.shape[1] * h.shape[3] * 8))
            for part in h.split(step, dim=2):  # float64 a few rows at a time
                d = part.double()
                s1 += d.sum((2, 3))
                s2 += d.square_().sum((2, 3))
            count += h.shape[2] * h.shape[3]
            del band, h, d, part  # not held while the next band is computed
        per = count * (c // g)
        mean = s1.view(-1, g, c // g).sum(-1) / per
        var = (s2.view(-1, g, c // g).sum(-1) / per - mean.square()).clamp_min(0)
        stats[id(op)] = (mean, torch.rsqrt(var + op.gn_eps))
    return stats


def stream_apply(net: FastNet, bands: Iterable[torch.Tensor], height: int, width: int,
                 band_rows: int) -> Iterator[torch.Tensor]:
    """Run `net` on an input given as consecutive row bands (B, C, rows, width) in the net's dtype; yield output
    row bands (channels_last). `band_rows`: the input rows per band the caller uses. `bands` that can be iterated
    again (`Bands`, a list) are read once more per GroupNorm instead of keeping an activation (see the module
    docstring)."""
    prepare: Callable[[torch.Tensor], torch.Tensor] = (lambda t: torch.tanh(t / 3) * 3) if net.clamp else (lambda t: t)
    ops = ops_of(net)
    cut = next((i for i, op in enumerate(ops) if geometry(op).global_stats), len(ops))
    fraction = band_rows / height

    def source() -> Iterator[torch.Tensor]:
        return (prepare(b) for b in bands)

    with torch.no_grad():
        if cut == len(ops):
            yield from _run(_Chain(ops, height, {}, width), source(), fraction)
            return
        last = max(i for i, op in enumerate(ops) if geometry(op).global_stats)
        batch = bands.x.shape[0] if isinstance(bands, Bands) else 1
        if _stage_bytes(ops, cut, last, height, width, batch) <= STAGE_BYTES:
            head = _Chain(ops[:cut], height, {}, width)
            mid = _collect(_run(head, source(), fraction), head.n_out) if cut else _collect(source(), height)
            mid = mid.contiguous(memory_format=_CL)
            del head  # this generator lives on while the tail streams: free the head's level buffers now
            for i, op in enumerate(ops[cut:last + 1]):  # whole-image GroupNorm, as FastNet.forward runs it
                mid = op(mid, overwrite=i > 0) if isinstance(op, FastBlock) else op(mid)
            rows = max(1, math.ceil(fraction * mid.shape[2]))
            if last + 1 == len(ops):
                yield from mid.split(rows, dim=2)
                return
            tail = _Chain(ops[last + 1:], mid.shape[2], {}, mid.shape[3])
            yield from _run(tail, mid.split(rows, dim=2), rows / mid.shape[2])
            return
        if iter(bands) is not bands and not any(isinstance(op, (FastBlock, FastStem)) for op in ops[:cut]):
            stats = _gn_stats(ops, cut, source, height, width, fraction)  # replay the input: nothing kept
            yield from _run(_Chain(ops, height, stats, width), source(), fraction)
            return
        head = _Chain(ops[:cut], height, {}, width)
        mid = _collect(_run(head, source(), fraction), head.n_out) if cut else \
            _collect(source(), height).contiguous(memory_format=_CL)
        del head
        rows = max(1, math.ceil(fraction * mid.shape[2]))
        stats = _gn_stats(ops[cut:], 0, lambda: mid.split(rows, dim=2), mid.shape[2], mid.shape[3],
                          rows / mid.shape[2])
        tail = _Chain(ops[cut:], mid.shape[2], stats, mid.shape[3])
        yield from _run(tail, mid.split(rows, dim=2), rows / mid.shape[2])


def tiled_apply(net: FastNet, x: torch.Tensor, band_rows: int,
                prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Exact banded equivalent of `net(prepare(x))` (up to the kernels' rounding), x (B, C, H, W); `prepare`
    (applied band by band) returns the net's dtype; without it x is in that dtype already. The result is
    float32 when the net computes in bf16/fp16 (exactly the same values): the callers widen the output anyway, so
    the narrow copy of the whole output is never held beside the wide one."""
    n_out = height_out(net, x.shape[2])
    wide = torch.promote_types(x.dtype, torch.float32)
    source = Bands(x, band_rows, x.dtype, prepare)
    bands = (b.to(wide) for b in stream_apply(net, source, x.shape[2], x.shape[3], band_rows))
    return _collect(bands, n_out, torch.contiguous_format)


def height_out(net: FastNet, height: int) -> int:
    for op in ops_of(net):
        height = geometry(op).out_rows(height)
    return height


def describe(net: FastNet) -> list[dict[str, Any]]:
    """Each op with its declared geometry (for docs and debugging)."""
    out = []
    for op in ops_of(net):
        g: Geometry = geometry(op)
        out.append({"op": type(op).__name__, "up": g.up, "down": g.down, "before": g.before, "after": g.after,
                    "global_stats": g.global_stats})
    return out
