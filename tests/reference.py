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
