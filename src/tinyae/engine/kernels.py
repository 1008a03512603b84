"""The fused layers of `optimize()`: oneDNN convolutions with their ReLU / residual add fused (`FastConv`), nearest
2x upsample + 3x3 conv computed on the low-resolution input (`FastUpsampleConv`), the encoder stem composed into one
5x5 convolution (`FastStem`), residual blocks (`FastBlock`); each declares its row geometry (tinyae.nets.layers)."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nets.blocks import Block
from ..nets.layers import Geometry, declare

_CL = torch.channels_last


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

    def narrow_pad(self, x: torch.Tensor) -> int:
        """Zero columns to append to `x` so this convolution's output is at least 2 wide (0: none needed).

        oneDNN's CPU kernels of a strided convolution whose output is one column wide (seen on AMX in bf16, torch
        2.13: stride 2, output height >= 5; pytorch/pytorch#169688) return garbage, different run to run. The
        appended columns hold what the padding holds (zero; for uint8 input, its zero point), so output 0 reads
        the same values as before; the extra output column is dropped."""
        w_out = (x.shape[3] + 2 * self.padding - self.weight.shape[-1]) // self.stride + 1
        return self.stride if self.stride > 1 and w_out == 1 and x.device.type == "cpu" else 0

    def widened(self, x: torch.Tensor, pad: int, pad_value: int, residual: torch.Tensor | None,
                **kwargs: Any) -> torch.Tensor:
        """forward() on `x` with `pad` columns of `pad_value` appended (narrow_pad), cropped back to 1 column."""
        x = F.pad(x, (0, pad), value=pad_value).contiguous(memory_format=_CL)
        if residual is not None:
            residual = F.pad(residual, (0, 1)).contiguous(memory_format=_CL)
        return self.forward(x, residual, **kwargs)[..., :1].contiguous(memory_format=_CL)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, overwrite: bool = False
                ) -> torch.Tensor:
        """conv(x) [+ residual] [-> relu]; `overwrite` lets the result reuse `residual`'s memory (CPU)."""
        if pad := self.narrow_pad(x):
            return self.widened(x, pad, 0, residual)
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


def _is_nearest_2x(up: nn.Upsample) -> bool:
    return up.mode == "nearest" and up.size is None and up.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0))


def _is_3x3_same(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


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
        """GroupNorm of g with given statistics, as one per-channel scale and shift computed in float32.
        y = (g - mean) * rstd * weight + bias = g * (rstd * weight) + (bias - mean * rstd * weight).

        The scale and shift run as an inference batch_norm with mean 0, variance 1 and eps 0 ((g - 0) / sqrt(1 + 0)
        = g exactly), one sample at a time (the statistics are per sample): one pass in float32 that keeps g's
        dtype and channels_last, where float() * scale + shift, to(dtype) took four (~19x slower in bf16)."""
        per = g.shape[1] // self.gn_groups
        scale = rstd.float().repeat_interleave(per, dim=1) * self.gn_weight.float()
        shift = self.gn_bias.float() - mean.float().repeat_interleave(per, dim=1) * scale
        zero, one = torch.zeros_like(scale[0]), torch.ones_like(scale[0])
        if g.shape[0] == 1:
            return F.batch_norm(g, zero, one, scale[0], shift[0], False, 0.0, 0.0)
        out = torch.empty_like(g)
        for b in range(g.shape[0]):
            out[b:b + 1] = F.batch_norm(g[b:b + 1], zero, one, scale[b], shift[b], False, 0.0, 0.0)
        return out


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

