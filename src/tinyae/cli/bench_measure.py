"""Measuring for `tinyae bench`: median timing, the machine's convolution ceiling, FLOPs of the original network's
convolutions, PSNR against the reference, and the facts about the machine each figure is reported with."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_flops(model: nn.Module, run: Callable[[], Any]) -> int:
    """Floating-point operations (2 per multiply-add) of every Conv2d that `run()` calls in `model`."""
    total = 0

    def hook(mod: nn.Conv2d, inputs: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += 2 * out.numel() * (mod.in_channels // mod.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in handles:
            h.remove()
    return total


def median_time(fn: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], None] = lambda: None
                ) -> tuple[float, list[float]]:
    """Median wall time in seconds of `fn()` over `repeats` runs after `warmup` runs; also all the times."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def ceiling_probe(dtype: torch.dtype, device: torch.device, size: int, batch: int = 1
                  ) -> tuple[Callable[[], Any], int]:
    """(fn, FLOPs): a 64->64 3x3 convolution on a (batch, 64, size, size) channels_last input in `dtype`."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 64, size, size, generator=gen).to(device, dtype).contiguous(
        memory_format=torch.channels_last)
    w = (torch.randn(64, 64, 3, 3, generator=gen) * 0.05).to(device, dtype).contiguous(
        memory_format=torch.channels_last)
    b = torch.zeros(64, device=device, dtype=dtype)
    return (lambda: F.conv2d(x, w, b, padding=1)), 2 * 64 * 64 * 9 * size * size * batch


def conv_ceiling(dtype: torch.dtype, device: torch.device, size: int, repeats: int, warmup: int,
                 batch: int = 1) -> float:
    """GFLOP/s of a 64->64 3x3 convolution on a (batch, 64, size, size) channels_last input in `dtype`."""
    fn, flops = ceiling_probe(dtype, device, size, batch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t, _ = median_time(fn, repeats, warmup, sync)
    return flops / t / 1e9


CEILING_SIZES = (128, 256)  # larger activations spill out of cache and measure the memory system instead


def best_conv(dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """The machine's convolution ceiling in GFLOP/s: the best `conv_ceiling` over CEILING_SIZES (CUDA: batch 8)."""
    return best_conv_size(dtype, device, repeats)[0]


def best_conv_size(dtype: torch.dtype, device: torch.device, repeats: int) -> tuple[float, int]:
    """(GFLOP/s, size) of the best `conv_ceiling` over CEILING_SIZES (CUDA: batch 8)."""
    batch = 8 if device.type == "cuda" else 1
    return max((round(conv_ceiling(dtype, device, s, repeats, 2, batch), 1), s) for s in CEILING_SIZES)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (clamped); inf when equal."""
    from ..data.metrics import tensor_psnr

    return tensor_psnr(a, b)


def machine_info() -> dict[str, Any]:
    from ..engine.precision import cpu_flags

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_fp16", "avx512_fp16"})
    info = {"date": _dt.datetime.now().astimezone().isoformat(timespec="minutes"), "cpu": cpu,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu_flags": flags,
            "torch": torch.__version__, "python": platform.python_version()}
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    for mod in ("diffusers", "onnxruntime", "openvino"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
