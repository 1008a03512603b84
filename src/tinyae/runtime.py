"""Fast inference: `optimize()` (one call to the fastest encode/decode on this device), ONNX export and an
onnxruntime backend.

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

import argparse
import copy
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import Block, Clamp, Decoder, Encoder
from .layers import Geometry, declare, geometry
from .model import AutoencoderTiny, AutoencoderTinyOutput, DecoderOutput, MissingPartError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_CL = torch.channels_last


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


def explain_precision(device: torch.device | str = "cpu") -> tuple[str, str]:
    """(what precision="auto" resolves to on `device`, why), e.g. ("bf16", "CPU with avx512_bf16")."""
    kind = torch.device(device).type
    if kind == "cuda":
        return "fp16", f"CUDA device {torch.cuda.get_device_name(torch.device(device))}"
    if kind != "cpu":
        return "exact", f"optimize() supports CPU and CUDA, not {kind}"
    fast = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    if fast and torch.backends.mkldnn.is_available():
        return "bf16", f"CPU with {' and '.join(fast)} (bfloat16 in hardware; >= 40 dB against fp32 on real photos)"
    return "fp32", "CPU without AVX512-BF16 or AMX (bfloat16 would be emulated and slower)"


def _fused_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


# ---------------------------------------------------------------------------------------------- fused layers
def _param(t: torch.Tensor | None, dtype: torch.dtype, channels_last: bool = False) -> nn.Parameter | None:
    if t is None:
        return None
    t = t.detach().to(dtype)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=_CL)
    return nn.Parameter(t.contiguous() if not channels_last else t, requires_grad=False)


PACKED_PER_LAYER = 8  # prepacked weight layouts kept per convolution (one per input shape seen, oldest dropped)


class _Prepacked(nn.Module):
    """A CPU convolution whose `weight` is also kept in oneDNN's blocked layout, per input shape (the layout
    depends on it): an unpacked weight is reordered again inside every oneDNN call. Packing only permutes the
    weights, so results are bitwise the same. Copies and pickles carry the plain weight only."""

    weight: nn.Parameter

    def _packed_for(self, x: torch.Tensor, pack: Callable[[torch.Tensor, list[int]], torch.Tensor]) -> torch.Tensor:
        """`pack(weight, input_shape)`, cached per input shape; rebuilt when the weight is replaced or changed."""
        w = self.weight
        key = (tuple(x.shape), w.dtype, w.data_ptr(), -1 if w.is_inference() else w._version)
        cache = self.__dict__.setdefault("_packed", {})
        packed = cache.get(key)
        if packed is None:
            packed = pack(w, list(x.shape))
            if len(cache) >= PACKED_PER_LAYER:
                cache.pop(next(iter(cache)))
            cache[key] = packed
        return packed

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_packed": {}}


class FastConv(_Prepacked):
    """conv(x) [+ residual] [-> relu] in one oneDNN call on CPU (`fused`, weights prepacked), else conv2d +
    in-place ops."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
                 relu: bool, dtype: torch.dtype, fused: bool):
        super().__init__()
        self.weight = _param(weight, dtype, channels_last=True)
        self.bias = _param(bias, dtype)
        self.stride, self.padding, self.relu, self.fused = stride, padding, relu, fused

    def packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight in oneDNN's layout for inputs shaped like `x` (CPU)."""
        p, s = [self.padding] * 2, [self.stride] * 2
        return self._packed_for(x, lambda w, shape: torch.ops.mkldnn._reorder_convolution_weight(
            w, p, s, [1, 1], 1, shape))

    @classmethod
    def of(cls, conv: nn.Conv2d, relu: bool, dtype: torch.dtype, fused: bool) -> "FastConv":
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"unsupported convolution {conv} (tinyae networks use plain convolutions)")
        if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
            raise ValueError(f"unsupported convolution {conv}: anisotropic stride or padding")
        return cls(conv.weight, conv.bias, conv.stride[0], conv.padding[0], relu, dtype, fused)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, overwrite: bool = False
                ) -> torch.Tensor:
        """conv(x) [+ residual] [-> relu]; `overwrite` lets the result reuse `residual`'s memory (CPU)."""
        p, s = [self.padding] * 2, [self.stride] * 2
        if self.fused:
            relu = "relu" if self.relu else None
            w = self.packed_weight(x)
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(x, w, self.bias, p, s, [1, 1], 1, relu or "none", [], "")
            if overwrite:  # no new allocation: fresh large tensors cost page faults on every call
                return torch.ops.mkldnn._convolution_pointwise_.binary(
                    residual, x, w, self.bias, p, s, [1, 1], 1, "add", None, relu, [], None)
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, w, self.bias, p, s, [1, 1], 1, "add", None, relu, [], None)
        y = F.conv2d(x, self.weight, self.bias, s, p)
        if residual is not None:
            y = y.add_(residual)
        return y.relu_() if self.relu else y


