"""int8 convolutions for `optimize()`d CPU networks (issue 16): oneDNN u8 x s8 kernels (AVX512-VNNI / AMX-INT8).

`quantize(fast_net, calibrate)` rewrites a `tinyae.runtime.FastNet` (built in bfloat16 or float32 for the
CPU) in place: every plain convolution, residual block (without the GroupNorm branch) and upsample convolution runs
through `torch.ops.onednn.qconv2d_pointwise` with

- weights: symmetric int8, one scale per output channel (max |w| / 127);
- activations: uint8, one scale and zero point per tensor, from the minimum and maximum that the network's own
  activations reach on the calibration inputs (real photos' latents or images);
- outputs requantized in the kernel straight to the next int8 layer's input scale (ReLU and the residual sum fused),
  so activations between int8 layers are 1 byte per value; float (the network's dtype) where a float layer follows.

The encoder's `FastStem` (input conv + first block at full resolution, about half the encoder's work) becomes a
`QStem`: the [0, 1] image quantized once (exact for 8-bit photos: scale 1/255, zero point 0), its skip and the 5x5
composed conv in uint8, the border ring recomputed in float and quantized. Layers left as they were: the GroupNorm
blocks (lowest resolution, whole-image statistics). `optimize(model, "int8", calibration=images)` calls `optimize_int8`.
The layer kinds subclass the float ones, so their row geometry (and `optimize`'s strips) carries over.
Quality and speed: docs/performance.md ("what was tried for issue 16").
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, Collection, Sequence

import torch
import torch.nn as nn

from .fastnet import FastNet
from .kernels import _CL, FastBlock, FastConv, FastStem, FastUpsampleConv, upsample_conv_weights
from .precision import cpu_has_fast_bf16

if TYPE_CHECKING:
    from ..nets.model import AutoencoderTinyBase as AutoencoderTiny
    from .optimize import Optimized as OptimizedAutoencoderTiny

Range = tuple[float, float]  # (min, max) an activation reached during calibration


def _activation_params(r: Range) -> tuple[float, int]:
    """uint8 scale and zero point covering [min(lo, 0), hi]."""
    lo, hi = min(r[0], 0.0), max(r[1], 1e-8)
    scale = (hi - lo) / 255
    return scale, int(round(-lo / scale))


def quantize_activation(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Quantize a float activation (channels_last kept)."""
    if hasattr(torch, "quantize_per_tensor"):  # one pass; deprecated (quantized tensors), so also the fallback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            q = torch.quantize_per_tensor(x.float(), scale, zero_point, torch.quint8).int_repr()
    else:
        q = x.float().div(scale).round_().add_(zero_point).clamp_(0, 255).to(torch.uint8)
    return q.contiguous(memory_format=_CL)


