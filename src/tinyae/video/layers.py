"""The video networks (TAEHV family) as literal layer lists, each layer kind with its geometry declared as data.

Conventions of the original: frames are NTCHW in [0, 1]; inside the networks a time axis is folded into the batch
((N*T, C, H, W)), and each layer's `Geometry` says how it treats time and space, so that every executor (parallel
over time, frame-by-frame streaming; tinyae.video.execute) reads the same declaration instead of type-switching:

- `t_down`: input frames per output frame (TPool: 2 or 1); `t_up`: output frames per input frame (TGrow);
- `down` / `up`: spatial stride / upscale; `halo`: rows of context each side the layer reads (in its input);
- `stateful`: the layer also reads its own input at the previous frame (zeros at the first frame).

`Geometry` is tinyae's one layer declaration (`tinyae.layers`, shared with the image networks); torch's own layers
(convolutions, upsampling, pixel shuffle, activations, Clamp) are declared there.

Key layout is the original single file's: `encoder.N.*`, `decoder.N.*` (nn.Sequential indices).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import layers as _layers
from ..blocks import Clamp, conv
from ..layers import Geometry

ENCODER_WIDTH = 64
DECODER_WIDTHS = (256, 128, 64, 64)
SUPER_DECODER_WIDTHS = (512, 256, 128, 64)


class MemBlock(nn.Module):
    """relu(conv(relu(conv(relu(conv(cat(x, past)))))) + skip(x)); past = this block's input at the previous frame."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in * 2, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU()

    geometry = Geometry(before=3, after=3, stateful=True)  # three 3x3 convs

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class SuperMemBlock(nn.Module):
    """x + 1x1(relu(1x1 expand(7x7 depthwise(cat(x, past))))): the `_super` decoders' ConvNeXt-like block."""

    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(n * 2, n * 2, 7, padding=3, groups=n * 2, bias=False),
                                  nn.Conv2d(n * 2, n * 4, 1), nn.ReLU(), nn.Conv2d(n * 4, n, 1, bias=False))

    geometry = Geometry(before=3, after=3, stateful=True)  # one 7x7 conv

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x, past], 1)) + x


class TPool(nn.Module):
    """Temporal /stride: a 1x1 conv over `stride` consecutive frames stacked on channels."""

    def __init__(self, n: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n * stride, n, 1, bias=False)

    @property
    def geometry(self) -> Geometry:
        return Geometry(t_down=self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N*T, C, H, W) with T a multiple of stride -> (N*T/stride, C, H, W)."""
        _, c, h, w = x.shape
        return self.conv(x.reshape(-1, self.stride * c, h, w))


class TGrow(nn.Module):
    """Temporal x stride: a 1x1 conv to stride*n channels, unfolded into `stride` frames (earliest first)."""

    def __init__(self, n: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n, n * stride, 1, bias=False)

    @property
    def geometry(self) -> Geometry:
        return Geometry(t_up=self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N*T, C, H, W) -> (N*T*stride, C, H, W)."""
        _, c, h, w = x.shape
        return self.conv(x).reshape(-1, c, h, w)


def geometry(layer: nn.Module) -> Geometry:
    """The declared geometry of any layer in these networks (ours carry it; torch's are read from their settings)."""
    own = getattr(layer, "geometry", None)
    if isinstance(own, Geometry):
        return own
    return _layers.geometry(layer)



def _flag(on: bool) -> int:
    return 2 if on else 1