def upsample_conv_weights(weight: torch.Tensor, bias: torch.Tensor | None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights of the 2x2 convolution that equals nearest-2x-upsample followed by a 3x3 convolution (padding 1).

    Output pixel (2i+a, 2j+b) of the original reads low-resolution rows i-1..i (a=0) or i..i+1 (a=1), so its 3x3
    kernel collapses to 2x2: rows/columns that land on the same input pixel are summed. Returns the weight
    (4*C_out, C_in, 2, 2) with output channel (2a+b)*C_out + c for phase (a, b), and the bias repeated 4x.
    """
    w = weight.detach().double()
    collapse = torch.tensor([[[1.0, 0, 0], [0, 1, 1]], [[1.0, 1, 0], [0, 0, 1]]], dtype=w.dtype, device=w.device)
    phases = [torch.einsum("ik,ockl,jl->ocij", collapse[a], w, collapse[b]) for a in (0, 1) for b in (0, 1)]
    new_bias = None if bias is None else bias.detach().repeat(4)
    return torch.cat(phases).to(weight.dtype), new_bias


def interleave_phases(z: torch.Tensor) -> torch.Tensor:
    """(B, 4C, H+1, W+1) output of the 2x2 upsample convolution -> (B, C, 2H, 2W), channels_last.

    Phase (a, b) (channels (2a+b)*C ...) holds the output pixels (2i+a, 2j+b) at positions (i+a, j+b).
    """
    n, c4, h1, w1 = z.shape
    c, h, w = c4 // 4, h1 - 1, w1 - 1
    zp = z.view(n, 2, 2, c, h1, w1)
    out = torch.empty((n, h, 2, w, 2, c), dtype=z.dtype, device=z.device)
    for a in (0, 1):
        for b in (0, 1):
            out[:, :, a, :, b, :] = zp[:, a, b, :, a:a + h, b:b + w].permute(0, 2, 3, 1)
    return out.view(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def upsample_deconv_weights(weight: torch.Tensor) -> torch.Tensor:
    """Weights (C_in, C_out, 4, 4) of the stride-2 transposed convolution (padding 1) that equals nearest-2x-upsample
    followed by a 3x3 convolution (padding 1), the bias unchanged.

    The transposed convolution adds input pixel i into output rows 2i-1..2i+2 with taps k = 0..3; output row 2i
    reads the upsampled rows 2i-1 (input i-1: 3x3 row 0) and 2i, 2i+1 (input i: rows 1 + 2), row 2i+1 reads input i
    (rows 0 + 1) and i+1 (row 2). So along each axis the taps are (w2, w1 + w2, w0 + w1, w0).
    """
    w = weight.detach().double()
    taps = torch.tensor([[0.0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=w.dtype, device=w.device)
    return torch.einsum("kr,ocrs,ls->cokl", taps, w, taps).to(weight.dtype)


class FastUpsampleConv(_Prepacked):
    """nearest 2x upsample + 3x3 conv (stride 1, padding 1) [+ relu], computed on the low-resolution input.

    On CPU (`fused`) one oneDNN stride-2 transposed convolution writes the full-resolution output directly
    (`upsample_deconv_weights`); elsewhere a 2x2 convolution with 4x the channels followed by `interleave_phases`.
    Both do 16 instead of 36 multiply-adds per low-resolution pixel and output channel.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool, dtype: torch.dtype, fused: bool):
        super().__init__()
        self.fused, self.relu = fused, relu
        self.out_channels = conv.out_channels
        if fused:
            self.weight = _param(upsample_deconv_weights(conv.weight), dtype, channels_last=True)
            self.bias = _param(conv.bias, dtype)
        else:
            w, b = upsample_conv_weights(conv.weight, conv.bias)
            self.conv = FastConv(w, b, 1, 1, relu, dtype, fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return interleave_phases(self.conv(x))
        args = ([1, 1], [0, 0], [2, 2], [1, 1], 1)  # padding, output padding, stride, dilation, groups
        w = self._packed_for(x, lambda w, shape: torch.ops.mkldnn._reorder_convolution_transpose_weight(
            w, *args, shape))
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x, w, self.bias, *args, "relu" if self.relu else "none", [], "")


