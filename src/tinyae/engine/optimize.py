"""Fast inference: `optimize()`, one call to the fastest encode/decode on this device (the fused layers in
tinyae.engine.kernels, assembled by tinyae.engine.fastnet).

`optimize(model)` returns a new model (the original is unchanged) whose encoder and decoder are rebuilt for inference:

- channels_last activations (what oneDNN and cuDNN convolutions want);
- on CPU, every convolution runs through oneDNN with its ReLU, and in the residual blocks the skip addition and the
  final ReLU, fused into the convolution (`torch.ops.mkldnn._convolution_pointwise`): no separate memory passes;
- weights prepacked in oneDNN's blocked layout (per input shape), instead of reordered inside every call;
- nearest 2x upsample + 3x3 convolution is rewritten on the low-resolution input (the same function with 16 instead
  of 36 multiply-adds per low-resolution pixel and output channel, and no upsampled input): on CPU one stride-2
  transposed convolution, elsewhere a 2x2 convolution with 4x the output channels, interleaved;
- the encoder's input convolution and the first convolution of the block after it (two linear maps in a row) are
  composed into one 5x5 convolution on the 3-channel image, the border ring recomputed exactly (`FastStem`);
- on CPU, the layers of every resolution level whose activations exceed a strip run on horizontal strips of rows
  that fit in cache (with a margin of rows that absorbs the strip edges, then cropped: bitwise the same result);
- weights stored in the compute precision: bfloat16 on CPUs with AVX512-BF16 / AMX, float16 on CUDA, else float32.

Callers keep passing and receiving their own dtype (AutoencoderTiny casts at the boundary). See docs/performance.md.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Sequence

import torch

from ..nets.model import AutoencoderTinyBase
from .fastnet import FastNet
from .precision import _fused_available, resolve_precision


# ---------------------------------------------------------------------------------------------- optimize
class Optimized:
    """What an optimized copy adds to its model class (mixed in before it; tinyae.AutoencoderTiny's is
    OptimizedAutoencoderTiny): inference only. `precision` ("fp32", "bf16", "fp16") and `dtype` say how it computes;
    `save_pretrained`/`save_original` write, and `optimize` starts again from, the model it was built from
    (`__dict__["_source"]`).
    """

    precision: str = "fp32"

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        **kwargs: Any) -> None:
        self.__dict__["_source"].save_pretrained(save_directory, safe_serialization=safe_serialization, **kwargs)

    def save_original(self, folder: str | os.PathLike, name: str, format: str = "safetensors") -> list[str]:
        return self.__dict__["_source"].save_original(folder, name, format=format)

    def enable_gradient_checkpointing(self) -> None:
        raise ValueError("an optimized model is inference-only; enable gradient checkpointing on the original")

    def optimize(self, precision: str = "auto", **kw: Any) -> "Optimized":
        return optimize(self.__dict__["_source"], precision, **kw)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", precision={self.precision}"


class OptimizedAutoencoderTinyBase(Optimized, AutoencoderTinyBase):
    """What `optimize` returns for a bare network (a class without an `optimized_class`)."""


def optimize(model: AutoencoderTinyBase, precision: str = "auto", *, rewrite: bool = True, compile: bool = False,
             cuda_graphs: bool = False, calibration: Sequence[torch.Tensor] | None = None) -> Optimized:
    """A copy of `model` whose encode/decode run as fast as this device allows; `model` itself is unchanged.

    precision: "auto" (CPU: bfloat16 with AVX512-BF16/AMX, else float32, and int8 for released weights with a
      shipped calibration on CPUs with AVX512-VNNI/AMX-INT8 (tinyae.engine.calibration); CUDA: float16), "fp32" (the eager
      function up to float32 rounding: decoded images within 1e-5), "bf16" or "fp16" (>= 40 dB PSNR against fp32
      eager on real photos). Callers still pass and receive their own dtype.
    rewrite: compute nearest-2x-upsample + 3x3 conv as a 2x2 conv on the low-resolution input (same function).
    compile: wrap encoder and decoder in torch.compile (CUDA; on CPU the fused oneDNN path is already faster).
    cuda_graphs: with compile on CUDA, capture CUDA graphs (mode "reduce-overhead"); best for fixed shapes.
    precision "int8" (CPU, `tinyae.engine.quant`): int8 convolutions calibrated on `calibration` (real images in
      [-1, 1], a few 256² crops of the kind you will encode); not part of "auto" (see docs/performance.md).
    The result is inference-only (inputs that require grad raise ValueError) and tied to the model's device. Its
    class is the model class's `optimized_class` (tinyae.AutoencoderTiny: OptimizedAutoencoderTiny, a subclass).
    """
    if not isinstance(model, AutoencoderTinyBase):
        raise ValueError(f"optimize expects a tinyae AutoencoderTiny, got {type(model).__name__}")
    if isinstance(model, Optimized):
        model = model.__dict__["_source"]
    if precision == "int8":
        from .quant import optimize_int8

        return optimize_int8(model, calibration)
    if not isinstance(compile, bool) or not isinstance(cuda_graphs, bool) or not isinstance(rewrite, bool):
        raise ValueError("rewrite, compile and cuda_graphs must be bools")
    device = model.device
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"optimize supports CPU and CUDA models, this one is on {device}")
    if cuda_graphs and not (compile and device.type == "cuda"):
        raise ValueError("cuda_graphs=True needs compile=True and a model on CUDA")
    dtype = resolve_precision(precision, device)
    fused = device.type == "cpu" and _fused_available()
    cfg = model.config
    cls = getattr(type(model), "optimized_class", OptimizedAutoencoderTinyBase)
    fast = cls(**cfg.init_kwargs(), has_encoder=False, has_decoder=False)
    if model.encoder is not None:
        fast.encoder = FastNet(model.encoder, dtype, fused, rewrite)
    if model.decoder is not None:
        fast.decoder = FastNet(model.decoder, dtype, fused, rewrite)
    if model.encoder is None and model.decoder is None:
        raise ValueError("the model has neither encoder nor decoder")
    fast.to(device)
    for name in ("latent_magnitude", "latent_shift", "scaling_factor", "use_slicing", "use_tiling", "check_finite"):
        setattr(fast, name, getattr(model, name))
    fast.tiling_options = dict(model.tiling_options)
    fast.precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if precision == "auto" and fused and rewrite and not compile:
        _auto_int8(model, fast)
    fast.__dict__["_source"] = model  # kept out of the module tree: not in parameters() or state_dict()
    if compile:
        mode = "reduce-overhead" if cuda_graphs else None
        for part in (fast.encoder, fast.decoder):
            if part is not None:
                part.forward = torch.compile(part.forward, mode=mode, dynamic=False)
    return fast.eval()


def _auto_int8(model: AutoencoderTinyBase, fast: Optimized) -> None:
    """"auto" on a CPU with int8 dot products: int8 for the parts whose weights have a shipped calibration (measured
    >= 40 dB against fp32 on held-out photos; tinyae.engine.calibration), the float precision for the others."""
    from .calibration import apply_known, int8_in_hardware

    if not int8_in_hardware():
        return
    done = apply_known(model, fast)
    if not done:
        return
    present = [p for p in ("encoder", "decoder") if getattr(fast, p) is not None]
    fast.precision = "int8" if done == present else ", ".join(
        f"{p} {'int8' if p in done else fast.precision}" for p in present)


def copy_float32_cpu(model: AutoencoderTinyBase) -> AutoencoderTinyBase:
    """The eager model as float32 on the CPU (a copy when a cast or move is needed; `model` is unchanged)."""
    if isinstance(model, Optimized):
        model = model.__dict__["_source"]
    if model.dtype == torch.float32 and model.device.type == "cpu":
        return model
    return copy.deepcopy(model).float().cpu()

