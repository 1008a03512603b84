"""Sizes the streaming executor (`fast_stream`) plans with: the bytes each fused op emits per pixel, and the widest
activation of a GroupNorm stage."""

from __future__ import annotations

import torch.nn as nn

from ..nets.layers import geometry


def _activation_bytes(op: nn.Module) -> int:
    """Bytes per pixel of what `op` emits: its output channels (an upsample conv's own, not its 4 phases) times
    the element size (1 between int8 ops, whose float parameters are only biases and scales; else the float
    weights'). Parameter-free ops count as 64 float32 channels."""
    last = next((sub for sub in (getattr(op, n, None) for n in ("conv3", "conv")) if hasattr(sub, "weight")), op)
    weight = getattr(last, "weight", None)
    if weight is None:
        return 64 * 4
    channels = getattr(op, "out_channels", None) or weight.shape[0]
    if hasattr(last, "out_dtype"):  # an int8 QConv: uint8 out, or its float out_dtype
        return channels * (1 if last.out is not None else last.out_dtype.itemsize)
    return channels * weight.element_size()


def _stage_bytes(ops: list[nn.Module], cut: int, last: int, height: int, width: int, batch: int) -> int:
    """Bytes of the widest activation of the GroupNorm stage ops[cut:last + 1] for a height x width input."""
    for op in ops[:cut]:
        g = geometry(op)
        height, width = g.out_rows(height), g.out_rows(width)  # every layer kind is square
    return batch * height * width * max(_activation_bytes(op) for op in ops[cut:last + 1])