class QConv(FastConv):
    """conv(x) [+ residual] [-> relu] with uint8 activations and int8 per-channel weights. Input: uint8 at
    (x_scale, x_zp), or float (quantized here). Output: uint8 at (out_scale, out_zp), or `out_dtype` (float)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int, relu: bool,
                 x_range: Range, out_range: Range | None, out_dtype: torch.dtype):
        w = weight.detach().float()
        w_scale = (w.abs().amax((1, 2, 3)) / 127).clamp_min(1e-12)
        qw = (w / w_scale[:, None, None, None]).round().clamp(-127, 127).to(torch.int8)
        super().__init__(qw, None, stride, padding, relu, torch.int8, True)
        del self.weight  # a buffer: the model's parameters (its `dtype`) stay floating point
        self.register_buffer("weight", qw.contiguous(memory_format=_CL))
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("w_zp", torch.zeros(w.shape[0], dtype=torch.long))
        self.x_scale, self.x_zp = _activation_params(x_range)
        self.out = None if out_range is None else _activation_params(out_range)
        self.out_dtype = out_dtype

    def packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        p, s = [self.padding] * 2, [self.stride] * 2
        return self._packed_for(x, lambda w, shape: torch.ops.onednn.qconv_prepack(
            w, self.w_scale, self.x_scale, self.x_zp, s, p, [1, 1], 1, shape))

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype == torch.uint8 else quantize_activation(x, self.x_scale, self.x_zp)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, overwrite: bool = False,
                residual_q: tuple[float, int] | None = None) -> torch.Tensor:
        """`residual`: uint8 at `residual_q` (scale, zero point) when the output is uint8, else float. The kernel
        writes the result into the residual's memory, so without `overwrite` it is copied first."""
        x = self.quantized_input(x)
        if pad := self.narrow_pad(x):  # zero columns: the zero point (what the kernel pads with)
            return self.widened(x, pad, self.x_zp, residual, residual_q=residual_q)
        p, s = [self.padding] * 2, [self.stride] * 2
        w = self.packed_weight(x)
        o_scale, o_zp = self.out if self.out is not None else (1.0, 0)
        o_dtype = None if self.out is not None else self.out_dtype
        if residual is None:
            return torch.ops.onednn.qconv2d_pointwise(
                x, self.x_scale, self.x_zp, w, self.w_scale, self.w_zp, self.bias, s, p, [1, 1], 1, o_scale, o_zp,
                o_dtype, "relu" if self.relu else "none", [], "")
        if self.out is not None:
            a_scale, a_zp = residual_q
        else:
            residual, a_scale, a_zp = residual.to(self.out_dtype).contiguous(memory_format=_CL), 1.0, 0
        if not overwrite:  # the kernel sums into the residual's memory
            residual = residual.clone()
        return torch.ops.onednn.qconv2d_pointwise.binary(
            x, self.x_scale, self.x_zp, w, self.w_scale, self.w_zp, residual, self.bias, s, p, [1, 1], 1, o_scale,
            o_zp, o_dtype, a_scale, a_zp, "sum", 1.0, "relu" if self.relu else None, [], "")


class QBlock(FastBlock):
    """A residual block (ReLU, identity skip, no GroupNorm branch) of three QConvs; the skip is the uint8 input."""

    def __init__(self, block: FastBlock, ranges: dict[int, Range], out_range: Range | None, out_dtype: torch.dtype):
        nn.Module.__init__(self)
        self.act = self.skip = self.pool = None
        self.relu_inside = True
        r1, r2, r3 = (ranges[id(c)] for c in (block.conv1, block.conv2, block.conv3))
        self.conv1 = QConv(block.conv1.weight, block.conv1.bias, 1, 1, True, r1, r2, out_dtype)
        self.conv2 = QConv(block.conv2.weight, block.conv2.bias, 1, 1, True, r2, r3, out_dtype)
        self.conv3 = QConv(block.conv3.weight, block.conv3.bias, 1, 1, True, r3, out_range, out_dtype)

    def forward(self, x: torch.Tensor, overwrite: bool = False, stats=None) -> torch.Tensor:
        """`overwrite`: x belongs to the network and may be overwritten (the uint8 sum is computed in place in the
        skip's memory; otherwise it is copied first)."""
        xq = self.conv1.quantized_input(x)
        y = self.conv2(self.conv1(xq))
        if self.conv3.out is None:  # float output: float skip
            skip = x if x.dtype != torch.uint8 else (xq.float() - self.conv1.x_zp) * self.conv1.x_scale
        else:
            skip = xq
        return self.conv3(y, residual=skip, overwrite=overwrite or skip is not x,
                          residual_q=(self.conv1.x_scale, self.conv1.x_zp))


