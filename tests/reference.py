"""An independent functional implementation of the original networks (taesd.py + the taef2/taesana variants),
written from the published layer lists with torch.nn.functional on the original-layout tensors. It shares no code
with tinyae and serves as the oracle for variants that diffusers cannot express."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _conv(sd, key, x, stride=1):
    return F.conv2d(x, sd[f"{key}.weight"].float(), sd.get(f"{key}.bias", None) if f"{key}.bias" not in sd
                    else sd[f"{key}.bias"].float(), stride=stride, padding=sd[f"{key}.weight"].shape[-1] // 2)


def _block(sd, key, x):
    if f"{key}.pool.0.weight" in sd:  # x + conv1x1(relu(groupnorm4(conv1x1(x))))
        h = F.conv2d(x, sd[f"{key}.pool.0.weight"].float())
        h = F.group_norm(h, 4, sd[f"{key}.pool.1.weight"].float(), sd[f"{key}.pool.1.bias"].float(), eps=1e-5)
        x = x + F.conv2d(F.relu(h), sd[f"{key}.pool.3.weight"].float())
    h = F.relu(_conv(sd, f"{key}.conv.0", x))
    h = F.relu(_conv(sd, f"{key}.conv.2", h))
    h = _conv(sd, f"{key}.conv.4", h)
    skip = F.conv2d(x, sd[f"{key}.skip.weight"].float()) if f"{key}.skip.weight" in sd else x
    return F.relu(h + skip)


def _encoder_stages(sd: dict, x: torch.Tensor, i: int) -> torch.Tensor:
    """3 x (stride-2 conv, 3 Blocks) from layer i, then the conv to latents."""
    for _ in range(3):
        x = _conv(sd, str(i), x, stride=2)
        for j in range(1, 4):
            x = _block(sd, str(i + j), x)
        i += 4
    return _conv(sd, str(i), x)


def encoder_8x(sd: dict, x01: torch.Tensor) -> torch.Tensor:
    """taesd.py Encoder: conv, Block, 3 x (stride-2 conv, 3 Blocks), conv. Image in [0, 1]."""
    return _encoder_stages(sd, _block(sd, "1", _conv(sd, "0", x01)), 2)


def encoder_32x(sd: dict, x01: torch.Tensor) -> torch.Tensor:
    """taesd.py F32Encoder: 2 x (stride-2 conv, ReLU), Block, 3 x (stride-2 conv, 3 Blocks), conv."""
    x = F.relu(_conv(sd, "0", x01, stride=2))
    x = F.relu(_conv(sd, "2", x, stride=2))
    return _encoder_stages(sd, _block(sd, "4", x), 5)


def decoder_8x(sd: dict, z: torch.Tensor) -> torch.Tensor:
    """taesd.py Decoder: Clamp, conv, ReLU, 3 x (3 Blocks, 2x nearest upsample, conv), Block, conv -> [0, 1]."""
    x = F.relu(_conv(sd, "1", torch.tanh(z / 3) * 3))
    i = 3
    for _ in range(3):
        for j in range(3):
            x = _block(sd, str(i + j), x)
        x = _conv(sd, str(i + 4), F.interpolate(x, scale_factor=2, mode="nearest"))
        i += 5
    return _conv(sd, str(i + 1), _block(sd, str(i), x))


# ------------------------------------------------------------------------------------------- F16 (taeqi2_1)
def pixel_unshuffle(x: torch.Tensor, r: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*r*r, H/r, W/r), channel order (c, dy, dx)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // r, r, w // r, r).permute(0, 1, 3, 5, 2, 4).reshape(b, c * r * r, h // r, w // r)


def pixel_shuffle(x: torch.Tensor, r: int = 2) -> torch.Tensor:
    """The inverse of `pixel_unshuffle`."""
    b, c, h, w = x.shape
    return x.reshape(b, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // (r * r), h * r, w * r)


def encoder_16x(sd: dict, x01: torch.Tensor) -> torch.Tensor:
    """F16Encoder: PixelUnshuffle(2), conv, ReLU, Block, 3 x (stride-2 conv, 3 Blocks), conv. Image in [0, 1]."""
    return _encoder_stages(sd, _block(sd, "3", F.relu(_conv(sd, "1", pixel_unshuffle(x01)))), 4)


def decoder_16x(sd: dict, z: torch.Tensor) -> torch.Tensor:
    """F16Decoder: the 8x decoder's layer list (wider stages) with PixelShuffle(2) after the last conv."""
    return pixel_shuffle(decoder_8x(sd, z))


def _block_tensors(n: int, key: str, gen: torch.Generator) -> dict:
    out = {}
    for j in (0, 2, 4):
        out[f"{key}.conv.{j}.weight"] = torch.randn(n, n, 3, 3, generator=gen) * (0.5 / (3 * n ** 0.5))
        out[f"{key}.conv.{j}.bias"] = torch.randn(n, generator=gen) * 0.05
    return out


def _conv_tensors(n_in: int, n_out: int, key: str, gen: torch.Generator, bias: bool = True) -> dict:
    out = {f"{key}.weight": torch.randn(n_out, n_in, 3, 3, generator=gen) * (1.0 / (3 * n_in ** 0.5))}
    if bias:
        out[f"{key}.bias"] = torch.randn(n_out, generator=gen) * 0.05
    return out


def random_f16(latent_channels: int = 64, image_channels: int = 4, seed: int = 0) -> tuple[dict, dict]:
    """Random F16 encoder and decoder state dicts in the original script's nn.Sequential keys (from the layer
    lists: encoder 0 PixelUnshuffle, 1 conv, 2 ReLU, 3 Block, 4/8/12 stride-2 convs (no bias) each followed by 3
    Blocks, 16 conv; decoder 0 Clamp, 1 conv, 2 ReLU, 3 x (3 Blocks, Upsample, conv without bias) at 3/8/13,
    18 Block, 19 conv, 20 PixelShuffle)."""
    gen = torch.Generator().manual_seed(seed)
    enc = {**_conv_tensors(4 * image_channels, 64, "1", gen), **_block_tensors(64, "3", gen)}
    n_in, i = 64, 4
    for n in (64, 128, 256):
        enc.update(_conv_tensors(n_in, n, str(i), gen, bias=False))
        for j in range(1, 4):
            enc.update(_block_tensors(n, str(i + j), gen))
        n_in, i = n, i + 4
    enc.update(_conv_tensors(256, latent_channels, "16", gen))
    dec = _conv_tensors(latent_channels, 256, "1", gen)
    i = 3
    for n, n_next in ((256, 128), (128, 64), (64, 64)):
        for j in range(3):
            dec.update(_block_tensors(n, str(i + j), gen))
        dec.update(_conv_tensors(n, n_next, str(i + 4), gen, bias=False))
        i += 5
    dec.update(_block_tensors(64, "18", gen))
    dec.update(_conv_tensors(64, 4 * image_channels, "19", gen))
    return enc, dec
