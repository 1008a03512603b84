"""Where a run computes: the device (the local rank's GPU under torchrun) and the autocast dtype it supports."""

from __future__ import annotations

import torch
import torch.distributed as dist


def resolve_device(device: str, local_rank: int) -> torch.device:
    from ..cli import _resolve_device

    device = _resolve_device(device)
    if device == "cuda" and dist.is_initialized():
        device = f"cuda:{local_rank}"
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32. ValueError when the device cannot do the asked precision."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu":
        bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        if precision == "fp16":
            raise ValueError("--precision fp16 needs a CUDA device (fp16 autocast with a grad scaler)")
        if precision == "bf16" or bf16:
            return torch.bfloat16
        return None
    if precision == "auto":
        return None
    raise ValueError(f"--precision {precision} is not supported on {device.type}; use fp32")
