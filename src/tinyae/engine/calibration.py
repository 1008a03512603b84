"""Shipped int8 calibrations: the activation ranges of released weights, recorded on real photos, so that
`optimize(model, "auto")` runs int8 (tinyae.engine.quant) exactly where it was measured to keep >= 40 dB PSNR
against float32 on held-out photos, and bf16 everywhere else (docs/performance.md).

`int8_calibration.json` (beside this module) maps a network's fingerprint (`fingerprint`: sha256 of its float32
weights, so the same weights match from any file format) to what `quantize` needs and where it came from:

    {"<sha256>": {"variant": "taef2", "part": "decoder", "ranges": [[lo, hi], ...],
                  "calibrated_on": [...photo names...], "held_out_psnr_db": {...}}}

It is written by `benchmarks/int8_calibrate.py` (real weights and photos from ../shared, never shipped) and checked
against a fresh calibration by tests/test_quant.py. Unknown weights (a fine-tune, random weights, another variant)
are not in it, so "auto" keeps them in bf16: int8 is never chosen without a measured quality gate.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from .precision import INT8_FLAGS, cpu_flags

CALIBRATION_FILE = Path(__file__).with_name("int8_calibration.json")


def fingerprint(net: nn.Module) -> str:
    """sha256 of a network's weights as float32 (parameter names, shapes and values in state_dict order)."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def shipped() -> dict[str, dict[str, Any]]:
    """The calibrations in int8_calibration.json ({} when the file is absent)."""
    if not CALIBRATION_FILE.is_file():
        return {}
    return json.loads(CALIBRATION_FILE.read_text(encoding="utf-8"))


def int8_in_hardware() -> bool:
    """True when the CPU has int8 dot products (AVX512-VNNI, AVX-VNNI or AMX-INT8) and torch has oneDNN's int8
    convolutions: only then is int8 faster than bf16, and only then correct: without VNNI, oneDNN multiplies u8 x s8
    pairs into saturating int16 sums (oneDNN's "Nuances of int8 Computations"); measured on an AVX2-only AMD EPYC,
    taef2's int8 encode lands at 29.7 dB against fp32 (47 dB with VNNI), so `optimize("int8")` refuses there."""
    from .quant import available

    return available() and bool(cpu_flags() & INT8_FLAGS)


def known(net: nn.Module | None) -> dict[str, Any] | None:
    """The shipped calibration of this eager network's weights, or None."""
    return None if net is None else shipped().get(fingerprint(net))


def apply_known(model: nn.Module, fast: nn.Module) -> list[str]:
    """Quantize the parts of `fast` (an optimize()d copy of `model` for the CPU) whose weights have a shipped
    calibration; return their names ("encoder", "decoder"). Other parts stay as they are."""
    from .quant import float_ops, quantize, stored_ranges, upsample_originals

    done = []
    for part in ("encoder", "decoder"):
        net, fnet = getattr(model, part, None), getattr(fast, part, None)
        entry = known(net) if fnet is not None and fnet.fused else None
        ranges = stored_ranges(fnet, entry["ranges"]) if entry else None
        if ranges is None:
            continue
        originals = upsample_originals(fnet, net) if part == "decoder" else None
        quantize(fnet, None, originals, keep=float_ops(fnet), ranges=ranges)
        done.append(part)
    return done


def calibrate(model: nn.Module, images: Sequence[torch.Tensor]) -> dict[str, list[list[float]]]:
    """{"encoder": ranges, "decoder": ranges} of `model` (real weights) on `images` (B, 3, H, W) in [-1, 1], as
    `optimize(model, "int8", calibration=images)` records them: what int8_calibration.json stores."""
    from .optimize import optimize
    from .precision import cpu_has_fast_bf16
    from .quant import _ranges, range_list

    fast = optimize(model, "bf16" if cpu_has_fast_bf16() else "fp32")
    out: dict[str, list[list[float]]] = {}
    with torch.inference_mode():
        if fast.encoder is not None:
            r = _ranges(fast.encoder, lambda: [fast.encode(x) for x in images])
            out["encoder"] = [list(v) for v in range_list(fast.encoder, r)]
        if fast.decoder is not None:
            zs = [model.encode(x).latents for x in images]
            r = _ranges(fast.decoder, lambda: [fast.decode(z) for z in zs])
            out["decoder"] = [list(v) for v in range_list(fast.decoder, r)]
    return out
