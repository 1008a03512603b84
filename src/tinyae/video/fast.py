"""`optimize()` for the video TAEs: the same layer lists with convolution + ReLU (and MemBlock's final conv + skip
+ ReLU) fused into one oneDNN call on CPU, weights prepacked and activations channels-last (tinyae.runtime's
FastConv), in float32 (the eager function up to rounding) or bfloat16.

The fused layers declare the same `Geometry` as what they replace, so both executors (parallel, streaming) and the
row-band tiling run them unchanged. The super decoders' depthwise 7x7 blocks stay as they are (channels-last).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..blocks import Clamp
from ..runtime import FastConv, _fused_available, resolve_precision
from .layers import Geometry, MemBlock, geometry
from .model import AutoencoderTinyVideo

_CL = torch.channels_last


def _cl(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    x = x if dtype is None else x.to(dtype)
    return x.contiguous(memory_format=_CL) if x.dim() == 4 else x


class Cast(nn.Module):
    """Back to float32 at the end of a lower-precision list (pointwise)."""

    geometry = Geometry(pointwise=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


class FusedConv(nn.Module):
    """conv [-> relu] as one FastConv; declares the conv's geometry."""

    def __init__(self, conv: nn.Conv2d, relu: bool, dtype: torch.dtype, fused: bool):
        super().__init__()
        self.op = FastConv.of(conv, relu, dtype, fused)
        self.geometry = geometry(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(_cl(x, self.op.weight.dtype))


class FusedMemBlock(nn.Module):
    """MemBlock with conv+ReLU fused and the last conv + skip + ReLU in one call."""

    geometry = MemBlock.geometry

    def __init__(self, block: MemBlock, dtype: torch.dtype, fused: bool):
        super().__init__()
        c = block.conv
        self.c1, self.c2 = FastConv.of(c[0], True, dtype, fused), FastConv.of(c[2], True, dtype, fused)
        self.c3 = FastConv.of(c[4], True, dtype, fused)
        self.skip = FastConv.of(block.skip, False, dtype, fused) if isinstance(block.skip, nn.Conv2d) else None

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        x = _cl(x)
        h = self.c2(self.c1(_cl(torch.cat([x, _cl(past)], 1))))
        return self.c3(h, residual=x if self.skip is None else self.skip(x))


class ChannelsLast(nn.Module):
    """Any other layer, fed channels-last inputs (its geometry is the layer's)."""

    def __init__(self, layer: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.layer, self.dtype = layer.to(dtype), dtype
        self.geometry = geometry(layer)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.layer(*(_cl(x, self.dtype) for x in xs))


def fuse(layers: nn.Sequential, dtype: torch.dtype = torch.float32, fused: bool | None = None) -> nn.Sequential:
    """The fused form of a video layer list (a new nn.Sequential; `layers` is unchanged)."""
    import copy

    fused = _fused_available() if fused is None else fused
    src, out, i = list(copy.deepcopy(layers)), [], 0
    while i < len(src):
        layer = src[i]
        nxt = src[i + 1] if i + 1 < len(src) else None
        if isinstance(layer, nn.Conv2d) and layer.groups == 1:
            relu = isinstance(nxt, nn.ReLU)
            out.append(FusedConv(layer, relu, dtype, fused))
            i += 2 if relu else 1
            continue
        if isinstance(layer, MemBlock):
            out.append(FusedMemBlock(layer, dtype, fused))
        elif isinstance(layer, (nn.ReLU, Clamp, nn.Identity, nn.Upsample, nn.PixelShuffle)):
            out.append(layer)
        else:
            out.append(ChannelsLast(layer, dtype))
        i += 1
    if dtype != torch.float32:
        out.append(Cast())
    return nn.Sequential(*out)


class OptimizedAutoencoderTinyVideo(AutoencoderTinyVideo):
    """What `optimize_video` returns: the AutoencoderTinyVideo API (parallel, streaming, tiling) over fused layer
    lists. Inference only; callers pass and receive their own dtype; `precision` says how it computes."""

    precision: str = "fp32"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # what inputs are converted to; the fused layers convert to their own dtype

    def preview(self, time: bool = True, space: bool = True) -> "OptimizedAutoencoderTinyVideo":
        return optimize_video(self.__dict__["_source"].preview(time, space), self.precision)

    def optimize(self, precision: str = "auto") -> "OptimizedAutoencoderTinyVideo":
        return optimize_video(self.__dict__["_source"], precision)

    def save_pretrained(self, *a: Any, **k: Any) -> None:
        self.__dict__["_source"].save_pretrained(*a, **k)

    def save_original(self, *a: Any, **k: Any) -> None:
        self.__dict__["_source"].save_original(*a, **k)


def optimize_video(model: AutoencoderTinyVideo, precision: str = "auto") -> OptimizedAutoencoderTinyVideo:
    """A fast copy of `model` (CPU: fused oneDNN convolutions; see the module docstring); `model` is unchanged.

    precision: "auto" (bfloat16 on CPUs with AVX512-BF16/AMX, else float32; float16 on CUDA), "fp32", "bf16",
    "fp16". Streaming (`stream_encoder`/`stream_decoder`) and `enable_tiling` work on the result as on `model`."""
    if not isinstance(model, AutoencoderTinyVideo):
        raise ValueError(f"optimize_video expects a tinyae AutoencoderTinyVideo, got {type(model).__name__}")
    if isinstance(model, OptimizedAutoencoderTinyVideo):
        model = model.__dict__["_source"]
    device = model.device
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"optimize supports CPU and CUDA models, this one is on {device}")
    dtype = resolve_precision(precision, device)
    fused = device.type == "cpu" and _fused_available()
    fast = OptimizedAutoencoderTinyVideo(model.config, encoder=False, decoder=False)
    fast.encoder = fuse(model.encoder, dtype, fused) if model.encoder is not None else None
    fast.decoder = fuse(model.decoder, dtype, fused) if model.decoder is not None else None
    fast.tile_rows = model.tile_rows
    fast.precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    fast.__dict__["_source"] = model
    return fast.to(device).eval()
