"""Latent conventions: 8-bit scaling for storage; conversions between a full VAE's latents and a TAE's; FLUX and
Qwen-Image 2.1 token packing."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..nets.variants import Family

LATENT_MAGNITUDE = 3.0
LATENT_SHIFT = 0.5


def scale_latents(x: torch.Tensor, magnitude: float = LATENT_MAGNITUDE, shift: float = LATENT_SHIFT) -> torch.Tensor:
    """raw latents -> [0, 1] (clamped), for 8-bit storage: x / (2 * magnitude) + shift."""
    return x.div(2 * magnitude).add(shift).clamp(0, 1)


def unscale_latents(x: torch.Tensor, magnitude: float = LATENT_MAGNITUDE, shift: float = LATENT_SHIFT) -> torch.Tensor:
    """[0, 1] -> raw latents: (x - shift) * 2 * magnitude."""
    return x.sub(shift).mul(2 * magnitude)


# ---------------------------------------------------------------------------------------------------------------
# Conversions between a full VAE's raw latents and what a TAE consumes.
#
# Every TAE consumes the latents its diffusion model works on (what the UNet/transformer sees, unpacked):
#   SD1/2, SDXL, SD3, FLUX.1, Sana:  tae = (vae - shift_factor) * scaling_factor
#   FLUX.2:                          tae = unpatchify((patchify(vae) - bn_mean) / sqrt(bn_var + bn_eps))
#   Qwen-Image 2.1:                  tae = (vae - latents_mean) / latents_std  (per channel; the pipeline's 5-D
#                                    (B, C, 1, h, w) latents with the time axis dropped)
# i.e. madebyollin's TAEs are trained on the *scaled* diffusion latents (ComfyUI applies vae_scale/vae_shift around
# them; diffusers' taesd/taesd3/taef1 configs carry scaling_factor 1.0, shift_factor 0.0). See docs/diffusers.md.
# ---------------------------------------------------------------------------------------------------------------

FLUX2_BN_EPS = 1e-4  # AutoencoderKLFlux2's default config.batch_norm_eps


def _family(family: "str | Family") -> "Family":
    from ..nets.variants import FAMILIES, Family, get_variant

    if isinstance(family, Family):
        return family
    if not isinstance(family, str):
        raise ValueError(f"family must be a family name ({', '.join(FAMILIES)}) or a tinyae.variants.Family, "
                         f"got {type(family).__name__}")
    key = family.lower()
    if key in FAMILIES:
        return FAMILIES[key]
    try:  # a variant name or alias ("taef1", "flux1", "sd15", ...) names its family
        return get_variant(key).family
    except KeyError:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)} (or a variant name)") from None


def _check_latents(z: torch.Tensor, fam: "Family", what: str = "latents") -> None:
    if not isinstance(z, torch.Tensor) or z.dim() != 4:
        raise ValueError(f"{what} must be a 4-D tensor (batch, channels, height, width), got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    if z.shape[1] != fam.latent_channels:
        raise ValueError(f"{what} of family {fam.name!r} have {fam.latent_channels} channels, got {z.shape[1]} "
                         f"(shape {tuple(z.shape)})")
    if not z.is_floating_point():
        raise ValueError(f"{what} must be floating point, got {z.dtype}")


def _bn_stats(bn_mean: torch.Tensor | None, bn_var: torch.Tensor | None, z: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    if bn_mean is None or bn_var is None:
        raise ValueError("FLUX.2 latents need the full VAE's batch-norm statistics: pass bn_mean=vae.bn.running_mean, "
                         "bn_var=vae.bn.running_var (and bn_eps=vae.config.batch_norm_eps) of the AutoencoderKLFlux2")
    n = 4 * z.shape[1]
    mean, var = torch.as_tensor(bn_mean).flatten(), torch.as_tensor(bn_var).flatten()
    if mean.numel() != n or var.numel() != n:
        raise ValueError(f"FLUX.2 batch-norm statistics must have {n} values (4 x {z.shape[1]} patchified channels), "
                         f"got {mean.numel()} and {var.numel()}")
    if bool((var < 0).any()):
        raise ValueError("bn_var must be non-negative")
    return (mean.to(z.device, z.dtype).view(1, -1, 1, 1), var.to(z.device, z.dtype).view(1, -1, 1, 1))


def from_vae_latents(z: torch.Tensor, family: "str | Family", *, bn_mean: torch.Tensor | None = None,
                     bn_var: torch.Tensor | None = None, bn_eps: float = FLUX2_BN_EPS) -> torch.Tensor:
    """A full VAE's raw latents (what `AutoencoderKL.encode(...).latent_dist` gives) -> the TAE's latents.

    `z`: (B, C, h, w), C the family's latent channels (4, 16, 32 or 64). For "qwenimage21" the per-channel
    latents_mean / latents_std of AutoencoderKLQwenImage21 apply (drop the time axis of its 5-D latents). For "flux2", `bn_mean`/`bn_var` (128 values
    each) and `bn_eps` are the AutoencoderKLFlux2's `bn.running_mean`, `bn.running_var`, `config.batch_norm_eps`,
    and h, w must be even. The result has the same shape; its values are about unit-variance.
    """
    fam = _family(family)
    _check_latents(z, fam)
    if fam.packing == "flux2":
        mean, var = _bn_stats(bn_mean, bn_var, z)
        return unpatchify_flux2((patchify_flux2(z) - mean) / torch.sqrt(var + bn_eps))
    if fam.latents_mean:
        mean, std = _channel_stats(fam, z)
        return (z - mean) / std
    return (z - fam.shift_factor) * fam.scaling_factor


def to_vae_latents(z: torch.Tensor, family: "str | Family", *, bn_mean: torch.Tensor | None = None,
                   bn_var: torch.Tensor | None = None, bn_eps: float = FLUX2_BN_EPS) -> torch.Tensor:
    """The inverse of `from_vae_latents`: TAE latents -> the full VAE's raw latents (to decode with the full VAE)."""
    fam = _family(family)
    _check_latents(z, fam)
    if fam.packing == "flux2":
        mean, var = _bn_stats(bn_mean, bn_var, z)
        return unpatchify_flux2(patchify_flux2(z) * torch.sqrt(var + bn_eps) + mean)
    if fam.latents_mean:
        mean, std = _channel_stats(fam, z)
        return z * std + mean
    return z / fam.scaling_factor + fam.shift_factor