def compose_conv_weights(first: nn.Conv2d, second: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of the one convolution that equals `second(first(x))` for two stride-1 convolutions with
    "same" zero padding and nothing between them, away from the image border: a (k1 + k2 - 1)-wide kernel with
    padding (k1 + k2 - 2) / 2. Along each axis output pixel y reads first() at y + d - p2, which reads x at
    y + d + u - p1 - p2, so the kernels convolve. Computed in float64, returned in `second`'s dtype.
    """
    w0, w1 = first.weight.detach().double(), second.weight.detach().double()
    k0, k1 = w0.shape[-1], w1.shape[-1]
    w = w0.new_zeros(w1.shape[0], w0.shape[1], k0 + k1 - 1, k0 + k1 - 1)
    for dy in range(k1):
        for dx in range(k1):
            w[:, :, dy:dy + k0, dx:dx + k0] += torch.einsum("om,mcuv->ocuv", w1[:, :, dy, dx], w0)
    bias = None if second.bias is None else second.bias.detach().double()
    if first.bias is not None:
        carried = w1.sum((2, 3)) @ first.bias.detach().double()
        bias = carried if bias is None else bias + carried
    return w.to(second.weight.dtype), None if bias is None else bias.to(second.weight.dtype)


def _is_stem(conv: nn.Module, block: nn.Module | None) -> bool:
    """conv (3x3, same padding, no activation after it) followed by a plain residual Block (ReLU, identity skip,
    no GroupNorm branch) whose first convolution is 3x3: fusing the two pays when conv has few input channels."""
    if not (isinstance(conv, nn.Conv2d) and _is_3x3_same(conv) and isinstance(block, Block)):
        return False
    c1, a1 = block.conv[0], block.conv[1]
    return (block.pool is None and isinstance(block.skip, nn.Identity) and isinstance(a1, nn.ReLU)
            and _is_3x3_same(c1) and 25 * conv.in_channels < 9 * conv.out_channels)


class FastStem(nn.Module):
    """The encoder's input convolution and first residual Block: h = conv0(x), relu(conv3(relu(conv2(relu(
    conv1(h))))) + h).

    conv1(conv0(x)) is linear in x, so it runs as one 5x5 convolution on the 3-channel image
    (`compose_conv_weights`): 3x25 instead of 3x9 + 64x9 multiply-adds per pixel and output channel, and the
    3-channel input is read once more instead of a 64-channel activation. The fused kernel differs from the two
    convolutions only on the outermost ring of pixels, where conv1 reads conv0's zero padding; those rows and
    columns are recomputed with the two original convolutions. conv0(x) itself is still needed for the skip.
    """

    def __init__(self, conv0: nn.Conv2d, block: Block, dtype: torch.dtype, fused: bool):
        super().__init__()
        c1, _, c2, _, c3 = block.conv
        self.conv0 = FastConv.of(conv0, False, dtype, fused)
        w, b = compose_conv_weights(conv0, c1)
        self.first = FastConv(w, b, 1, 2, True, dtype, fused)  # relu(conv1(conv0(x))) inside the border ring
        self.conv1 = FastConv.of(c1, True, dtype, fused)  # the border ring, from conv0's output
        self.conv2 = FastConv.of(c2, True, dtype, fused)
        self.conv3 = FastConv.of(c3, True, dtype, fused)  # + skip, then the block's fuse ReLU

    def forward(self, x: torch.Tensor, top: bool = True, bottom: bool = True) -> torch.Tensor:
        """x: images (never overwritten). `top` / `bottom`: x's first / last row is the image's (strips in the
        middle of the image skip that fix: their edge rows fall in the margin that is cropped away)."""
        n, _, h, w = x.shape
        skip = self.conv0(x)
        if h <= 6 or w <= 6:
            return self.conv3(self.conv2(self.conv1(skip)), residual=skip, overwrite=True)
        a = self.first(x)
        # the ring: output row 0 needs conv0 rows 0..1 (row -1 is zero padding), which need input rows 0..2
        if top:
            a[:, :, :1] = self.conv1(self.conv0(x[:, :, :3])[:, :, :2])[:, :, :1]
        if bottom:
            a[:, :, -1:] = self.conv1(self.conv0(x[:, :, -3:])[:, :, 1:])[:, :, -1:]
        cols = self.conv1(self.conv0(torch.cat([x[..., :3], x[..., -3:]]).contiguous(memory_format=_CL)))
        a[..., 0], a[..., -1] = cols[:n, ..., 0], cols[n:, ..., -1]
        return self.conv3(self.conv2(a), residual=skip, overwrite=True)


class FastBlock(nn.Module):
    """`blocks.Block` with fused convolutions: relu(conv3(relu(conv2(relu(conv1(x))))) + skip(x))."""

    def __init__(self, block: Block, dtype: torch.dtype, fused: bool):
        super().__init__()
        c1, a1, c2, a2, c3 = block.conv
        self.relu_inside = isinstance(a1, nn.ReLU)
        self.act = None if self.relu_inside else a1  # other activations run unfused (same module, no weights)
        self.conv1 = FastConv.of(c1, self.relu_inside, dtype, fused)
        self.conv2 = FastConv.of(c2, self.relu_inside, dtype, fused)
        self.conv3 = FastConv.of(c3, True, dtype, fused)  # + skip, then the block's fuse ReLU
        self.skip = None if isinstance(block.skip, nn.Identity) else FastConv.of(block.skip, False, dtype, fused)
        self.pool = None
        if block.pool is not None:  # taef2: x + conv(relu(groupnorm(conv(x)))), GroupNorm computed in float32
            p0, gn, _, p3 = block.pool
            self.pool_in = FastConv.of(p0, False, dtype, fused)
            self.pool_out = FastConv.of(p3, False, dtype, fused)
            self.gn_groups, self.gn_eps = gn.num_groups, gn.eps
            gn_dtype = torch.float32 if fused else dtype  # CPU: mixed-type GroupNorm; CUDA: stats in fp32 anyway
            self.gn_weight = _param(gn.weight, gn_dtype)
            self.gn_bias = _param(gn.bias, gn_dtype)
            self.pool = True

    def forward(self, x: torch.Tensor, overwrite: bool = False,
                stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`overwrite`: x belongs to the network (not the caller) and may be reused for the output. `stats`: the
        GroupNorm's (mean, rstd) per sample and group, (B, groups), of the whole image when x is a band of it
        (`tinyae.fast_stream`); None: computed from x."""
        if self.pool is not None:
            g = self.pool_in(x)
            if stats is None:  # statistics in float32 (mixed-type group_norm) even for bf16/fp16 activations
                g = F.group_norm(g, self.gn_groups, self.gn_weight, self.gn_bias, self.gn_eps).relu_()
            else:
                g = self.group_norm_with(g, *stats).relu_()
            x = self.pool_out(g.contiguous(memory_format=_CL), residual=x, overwrite=overwrite)
            overwrite = True
        skip = x if self.skip is None else self.skip(x)
        y = self.conv1(x)
        y = y if self.act is None else self.act(y)
        y = self.conv2(y)
        y = y if self.act is None else self.act(y)
        return self.conv3(y, residual=skip, overwrite=overwrite or self.skip is not None)

    def group_norm_with(self, g: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
        """GroupNorm of g with given statistics, as one per-channel scale and shift in float32 (keeps channels_last).
        y = (g - mean) * rstd * weight + bias = g * (rstd * weight) + (bias - mean * rstd * weight)."""
        per = g.shape[1] // self.gn_groups
        scale = rstd.float().repeat_interleave(per, dim=1) * self.gn_weight.float()
        shift = self.gn_bias.float() - mean.float().repeat_interleave(per, dim=1) * scale
        return (g.float() * scale[:, :, None, None] + shift[:, :, None, None]).to(g.dtype)


# Row geometry of the fused layers (tinyae.layers), derived from the layers each one computes.
@declare(FastConv)
def _fast_conv_geometry(op: FastConv) -> Geometry:
    k, s, p = op.weight.shape[-1], op.stride, op.padding
    return Geometry(down=s, before=p, after=k - p - s, pointwise=(k, s, p) == (1, 1, 0))


@declare(FastUpsampleConv)
def _fast_upsample_conv_geometry(op: FastUpsampleConv) -> Geometry:
    # output row r reads upsampled rows r-1..r+1, i.e. input rows (r-1)//2..(r+1)//2, within r//2 -1 .. r//2 + 1
    return Geometry(up=2, before=1, after=1)


@declare(FastBlock)
def _fast_block_geometry(op: FastBlock) -> Geometry:
    return Geometry(before=3, after=3, global_stats=op.pool is not None)  # three 3x3 convolutions in a row


@declare(FastStem)
def _fast_stem_geometry(op: FastStem) -> Geometry:
    return Geometry(before=4, after=4)  # conv0 (1 row), then the block's three 3x3 convolutions


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


def _is_nearest_2x(up: nn.Upsample) -> bool:
    return up.mode == "nearest" and up.size is None and up.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0))


