"""Device facts and precisions: what `optimize(precision="auto")` resolves to on this machine, and why."""

from __future__ import annotations

from typing import Any

import torch


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INT8_FLAGS = {"avx512_vnni", "amx_int8", "avx_vnni"}  # int8 dot products in hardware (int8 needs one)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------- device facts
def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; elsewhere what torch reports), e.g. {"amx_bf16", ...}."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    flags = set()
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported",
              "amx_fp16": "_is_amx_fp16_supported"}
    for flag, probe in probes.items():
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            flags.add(flag)
    return flags


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16), so bf16 convolutions pay off."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"}) and torch.backends.mkldnn.is_available()


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """The compute dtype for `precision` ("auto", "fp32", "bf16", "fp16") on `device`.

    "auto": CPU -> bfloat16 where the processor supports it in hardware, else float32; CUDA -> float16.
    Raises ValueError for an unknown name or a precision the device cannot run.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return torch.float16
        return torch.bfloat16 if kind == "cpu" and cpu_has_fast_bf16() else torch.float32
    dtype = _DTYPES[precision]
    if kind == "cpu" and dtype == torch.float16 and not torch.ops.mkldnn._is_mkldnn_fp16_supported():
        raise ValueError("precision='fp16' needs a CPU with AVX512-FP16 (or AMX-FP16); use 'bf16' or 'fp32'")
    if kind == "cpu" and dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise ValueError("precision='bf16' needs a CPU with AVX512 (fast with AVX512-BF16 / AMX); use 'fp32'")
    return dtype


def explain_precision(device: torch.device | str = "cpu", model: Any = None) -> tuple[str, str]:
    """(what precision="auto" resolves to on `device`, why), e.g. ("bf16", "CPU with avx512_bf16"). With `model`
    (an AutoencoderTiny), for its weights: "int8" where they have a shipped, gated int8 calibration."""
    kind = torch.device(device).type
    if kind == "cuda":
        return "fp16", f"CUDA device {torch.cuda.get_device_name(torch.device(device))}"
    if kind != "cpu":
        return "exact", f"optimize() supports CPU and CUDA, not {kind}"
    fast = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    if fast and torch.backends.mkldnn.is_available():
        why = f"CPU with {' and '.join(fast)} (bfloat16 in hardware; >= 40 dB against fp32 on real photos)"
        from .calibration import int8_in_hardware, known, shipped

        if int8_in_hardware() and shipped():
            flags = " and ".join(sorted(cpu_flags() & INT8_FLAGS))
            if model is None:
                names = sorted({f"{e['variant']} {e['part']}" for e in shipped().values()})
                return "bf16", why + f"; int8 with {flags} for the weights calibrated and gated >= 40 dB ({', '.join(names)})"
            parts = [p for p in ("encoder", "decoder") if getattr(model, p, None) is not None]
            int8 = [p for p in parts if known(getattr(model, p)) is not None]
            if int8:
                what = "int8" if int8 == parts else ", ".join(f"{p} {'int8' if p in int8 else 'bf16'}" for p in parts)
                return what, (f"CPU with {flags} (int8 in hardware) and {', '.join(int8)} weights with a shipped int8 "
                              "calibration, >= 40 dB against fp32 on held-out photos")
        return "bf16", why
    return "fp32", "CPU without AVX512-BF16 or AMX (bfloat16 would be emulated and slower)"


def _fused_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")

