"""The network, as small as the original one-file script: conv, Clamp, Block, Encoder, Decoder.

The F16 networks (taeqi2_1, `patch_size` 2) open the encoder with PixelUnshuffle(2), conv, ReLU and close the
decoder with a conv to 4 * image_channels and PixelShuffle(2); image_channels is 3 (RGB) or 4 (RGBA).

Encoder and decoder keep diffusers' layout (`encoder.layers.N`, `decoder.layers.N`, the Clamp outside `layers`) and
the original [0, 1] image convention: Encoder maps images in [0, 1] to raw latents, Decoder maps raw latents to
images in (about) [0, 1]. The [-1, 1] convention of diffusers is applied by `AutoencoderTiny`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import TinyConfig
from .layers import POINTWISE, Geometry, compose, declare, geometry

GN_EXPANSION = 4  # the GroupNorm branch widens channels 4x ...
GN_GROUPS = 4  # ... and normalises them in 4 groups (taef2)


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


def activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU}[name]()


class Clamp(nn.Module):
    """Soft clamp of latents to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


@declare(Clamp)
def _clamp_geometry(layer: Clamp) -> Geometry:
    return POINTWISE


class Block(nn.Module):
    """relu(conv(act(conv(act(conv(x))))) + skip(x)), optionally after x += pool(x) (taef2's GroupNorm branch)."""

    def __init__(self, n_in: int, n_out: int, act_fn: str = "relu", use_midblock_gn: bool = False):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), activation(act_fn), conv(n_out, n_out), activation(act_fn),
                                  conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if use_midblock_gn:
            n_gn = n_in * GN_EXPANSION
            self.pool = nn.Sequential(nn.Conv2d(n_in, n_gn, 1, bias=False), nn.GroupNorm(GN_GROUPS, n_gn),
                                      nn.ReLU(), nn.Conv2d(n_gn, n_in, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


@declare(Block)
def _block_geometry(block: Block) -> Geometry:
    """The conv branch's rows (the skip and the GroupNorm branch read each row alone), whole-image statistics when
    the block has the GroupNorm branch."""
    g = compose(geometry(layer) for layer in block.conv)
    return Geometry(before=g.before, after=g.after, global_stats=block.pool is not None)


class Encoder(nn.Module):
    """Image in [0, 1], (B, in_channels, H, W) -> raw latents (B, latent_channels, H/f, W/f)."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        ch, nb, act = cfg.encoder_block_out_channels, cfg.num_encoder_blocks, cfg.act_fn
        layers: list[nn.Module] = []
        n_in, patch = cfg.in_channels, cfg.patch_size
        if patch > 1:  # F16: 2x2 patches to channels
            layers.append(nn.PixelUnshuffle(patch))
            n_in *= patch * patch
        for n in cfg.encoder_stem_channels:  # taesana: stride-2 stem instead of the first conv
            layers += [conv(n_in, n, stride=2), nn.ReLU()]
            n_in = n
        for i, (n, blocks) in enumerate(zip(ch, nb)):
            if i == 0 and not cfg.encoder_stem_channels:
                layers += [conv(n_in, n), nn.ReLU()] if patch > 1 else [conv(n_in, n)]
            elif i > 0:
                layers.append(conv(n_in, n, stride=2, bias=False))
            lowest = i == len(ch) - 1 and cfg.use_midblock_gn
            layers += [Block(n, n, act, use_midblock_gn=lowest) for _ in range(blocks)]
            n_in = n
        layers.append(conv(n_in, cfg.latent_channels))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """Raw latents (B, latent_channels, h, w) -> image in about [0, 1], (B, out_channels, h*f, w*f). Not clamped."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        ch, nb, act = cfg.decoder_block_out_channels, cfg.num_decoder_blocks, cfg.act_fn
        self.clamp = Clamp()
        layers: list[nn.Module] = [conv(cfg.latent_channels, ch[0]), activation(act)]
        for i, (n, blocks) in enumerate(zip(ch, nb)):
            last = i == len(ch) - 1
            lowest = i == 0 and cfg.use_midblock_gn
            layers += [Block(n, n, act, use_midblock_gn=lowest) for _ in range(blocks)]
            if not last:
                layers.append(nn.Upsample(scale_factor=cfg.upsampling_scaling_factor, mode=cfg.upsample_fn))
            layers.append(conv(n, cfg.out_channels * cfg.patch_size ** 2 if last else ch[i + 1], bias=last))
        if cfg.patch_size > 1:  # F16: channels back to 2x2 patches
            layers.append(nn.PixelShuffle(cfg.patch_size))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(self.clamp(z))