def _is_3x3_same(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


# ---------------------------------------------------------------------------------------------- optimize
class OptimizedAutoencoderTiny(AutoencoderTiny):
    """What `optimize` returns: the AutoencoderTiny API over FastNet encoder/decoder. Inference only.

    `precision` ("fp32", "bf16", "fp16") and `dtype` say how it computes; `save_pretrained`/`save_original` write
    the original weights it was built from.
    """

    precision: str = "fp32"

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        **kwargs: Any) -> None:
        self.__dict__["_source"].save_pretrained(save_directory, safe_serialization=safe_serialization, **kwargs)

    def save_original(self, folder: str | os.PathLike, name: str, format: str = "safetensors") -> list[str]:
        return self.__dict__["_source"].save_original(folder, name, format=format)

    def enable_gradient_checkpointing(self) -> None:
        raise ValueError("an optimized model is inference-only; enable gradient checkpointing on the original")

    def optimize(self, precision: str = "auto", **kw: Any) -> "OptimizedAutoencoderTiny":
        return optimize(self.__dict__["_source"], precision, **kw)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", precision={self.precision}"


def optimize(model: AutoencoderTiny, precision: str = "auto", *, rewrite: bool = True, compile: bool = False,
             cuda_graphs: bool = False, calibration: Sequence[torch.Tensor] | None = None
             ) -> OptimizedAutoencoderTiny:
    """A copy of `model` whose encode/decode run as fast as this device allows; `model` itself is unchanged.

    precision: "auto" (CPU: bfloat16 with AVX512-BF16/AMX, else float32; CUDA: float16), "fp32" (the eager
      function up to float32 rounding: decoded images within 1e-5), "bf16" or "fp16" (>= 40 dB PSNR against fp32
      eager on real photos). Callers still pass and receive their own dtype.
    rewrite: compute nearest-2x-upsample + 3x3 conv as a 2x2 conv on the low-resolution input (same function).
    compile: wrap encoder and decoder in torch.compile (CUDA; on CPU the fused oneDNN path is already faster).
    cuda_graphs: with compile on CUDA, capture CUDA graphs (mode "reduce-overhead"); best for fixed shapes.
    precision "int8" (CPU, `tinyae.quant`): int8 convolutions calibrated on `calibration` (real images in [-1, 1]).
    The result is inference-only (inputs that require grad raise ValueError) and tied to the model's device.
    """
    if not isinstance(model, AutoencoderTiny):
        raise ValueError(f"optimize expects a tinyae AutoencoderTiny, got {type(model).__name__}")
    if isinstance(model, OptimizedAutoencoderTiny):
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
    fast = OptimizedAutoencoderTiny(**cfg.init_kwargs(), has_encoder=False, has_decoder=False)
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
    fast.__dict__["_source"] = model  # kept out of the module tree: not in parameters() or state_dict()
    if compile:
        mode = "reduce-overhead" if cuda_graphs else None
        for part in (fast.encoder, fast.decoder):
            if part is not None:
                part.forward = torch.compile(part.forward, mode=mode, dynamic=False)
    return fast.eval()