def build_encoder(latent_channels: int, patch_size: int, time_downscale: tuple[bool, bool, bool]) -> nn.Sequential:
    """Frames (N*T, 3*p*p, H, W) in [0, 1] (pixel-unshuffled) -> latents (N*T/t, latent_channels, H/8, W/8)."""
    n, p2, (t0, t1, t2) = ENCODER_WIDTH, patch_size ** 2, map(_flag, time_downscale)
    return nn.Sequential(
        conv(3 * p2, n), nn.ReLU(),
        TPool(n, t0), conv(n, n, stride=2, bias=False), MemBlock(n, n), MemBlock(n, n), MemBlock(n, n),
        TPool(n, t1), conv(n, n, stride=2, bias=False), MemBlock(n, n), MemBlock(n, n), MemBlock(n, n),
        TPool(n, t2), conv(n, n, stride=2, bias=False), MemBlock(n, n), MemBlock(n, n), MemBlock(n, n),
        conv(n, latent_channels),
    )


def build_decoder(latent_channels: int, patch_size: int, time_upscale: tuple[bool, bool, bool],
                  space_upscale: tuple[bool, bool, bool] = (True, True, True)) -> nn.Sequential:
    """Latents (N*T, latent_channels, h, w) -> frames (N*T*t, 3*p*p, 8h, 8w) in about [0, 1] (not clamped)."""
    n, p2 = DECODER_WIDTHS, patch_size ** 2
    (t0, t1, t2), (s0, s1, s2) = map(_flag, time_upscale), map(_flag, space_upscale)
    return nn.Sequential(
        Clamp(), conv(latent_channels, n[0]), nn.ReLU(),
        MemBlock(n[0], n[0]), MemBlock(n[0], n[0]), MemBlock(n[0], n[0]), nn.Upsample(scale_factor=s0),
        TGrow(n[0], t0), conv(n[0], n[1], bias=False),
        MemBlock(n[1], n[1]), MemBlock(n[1], n[1]), MemBlock(n[1], n[1]), nn.Upsample(scale_factor=s1),
        TGrow(n[1], t1), conv(n[1], n[2], bias=False),
        MemBlock(n[2], n[2]), MemBlock(n[2], n[2]), MemBlock(n[2], n[2]), nn.Upsample(scale_factor=s2),
        TGrow(n[2], t2), conv(n[2], n[3], bias=False),
        nn.ReLU(), conv(n[3], 3 * p2),
    )


def build_super_decoder(latent_channels: int, patch_size: int, time_upscale: tuple[bool, bool, bool]
                        ) -> nn.Sequential:
    """The `_super` decoder (wider, depthwise 7x7 blocks, pixel-shuffle upsampling); same shapes as build_decoder."""
    n, p2, (t0, t1, t2) = SUPER_DECODER_WIDTHS, patch_size ** 2, map(_flag, time_upscale)
    return nn.Sequential(
        nn.Conv2d(latent_channels, n[0], 1, bias=False),
        SuperMemBlock(n[0]), SuperMemBlock(n[0]), SuperMemBlock(n[0]),
        conv(n[0], n[1] * 4), nn.ReLU(), nn.PixelShuffle(2), TGrow(n[1], t0),
        SuperMemBlock(n[1]), SuperMemBlock(n[1]), SuperMemBlock(n[1]),
        conv(n[1], n[2] * 4), nn.ReLU(), nn.PixelShuffle(2), TGrow(n[2], t1),
        SuperMemBlock(n[2]), SuperMemBlock(n[2]), SuperMemBlock(n[2]),
        conv(n[2], n[3] * 4), nn.ReLU(), nn.PixelShuffle(2), TGrow(n[3], t2),
        conv(n[3], 3 * p2),
    )


def tgrow_indices(decoder: nn.Sequential) -> list[int]:
    return [i for i, layer in enumerate(decoder) if isinstance(layer, TGrow)]


def time_factor(layers: nn.Sequential) -> int:
    """Frames per latent of an encoder (product of TPool strides) or a decoder (product of TGrow strides)."""
    f = 1
    for layer in layers:
        g = geometry(layer)
        f *= g.t_down * g.t_up
    return f


def space_factor(layers: nn.Sequential) -> int:
    """Pixels per latent pixel along one side, before the patch (un)shuffle."""
    f = 1
    for layer in layers:
        g = geometry(layer)
        f *= g.down * g.up
    return f