class QStem(FastStem):
    """`FastStem` in int8: skip = conv0(x) and a = relu(conv1(conv0(x))) (the composed 5x5 conv) from the image
    quantized once, the border ring of `a` from the float convs (`ring0`, `ring1`), then conv2 and conv3 (+ skip)
    as QConvs. Ranges: the image (conv0's input), the skip (conv0's output, recorded under the stem's id), conv2's
    and conv3's inputs, and the next op's input (`out_range`; None: float output)."""

    def __init__(self, stem: FastStem, ranges: dict[int, Range], out_range: Range | None, out_dtype: torch.dtype):
        nn.Module.__init__(self)
        x_r, skip_r = ranges[id(stem.conv0)], ranges[id(stem)]
        a_r, c3_r = ranges[id(stem.conv2)], ranges[id(stem.conv3)]
        self.ring0, self.ring1 = stem.conv0, stem.conv1  # float, for the ring (a few rows and columns)
        self.conv0 = QConv(stem.conv0.weight, stem.conv0.bias, 1, 1, False, x_r, skip_r, out_dtype)
        f = stem.first
        self.first = QConv(f.weight, f.bias, 1, 2, True, x_r, a_r, out_dtype)
        self.conv2 = QConv(stem.conv2.weight, stem.conv2.bias, 1, 1, True, a_r, c3_r, out_dtype)
        self.conv3 = QConv(stem.conv3.weight, stem.conv3.bias, 1, 1, True, c3_r, out_range, out_dtype)

    def _ring(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_activation(self.ring1(self.ring0(x)), self.conv2.x_scale, self.conv2.x_zp)

    def forward(self, x: torch.Tensor, top: bool = True, bottom: bool = True) -> torch.Tensor:
        n, _, h, w = x.shape
        xq = self.conv0.quantized_input(x)
        skip = self.conv0(xq)
        if h <= 6 or w <= 6:
            a = self._ring(x)
        else:
            a = self.first(xq)
            if top:
                a[:, :, :1] = self._ring(x[:, :, :3])[:, :, :1]
            if bottom:
                a[:, :, -1:] = self._ring(x[:, :, -3:])[:, :, -1:]
            cols = self._ring(torch.cat([x[..., :3], x[..., -3:]]).contiguous(memory_format=_CL))
            a[..., 0], a[..., -1] = cols[:n, ..., 0], cols[n:, ..., -1]
        if self.conv3.out is None:  # float output: float skip
            skip = (skip.float() - self.conv0.out[1]) * self.conv0.out[0]
        return self.conv3(self.conv2(a), residual=skip, overwrite=True, residual_q=self.conv0.out)


class QUpsampleConv(FastUpsampleConv):
    """nearest 2x upsample + 3x3 conv as an int8 2x2 convolution with 4x the channels, then `interleave_phases`
    (on 1-byte values when the output is uint8)."""

    def __init__(self, op: FastUpsampleConv, conv: nn.Conv2d, x_range: Range, out_range: Range | None,
                 out_dtype: torch.dtype):
        nn.Module.__init__(self)
        self.fused, self.relu, self.out_channels = False, op.relu, op.out_channels
        w, b = upsample_conv_weights(conv.weight, conv.bias)
        self.conv = QConv(w, b, 1, 1, op.relu, x_range, out_range, out_dtype)


def _ranges(net: FastNet, calibrate: Callable[[], object]) -> dict[int, Range]:
    """(min, max) of the input of every convolution-like op of `net` while `calibrate()` runs it."""
    seen: dict[int, Range] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0]
        lo, hi = float(x.min()), float(x.max())
        old = seen.get(id(module), (lo, hi))
        seen[id(module)] = (min(old[0], lo), max(old[1], hi))

    def stem_hook(stem: FastStem) -> Callable:
        def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:  # the stem's skip: conv0's output
            lo, hi = float(out.min()), float(out.max())
            old = seen.get(id(stem), (lo, hi))
            seen[id(stem)] = (min(old[0], lo), max(old[1], hi))
        return record

    kinds = (FastConv, FastUpsampleConv, FastBlock)
    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, kinds)]
    handles += [m.conv0.register_forward_hook(stem_hook(m)) for m in net.modules() if isinstance(m, FastStem)]
    try:
        with torch.inference_mode():
            calibrate()
    finally:
        for h in handles:
            h.remove()
    return seen