# ---------------------------------------------------------------------------------------------- ONNX
ONNX_FILES = {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
ONNX_CONFIG = "config.json"
MIN_OPSET = 17


class _ImagesToLatents(nn.Module):
    """The exported encoder: images in [-1, 1] -> raw latents (the AutoencoderTiny.encode convention)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images.add(1).div(2))


class _LatentsToImages(nn.Module):
    """The exported decoder: raw latents -> images in about [-1, 1] (the AutoencoderTiny.decode convention)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents).mul(2).sub(1)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ImportError("ONNX export and the onnxruntime backend need the onnx extra: "
                          "pip install 'tinyae[onnx]'") from None


def export_onnx(model: AutoencoderTiny, folder: str | os.PathLike, opset: int = MIN_OPSET, *,
                overwrite: bool = False) -> list[Path]:
    """Write `encoder.onnx` and `decoder.onnx` (whichever halves the model has) and `config.json` into `folder`.

    Graphs are float32 with the AutoencoderTiny conventions built in: encoder `images` (B, 3, H, W) in [-1, 1]
    -> `latents`; decoder `latents` (B, C, h, w) -> `images` in about [-1, 1]. Batch, height and width are
    dynamic. Each file is checked with `onnx.checker` and written atomically; existing files raise
    FileExistsError unless `overwrite`. Returns the written paths.
    """
    _require_onnx()
    import onnx

    from .weights import atomic_write

    if not isinstance(model, AutoencoderTiny):
        raise ValueError(f"export_onnx expects a tinyae AutoencoderTiny, got {type(model).__name__}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    if isinstance(model, OptimizedAutoencoderTiny):
        model = model.__dict__["_source"]
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    parts = {"encoder": model.encoder, "decoder": model.decoder}
    targets = [folder / ONNX_FILES[p] for p, net in parts.items() if net is not None] + [folder / ONNX_CONFIG]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (pass overwrite=True / --overwrite)")
    cfg = model.config
    written = []
    for part, net in parts.items():
        if net is None:
            continue
        if part == "encoder":
            wrapper: nn.Module = _ImagesToLatents(copy.deepcopy(net).float().cpu().eval())
            size = 8 * cfg.spatial_scale_factor
            example, names = torch.zeros(1, cfg.in_channels, size, size), ("images", "latents")
        else:
            wrapper = _LatentsToImages(copy.deepcopy(net).float().cpu().eval())
            example, names = torch.zeros(1, cfg.latent_channels, 8, 8), ("latents", "images")
        axes = {0: "batch", 2: "height", 3: "width"}
        path = folder / ONNX_FILES[part]

        def write(tmp: str, wrapper=wrapper, example=example, names=names) -> None:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                torch.onnx.export(wrapper, (example,), tmp, input_names=[names[0]], output_names=[names[1]],
                                  dynamic_axes={names[0]: axes, names[1]: axes}, opset_version=opset,
                                  dynamo=False)
            onnx.checker.check_model(tmp)

        atomic_write(path, write)
        written.append(path)
    config_path = folder / ONNX_CONFIG
    text = json.dumps({**cfg.to_dict(), "_tinyae_onnx_opset": opset}, indent=2, sort_keys=True)
    atomic_write(config_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    written.append(config_path)
    return written


class OnnxRuntimeAutoencoder:
    """AutoencoderTiny's encode/decode API over onnxruntime sessions (CPU tensors; float32 inside).

    Inputs are checked like AutoencoderTiny's (ValueError naming the problem); outputs come back in the input's
    dtype. `encode(x).latents`, `decode(z).sample`, `config`, `spatial_scale_factor` as on the torch model.
    """

    check_finite = True
    _check = AutoencoderTiny._check  # the same input checks as the torch model (uses .device and .check_finite)
    _finite = AutoencoderTiny._finite

    def __init__(self, folder: str | os.PathLike, providers: Sequence[str] | None = None,
                 threads: int | None = None):
        _require_onnx()
        import onnxruntime as ort

        folder = self._load_config(folder)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.sessions: dict[str, Any] = {}
        for part, name in ONNX_FILES.items():
            if (folder / name).is_file():
                self.sessions[part] = ort.InferenceSession(str(folder / name), options, providers=providers)
        self._check_parts()

    def _load_config(self, folder: str | os.PathLike) -> Path:
        from .config import TinyConfig

        folder = Path(folder)
        if not (folder / ONNX_CONFIG).is_file():
            raise ValueError(f"{folder}: not a tinyae ONNX export (no {ONNX_CONFIG}); create one with "
                             "`tinyae export-onnx`")
        with open(folder / ONNX_CONFIG, encoding="utf-8") as f:
            self.config = TinyConfig.from_dict(json.load(f))
        self.folder = folder
        return folder

    def _check_parts(self) -> None:
        if not self.sessions:
            raise ValueError(f"{self.folder}: holds neither {ONNX_FILES['encoder']} nor {ONNX_FILES['decoder']}")

    device = torch.device("cpu")
    dtype = torch.float32

    @property
    def spatial_scale_factor(self) -> int:
        return self.config.spatial_scale_factor

    def _run(self, part: str, x: torch.Tensor) -> torch.Tensor:
        if part not in self.sessions:
            raise MissingPartError(f"{self.folder} has no {ONNX_FILES[part]}: export a model that has the {part}")
        return self._infer(self.sessions[part], x).to(x.dtype)

    def _infer(self, session: Any, x: torch.Tensor) -> torch.Tensor:
        feed = {session.get_inputs()[0].name: x.detach().float().contiguous().numpy()}
        return torch.from_numpy(session.run(None, feed)[0])

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderTinyOutput | tuple[torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> raw latents (B, C, H/f, W/f)."""
        if "encoder" in self.sessions:
            x = self._check(x, "images", self.config.in_channels, self.spatial_scale_factor)
        out = self._run("encoder", x)
        return AutoencoderTinyOutput(latents=out) if return_dict else (out,)

    def decode(self, x: torch.Tensor, generator: torch.Generator | None = None, return_dict: bool = True
               ) -> DecoderOutput | tuple[torch.Tensor]:
        """Raw latents (B, C, h, w) -> images (B, 3, h*f, w*f) in about [-1, 1]."""
        if "decoder" in self.sessions:
            x = self._check(x, "latents", self.config.latent_channels, 1)
        out = self._run("decoder", x)
        return DecoderOutput(sample=out) if return_dict else (out,)

    def __repr__(self) -> str:
        return f"OnnxRuntimeAutoencoder({str(self.folder)!r}, parts={list(self.sessions)})"


BACKENDS = ("torch", "onnxruntime", "openvino")


def load_backend(model_or_onnx_folder: AutoencoderTiny | str | os.PathLike, backend: str = "onnxruntime",
                 **options: Any) -> Any:
    """An object with AutoencoderTiny's `encode(x).latents` / `decode(z).sample` running on `backend`.

    backend "onnxruntime": from a folder written by `export_onnx`, or from a model (exported to a temporary
    folder first); `options` go to OnnxRuntimeAutoencoder (providers, threads). backend "openvino": the same
    ONNX compiled by OpenVINO (`tinyae.ov_backend.OpenVinoAutoencoder`: precision "bf16"/"f32", threads).
    backend "torch": the model itself (or `optimize(model, **options)` when options are given).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        if not isinstance(model_or_onnx_folder, AutoencoderTiny):
            raise ValueError("backend 'torch' needs an AutoencoderTiny model")
        return optimize(model_or_onnx_folder, **options) if options else model_or_onnx_folder
    if backend == "openvino":
        from .ov_backend import OpenVinoAutoencoder as cls
    else:
        cls = OnnxRuntimeAutoencoder
    if isinstance(model_or_onnx_folder, AutoencoderTiny):
        with tempfile.TemporaryDirectory(prefix="tinyae-onnx-") as tmp:
            export_onnx(model_or_onnx_folder, tmp)
            backend_obj = cls(tmp, **options)  # sessions hold the graphs in memory
            backend_obj.folder = Path("<exported in memory>")
            return backend_obj
    if not isinstance(model_or_onnx_folder, (str, os.PathLike)):
        raise ValueError(f"load_backend expects a model or a folder, got {type(model_or_onnx_folder).__name__}")
    return cls(model_or_onnx_folder, **options)


def export_onnx_main(argv: Sequence[str] | None = None) -> int:
    """`tinyae export-onnx --model SOURCE [SOURCE2] -o DIR [--opset N] [--overwrite] [--no-check]`.

    Exports, then runs both graphs in onnxruntime on a test input and prints the max abs difference against
    torch float32 (fails with exit status 1 above 1e-4). Returns the exit status.
    """
    parser = argparse.ArgumentParser(prog="tinyae export-onnx",
                                     description="Export encoder and decoder to ONNX (dynamic height/width).")
    parser.add_argument("--model", nargs="+", required=True, metavar="SOURCE",
                        help="variant name, folder, weights file, or an encoder and a decoder file")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in the output folder")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = parser.parse_args(argv)
    if len(args.model) > 2:
        parser.error("--model takes one source, or an encoder file and a decoder file")
    from .weights import WeightsError

    source = args.model[0] if len(args.model) == 1 else tuple(args.model)
    try:
        model = AutoencoderTiny.from_pretrained(source)
        paths = export_onnx(model, args.output, opset=args.opset, overwrite=args.overwrite)
    except (ValueError, FileExistsError, ImportError, OSError) as e:  # WeightsError is a ValueError
        print(f"tinyae export-onnx: error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, WeightsError) else 1
    for p in paths:
        print(f"wrote {p}")
    if args.no_check:
        return 0
    diffs = check_onnx(model, args.output)
    ok = all(d <= ONNX_TOLERANCE for d in diffs.values())
    for part, d in diffs.items():
        print(f"onnxruntime vs torch float32, {part}: max abs difference {d:.2e} "
              f"({'ok' if d <= ONNX_TOLERANCE else 'FAILED'}, tolerance {ONNX_TOLERANCE:.0e})")
    return 0 if ok else 1


ONNX_TOLERANCE = 1e-4


def check_onnx(model: AutoencoderTiny, folder: str | os.PathLike, size: int = 128, seed: int = 0
               ) -> dict[str, float]:
    """Max abs difference of onnxruntime against the torch float32 model on a smooth test image of `size` pixels
    (and its latents), per exported part."""
    backend = OnnxRuntimeAutoencoder(folder)
    ref = copy_float32_cpu(model)
    f = ref.spatial_scale_factor
    size = max(f, size // f * f)
    gen = torch.Generator().manual_seed(seed)
    images = F.interpolate(torch.rand(1, ref.config.in_channels, size // 8 + 1, size // 8 + 1, generator=gen),
                           size=(size, size), mode="bilinear", align_corners=True) * 2 - 1
    out: dict[str, float] = {}
    with torch.no_grad():
        latents = (ref.encode(images).latents if ref.encoder is not None else
                   torch.randn(1, ref.config.latent_channels, size // f, size // f, generator=gen))
        if "encoder" in backend.sessions:
            out["encoder"] = float((backend.encode(images).latents - latents).abs().max())
        if "decoder" in backend.sessions:
            out["decoder"] = float((backend.decode(latents).sample - ref.decode(latents).sample).abs().max())
    return out


def copy_float32_cpu(model: AutoencoderTiny) -> AutoencoderTiny:
    """The eager model as float32 on the CPU (a copy when a cast or move is needed; `model` is unchanged)."""
    if isinstance(model, OptimizedAutoencoderTiny):
        model = model.__dict__["_source"]
    if model.dtype == torch.float32 and model.device.type == "cpu":
        return model
    return copy.deepcopy(model).float().cpu()