def _channel_stats(fam: "Family", z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    def view(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)
    return view(fam.latents_mean), view(fam.latents_std)


# ---------------------------------------------------------------------------------------------- token packing
def pack_tokens(z: torch.Tensor) -> torch.Tensor:
    """Qwen-Image 2.1: (B, C, h, w) -> tokens (B, h * w, C), one token per latent pixel, row-major (unpatched)."""
    if not isinstance(z, torch.Tensor) or z.dim() != 4:
        raise ValueError(f"latents must be a 4-D tensor (batch, channels, height, width), got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    return z.flatten(2).transpose(1, 2)


def unpack_tokens(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Qwen-Image 2.1 tokens (B, h * w, C) -> latents (B, C, h, w); h, w are the latent sizes."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        raise ValueError(f"tokens must be a 3-D tensor (batch, tokens, channels), got "
                         f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
    if height * width != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not fit latents of {height}x{width}")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


# ---------------------------------------------------------------------------------------------- FLUX packing
def _even_4d(z: torch.Tensor, what: str) -> None:
    if not isinstance(z, torch.Tensor) or z.dim() != 4:
        raise ValueError(f"{what} must be a 4-D tensor (batch, channels, height, width), got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    if z.shape[2] % 2 or z.shape[3] % 2:
        raise ValueError(f"{what} height and width must be even (2x2 patches), got {z.shape[2]}x{z.shape[3]}")


def patchify_flux2(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 4C, h/2, w/2): each 2x2 patch to channels, channel-major (c, dy, dx), as FLUX.2."""
    _even_4d(z, "latents")
    b, c, h, w = z.shape
    return z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify_flux2(z: torch.Tensor) -> torch.Tensor:
    """(B, 4C, h, w) -> (B, C, 2h, 2w): the inverse of `patchify_flux2`."""
    if not isinstance(z, torch.Tensor) or z.dim() != 4 or z.shape[1] % 4:
        raise ValueError(f"patchified latents must be (batch, 4*channels, height, width), got "
                         f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    b, c4, h, w = z.shape
    return z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, h * 2, w * 2)


def pack_flux(z: torch.Tensor) -> torch.Tensor:
    """FLUX.1: (B, C, h, w) -> tokens (B, h/2 * w/2, 4C), each token a 2x2 patch, channel-major (c, dy, dx)."""
    _even_4d(z, "latents")
    b, c, h, w = z.shape
    return z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _token_grid(tokens: torch.Tensor, height: int | None, width: int | None, what: str) -> tuple[int, int]:
    """Rows and columns of a row-major token grid: from the latent height/width (before packing), or square."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        raise ValueError(f"{what} tokens must be a 3-D tensor (batch, tokens, channels), got "
                         f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
    n = tokens.shape[1]
    if height is None and width is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} {what} tokens do not form a square grid: pass the latent height and width")
        return side, side
    if height is None or width is None:
        raise ValueError("pass both height and width (of the unpacked latents), or neither for a square grid")
    if height % 2 or width % 2 or (height // 2) * (width // 2) != n:
        raise ValueError(f"{n} {what} tokens do not fit latents of {height}x{width} (need even sides and "
                         f"{height}/2 * {width}/2 tokens)")
    return height // 2, width // 2


def unpack_flux(tokens: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """FLUX.1 tokens (B, h/2 * w/2, 4C) -> latents (B, C, h, w); h, w are the latent (not image) sizes.

    Without height/width the grid is taken as square (ValueError when the token count is not a square).
    """
    rows, cols = _token_grid(tokens, height, width, "FLUX")
    b, _, c4 = tokens.shape
    if c4 % 4:
        raise ValueError(f"FLUX token width must be a multiple of 4, got {c4}")
    return tokens.reshape(b, rows, cols, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, rows * 2,
                                                                                         cols * 2)


def pack_flux2(z: torch.Tensor) -> torch.Tensor:
    """FLUX.2: (B, C, h, w) -> tokens (B, h/2 * w/2, 4C): `patchify_flux2`, then positions row-major."""
    p = patchify_flux2(z)
    return p.flatten(2).transpose(1, 2)


def unpack_flux2(tokens: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """FLUX.2 tokens (B, h/2 * w/2, 4C) -> latents (B, C, h, w) (no batch-norm denormalisation).

    h, w are the latent sizes; without them the grid is taken as square.
    """
    rows, cols = _token_grid(tokens, height, width, "FLUX.2")
    return unpatchify_flux2(tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], rows, cols))