def _calibrated(net: FastNet) -> list[nn.Module]:
    """The modules whose input ranges `_ranges` records, in a fixed order (the network's module order)."""
    return [m for m in net.modules() if isinstance(m, (FastConv, FastUpsampleConv, FastBlock, FastStem))]


def range_list(net: FastNet, ranges: dict[int, Range]) -> list[Range]:
    """`_ranges`' result as a list in `_calibrated` order (what a calibration file stores)."""
    return [ranges[id(m)] for m in _calibrated(net) if id(m) in ranges]


def stored_ranges(net: FastNet, stored: Sequence[Sequence[float]]) -> dict[int, Range] | None:
    """A calibration file's list of ranges mapped onto `net`'s modules; None when the network does not match."""
    modules = _calibrated(net)
    if len(modules) != len(stored):
        return None
    return {id(m): (float(r[0]), float(r[1])) for m, r in zip(modules, stored)}


def _input_range(op: nn.Module, ranges: dict[int, Range]) -> Range | None:
    if isinstance(op, FastStem):
        return ranges.get(id(op.conv0)) if id(op) in ranges else None
    if isinstance(op, FastBlock):
        return ranges.get(id(op.conv1)) if op.pool is None and op.skip is None and op.relu_inside else None
    if isinstance(op, (FastConv, FastUpsampleConv)) and type(op) in (FastConv, FastUpsampleConv):
        return ranges.get(id(op))
    return None


def quantize(net: FastNet, calibrate: Callable[[], object] | None, originals: dict[int, nn.Conv2d] | None = None,
             keep: Collection[int] = (), ranges: dict[int, Range] | None = None) -> FastNet:
    """Rewrite `net`'s convolutions, blocks and upsample convolutions to int8 in place (see the module docstring).
    calibrate: runs the (float) network on real inputs, e.g. `lambda: [fast.decode(z) for z in latents]`.
    originals: {id(FastUpsampleConv): the original 3x3 conv}, needed to quantize upsample convolutions.
    keep: indices into `net.ops` left in floating point (mixed precision).
    ranges: activation ranges recorded before (`stored_ranges`) instead of running `calibrate`."""
    if not net.fused:
        raise ValueError("int8 needs a network optimized for the CPU with oneDNN")
    if ranges is None:
        ranges = _ranges(net, calibrate)
    ops = list(net.ops)
    dtype = next(p.dtype for p in net.parameters() if p.is_floating_point())
    q_in = [None if i in keep else _input_range(op, ranges) for i, op in enumerate(ops)]
    for i, op in enumerate(ops):
        r = q_in[i]
        if r is None:
            continue
        out = q_in[i + 1] if i + 1 < len(ops) else None
        if isinstance(op, FastStem):
            ops[i] = QStem(op, ranges, out, dtype)
        elif isinstance(op, FastBlock):
            ops[i] = QBlock(op, ranges, out, dtype)
        elif isinstance(op, FastUpsampleConv):
            if originals is None or id(op) not in originals:
                q_in[i] = None  # stays float: the int8 op before it must emit float
                continue
            ops[i] = QUpsampleConv(op, originals[id(op)], r, out, dtype)
        else:
            ops[i] = QConv(op.weight, op.bias, op.stride, op.padding, op.relu, r, out, dtype)
    for i, op in enumerate(ops):  # a float op after an int8 one: the int8 one emits float
        if q_in[i] is None and i > 0 and isinstance(ops[i - 1], (QConv, QBlock, QStem, QUpsampleConv)):
            prev = ops[i - 1]
            last = prev.conv3 if isinstance(prev, (QBlock, QStem)) else prev.conv if isinstance(prev, QUpsampleConv) else prev
            last.out = None
    net.ops = nn.Sequential(*ops)
    return net


def upsample_originals(fast: FastNet, net: nn.Module) -> dict[int, nn.Conv2d]:
    """{id(FastUpsampleConv in fast): its original 3x3 conv in the eager net}, in order."""
    ups = [op for op in fast.ops if isinstance(op, FastUpsampleConv)]
    layers = list(net.layers)
    convs = [layers[i + 1] for i, l in enumerate(layers) if isinstance(l, nn.Upsample)]
    return {id(u): c for u, c in zip(ups, convs)}


