"""Latent conventions: 8-bit scaling for storage."""

from __future__ import annotations

import torch

LATENT_MAGNITUDE = 3.0
LATENT_SHIFT = 0.5


def scale_latents(x: torch.Tensor, magnitude: float = LATENT_MAGNITUDE, shift: float = LATENT_SHIFT) -> torch.Tensor:
    """raw latents -> [0, 1] (clamped), for 8-bit storage: x / (2 * magnitude) + shift."""
    return x.div(2 * magnitude).add(shift).clamp(0, 1)


def unscale_latents(x: torch.Tensor, magnitude: float = LATENT_MAGNITUDE, shift: float = LATENT_SHIFT) -> torch.Tensor:
    """[0, 1] -> raw latents: (x - shift) * 2 * magnitude."""
    return x.sub(shift).mul(2 * magnitude)
