"""`FastNet`: an encoder or decoder rebuilt from the fused layers (tinyae.engine.kernels), with the strip planner that
runs the layers of a resolution level on horizontal strips of rows that fit in cache."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from ..nets.blocks import Block, Clamp, Decoder, Encoder
from ..nets.layers import geometry
from .kernels import FastBlock, FastConv, FastStem, FastUpsampleConv, _is_3x3_same, _is_nearest_2x, _is_stem

_CL = torch.channels_last


class FastNet(nn.Module):
    """An Encoder or Decoder rebuilt by `optimize`: same function, channels_last, fused layers. Inference only."""

    def __init__(self, net: Encoder | Decoder, dtype: torch.dtype, fused: bool, rewrite: bool = True):
        super().__init__()
        self.clamp = isinstance(net, Decoder)
        self.fused = fused
        layers = list(net.layers)
        ops: list[nn.Module] = []
        i = 0
        while i < len(layers):
            layer = layers[i]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, Block):
                ops.append(FastBlock(layer, dtype, fused))
            elif rewrite and _is_stem(layer, nxt):
                ops.append(FastStem(layer, nxt, dtype, fused))
                i += 1
            elif isinstance(layer, nn.Conv2d):
                relu = isinstance(nxt, nn.ReLU)
                ops.append(FastConv.of(layer, relu, dtype, fused))
                i += relu
            elif (rewrite and isinstance(layer, nn.Upsample) and _is_nearest_2x(layer) and isinstance(nxt, nn.Conv2d)
                  and _is_3x3_same(nxt)):
                after = layers[i + 2] if i + 2 < len(layers) else None
                relu = isinstance(after, nn.ReLU)
                ops.append(FastUpsampleConv(nxt, relu, dtype, fused))
                i += 1 + relu
            elif isinstance(layer, (nn.Upsample, nn.ReLU, nn.SiLU, nn.GELU, nn.Mish, Clamp, nn.Identity,
                                    nn.PixelShuffle, nn.PixelUnshuffle)):
                ops.append(layer)  # parameter-free layers (and rearrangements) run as they are
            else:
                raise ValueError(f"optimize: unsupported layer {type(layer).__name__} in the network")
            i += 1
        self.ops = nn.Sequential(*ops)
        self.strips = _strip_plan(ops) if fused else None

    def _run(self, x: torch.Tensor, start: int, stop: int, top: bool = True, bottom: bool = True) -> torch.Tensor:
        """ops[start:stop] on x; `top`/`bottom`: x's first/last row is the image's (False in strips)."""
        for i in range(start, stop):
            op = self.ops[i]
            if isinstance(op, FastStem):
                x = op(x, top=top, bottom=bottom)
            else:
                x = op(x, overwrite=i > start) if isinstance(op, FastBlock) else op(x)
        return x

    def _run_strips(self, x: torch.Tensor, segment: Segment, in_use: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """One segment's ops on horizontal strips of rows (with a margin that absorbs the strip edges' wrong
        padding, then cropped), so their activations stay in cache, when its activations are larger than a strip.
        Exactly the unstriped result. (Full-width strips: oneDNN's kernels, the transposed convolution above all,
        run much slower on narrow tiles of odd widths, which 2D tiles with margins would be.)"""
        start, stop, up, down, margin, row_bytes = segment
        n, _, h, w = x.shape
        # float32 convolutions are compute-bound (~7x slower than bf16 on AMX): twice the bytes per strip, fewer
        # recomputed margin rows
        rows = max(8, STRIP_BYTES // max(1, row_bytes * w * min(2, x.element_size()))) // down * down
        if h <= rows + 2 * margin:
            return self._run(x, start, stop)
        out = None
        for b in range(n):
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                lo, hi = max(0, r0 - margin), min(h, r1 + margin)
                y = self._run(x[b:b + 1, :, lo:hi], start, stop, top=lo == 0, bottom=hi == h)
                y = y[:, :, (r0 - lo) * up // down:(r1 - lo) * up // down]
                if out is None:
                    out = self._buffer(start, (n, y.shape[1], h * up // down, w * up // down), y, in_use)
                out[b:b + 1, :, r0 * up // down:r1 * up // down] = y
        return out

    def _buffer(self, segment: int, shape: tuple[int, ...], like: torch.Tensor,
                in_use: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """A channels_last buffer for the output of the segment starting at op `segment`, kept from the previous
        call when shape and dtype match: a fresh allocation of 32 MB and more is a new mmap whose pages fault in on
        every call (~5% of a 1024² decode). `forward` hands the buffers in `in_use` back when the call is over; a
        concurrent call on another thread finds none kept and allocates its own."""
        buf = self.__dict__.setdefault("_spare", {}).pop(segment, None)  # at most one kept per segment
        if buf is None or buf.shape != shape or buf.dtype != like.dtype:
            buf = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=_CL)
        in_use.append((segment, buf))
        return buf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and x.device.type != "cpu":
            raise ValueError(f"this model was optimized for the CPU but got a tensor on {x.device}; call optimize() "
                             "again after moving the original model")
        if torch.is_grad_enabled() and x.requires_grad:
            raise ValueError("an optimized model is inference-only; use the original model to backpropagate")
        with torch.no_grad():
            if self.clamp:
                x = torch.tanh(x / 3) * 3
            x = x.contiguous(memory_format=_CL)
            done, in_use = 0, []
            for segment in self.strips or ():
                x = self._run_strips(self._run(x, done, segment[0]), segment, in_use)
                done = segment[1]
            result = self._run(x, done, len(self.ops)).contiguous()
            spare = self.__dict__.setdefault("_spare", {})
            for segment, buf in in_use:  # keep the segment buffers for the next call, unless one is the result
                if buf.untyped_storage().data_ptr() != result.untyped_storage().data_ptr():
                    spare[segment] = buf
            return result

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_spare"}


STRIP_BYTES = 8 << 20  # target size of the largest activation of one strip (fits this class of CPU caches)


def _geometry(op: nn.Module) -> tuple[int, int, int, int] | None:
    """(up, down, halo rows at the op's input, widest output channels) of a layer, None if it cannot be striped
    (GroupNorm statistics span the whole image; parameter-free resampling layers stay outside the strips)."""
    if not isinstance(op, (FastConv, FastUpsampleConv, FastBlock, FastStem, nn.ReLU, nn.SiLU, nn.GELU, nn.Mish)):
        return None
    g = geometry(op)
    if g.global_stats:
        return None
    width = {FastUpsampleConv: lambda: op.out_channels, FastConv: lambda: op.weight.shape[0],
             FastBlock: lambda: op.conv1.weight.shape[0], FastStem: lambda: op.conv1.weight.shape[0]}
    return g.up, g.down, g.halo, width[type(op)]() if type(op) in width else 0


Segment = tuple[int, int, int, int, int, int]  # (start, stop, up, down, margin, row elements): see _segment_plan


def _strip_plan(ops: Sequence[nn.Module]) -> list[Segment] | None:
    """Which ops may run on strips of rows: one segment per resolution level (the ops that read or write it, e.g.
    encoder: input conv, first block, first stride-2 conv; decoder: last upsampling, last block, output conv), for
    every level whose ops can be striped (no GroupNorm) and include a residual block. Whether a segment actually
    runs striped is decided per call from the input size (`FastNet._run_strips`). None when no level qualifies."""
    levels, level = [], 0
    for op in ops:
        g = _geometry(op)
        declared = geometry(op)  # resampling layers outside the strips still change the level
        up, down = (g[0], g[1]) if g else (declared.up, declared.down)
        levels.append((level, level + up.bit_length() - down.bit_length()))
        level = levels[-1][1]
    segments = []
    for top in sorted({max(a, b) for a, b in levels}, reverse=True):
        inside = [i for i, (a, b) in enumerate(levels) if max(a, b) == top]
        if inside == list(range(inside[0], inside[-1] + 1)):
            plan = _segment_plan(ops, inside[0], inside[-1] + 1)
            if plan is not None:
                segments.append(plan)
    return sorted(segments) or None


def _segment_plan(ops: Sequence[nn.Module], start: int, stop: int) -> Segment | None:
    """(start, stop, up, down, margin rows at the segment input, widest activation elements per segment-input row
    and column) for ops[start:stop], or None if they cannot be striped."""
    geos = [_geometry(op) for op in ops[start:stop]]
    if any(g is None for g in geos) or not any(isinstance(op, (FastBlock, FastStem)) for op in ops[start:stop]):
        return None
    up = down = 1
    for g in geos:
        up, down = up * g[0], down * g[1]
    if up > 1 and down > 1:
        return None
    margin = 0  # rows of context each op needs, walked back from the output
    for g in reversed(geos):
        margin = -(-margin // g[0]) * g[1] + g[2]
    margin = -(-margin // down) * down
    row_bytes = max(g[3] for g in geos) * up * up  # widest activation, per input row and column, in elements
    return start, stop, up, down, margin, row_bytes