def float_ops(net: FastNet) -> set[int]:
    """Indices of the ops `optimize_int8` keeps in floating point: the lowest-resolution level (the decoder's ops
    before its first upsampling, the encoder's after its last stride-2 conv: 1/64 of the work at most, and the
    layers int8 hurts most, see docs/performance.md) and the convs before an encoder's first block or stem (which
    read the image: taesana's strided stem). A `FastStem` itself becomes a `QStem`."""
    ops = list(net.ops)
    keep: set[int] = set()
    if net.clamp:  # decoder
        first_up = next((i for i, op in enumerate(ops) if isinstance(op, FastUpsampleConv)), len(ops))
        return keep | set(range(first_up))
    first_block = next((i for i, op in enumerate(ops) if isinstance(op, (FastBlock, FastStem))), 0)
    down = [i for i, op in enumerate(ops) if isinstance(op, FastConv) and op.stride > 1]
    return keep | set(range(first_block)) | (set(range(down[-1] + 1, len(ops))) if down else set())


def available() -> bool:
    """oneDNN's int8 convolutions are in this torch build (x86 CPUs; fast with AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv2d_pointwise")


def optimize_int8(model: "AutoencoderTiny", calibration: Sequence[torch.Tensor] | None,
                  latents: Sequence[torch.Tensor] | None = None) -> "OptimizedAutoencoderTiny":
    """`optimize(model, "int8", calibration=images)`: the CPU-optimized model (bf16 where the CPU has AVX512-BF16
    or AMX, else fp32) with its convolutions rewritten to int8 by `quantize`.

    calibration: real images (B, C, H, W) in [-1, 1] (a few photos of the kind you will encode; 256² crops are
    enough if together they cover its colours and contrasts: activations beyond the calibrated ranges clip, and the
    int8 stem at full resolution is the most sensitive; one corner crop of one photo is not enough); the decoder is calibrated on their latents from `model`'s own float32 encoder, or on `latents`
    (raw latents) when given or when the model has no encoder.
    """
    from .calibration import int8_in_hardware
    from .optimize import optimize

    if not available():
        raise ValueError("int8 needs torch's oneDNN int8 convolutions (torch.ops.onednn.qconv2d_pointwise), "
                         "missing in this torch build")
    if model.device.type != "cpu":
        raise ValueError(f"int8 runs on the CPU; this model is on {model.device}")
    if not int8_in_hardware():  # without VNNI oneDNN's u8 x s8 pairs saturate in int16 (see there)
        raise ValueError("int8 needs a CPU with int8 dot products (AVX512-VNNI, AVX-VNNI or AMX-INT8); without them "
                         "oneDNN's int8 convolutions saturate (taef2 encode: 29.7 dB against fp32); use 'auto' or 'fp32'")
    images = list(calibration or ())
    if latents is None and model.decoder is not None and model.encoder is None:
        raise ValueError("int8 for a decoder-only model needs calibration latents (latents=...)")
    if not images and (model.encoder is not None or latents is None):
        raise ValueError("int8 needs calibration images: optimize(model, 'int8', calibration=[images in [-1, 1]])")
    fast = optimize(model, "bf16" if cpu_has_fast_bf16() else "fp32")
    with torch.inference_mode():
        if fast.encoder is not None:
            quantize(fast.encoder, lambda: [fast.encode(x) for x in images], keep=float_ops(fast.encoder))
        if fast.decoder is not None:
            zs = list(latents) if latents is not None else [model.encode(x).latents for x in images]
            originals = upsample_originals(fast.decoder, model.decoder)
            quantize(fast.decoder, lambda: [fast.decode(z) for z in zs], originals, keep=float_ops(fast.decoder))
    fast.precision = "int8"
    return fast
