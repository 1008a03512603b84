"""The variants, as data: architecture, where the weights live, and the diffusion family's latent conventions.

Every TAE consumes the latents its diffusion model denoises, i.e. the full VAE's latents after the family's scaling and
shift ((z - shift_factor) * scaling_factor), and for taef2 FLUX.2's batch-normalised latents, un-patchified; see
`tinyae.latents.from_vae_latents` and docs/diffusers.md.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

# sha256 of released weight files we know (from madebyollin/taesd commit 5cccb12; see ../shared/weights/README.md).
KNOWN_SHA256: dict[str, str] = {
    "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6": "taef2_encoder.pth",
    "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5": "taef2_decoder.pth",
    "858f4e4cc293f88efaf58107f4154b960b9ced0cb5d9c050dad11f926b618c1f": "taesana_encoder.pth",
}
_PIN = {name: sha for sha, name in KNOWN_SHA256.items()}


@dataclass(frozen=True)
class Family:
    """A diffusion model family's latent conventions (of its full VAE, as diffusers' pipelines apply them)."""

    name: str
    latent_channels: int  # channels of the VAE latent the TAE consumes
    scaling_factor: float  # diffusion latents = (vae latents - shift_factor) * scaling_factor
    shift_factor: float
    packing: str  # "none" | "flux" (2x2 patches packed into tokens) | "flux2" (2x2 patchify + batch norm + tokens)
    vae_scale_factor: int  # image pixels per VAE latent pixel


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    config: dict[str, Any]  # AutoencoderTiny parameters that differ from the defaults
    family: Family
    repo_id: str  # hub repository
    # Files in the hub repository: ("diffusers",) layout, or the original encoder/decoder pair.
    layout: str  # "diffusers" | "original"
    files: tuple[str, ...]
    sha256: dict[str, str] = field(default_factory=dict)  # pinned sha256 per file, where known
    aliases: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {
    "sd": Family("sd", 4, 0.18215, 0.0, "none", 8),
    "sdxl": Family("sdxl", 4, 0.13025, 0.0, "none", 8),
    "sd3": Family("sd3", 16, 1.5305, 0.0609, "none", 8),
    "flux": Family("flux", 16, 0.3611, 0.1159, "flux", 8),
    "flux2": Family("flux2", 32, 1.0, 0.0, "flux2", 8),
    "sana": Family("sana", 32, 0.41407, 0.0, "none", 32),
}

_DIFFUSERS_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def _v(name: str, description: str, config: dict[str, Any], family: str, repo_id: str, layout: str,
       files: tuple[str, ...], aliases: tuple[str, ...] = ()) -> Variant:
    return Variant(name, description, config, FAMILIES[family], repo_id, layout, files,
                   {f: _PIN[f] for f in files if f in _PIN}, aliases)


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    _v("taesd", "Stable Diffusion 1.x / 2.x", {"latent_channels": 4}, "sd", "madebyollin/taesd",
       "diffusers", _DIFFUSERS_FILES, aliases=("sd", "sd1", "sd2", "sd15", "sd21")),
    _v("taesdxl", "Stable Diffusion XL", {"latent_channels": 4}, "sdxl", "madebyollin/taesdxl",
       "diffusers", _DIFFUSERS_FILES, aliases=("sdxl",)),
    _v("taesd3", "Stable Diffusion 3 / 3.5", {"latent_channels": 16}, "sd3", "madebyollin/taesd3",
       "diffusers", _DIFFUSERS_FILES, aliases=("sd3", "sd35")),
    _v("taef1", "FLUX.1 (also HiDream, Z-Image)", {"latent_channels": 16}, "flux", "madebyollin/taef1",
       "diffusers", _DIFFUSERS_FILES, aliases=("flux", "flux1", "hidream", "z-image")),
    _v("taef2", "FLUX.2 (GroupNorm branch in the lowest-resolution blocks)",
       {"latent_channels": 32, "use_midblock_gn": True}, "flux2", "madebyollin/taef2",
       "original", ("taef2_encoder.pth", "taef2_decoder.pth"), aliases=("flux2",)),
    _v("taesana", "Sana (DC-AE f32c32: 32 channels, 32x downscale)",
       {"latent_channels": 32, "encoder_stem_channels": (32, 64),
        "decoder_block_out_channels": (256, 128, 64, 64, 64, 64), "num_decoder_blocks": (3, 3, 3, 3, 3, 1)},
       "sana", "madebyollin/taesana", "original", ("taesana_encoder.pth", "taesana_decoder.pth"),
       aliases=("sana",)),
]}

_ALIASES = {alias: v.name for v in VARIANTS.values() for alias in (v.name, *v.aliases)}


def get_variant(name: str) -> Variant:
    """Look a variant up by name or alias (case-insensitive). KeyError lists the closest known names."""
    key = name.lower()
    if key in _ALIASES:
        return VARIANTS[_ALIASES[key]]
    close = difflib.get_close_matches(key, list(_ALIASES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown variant {name!r}{hint} Known: {', '.join(VARIANTS)}")


def is_variant(name: str) -> bool:
    return isinstance(name, str) and name.lower() in _ALIASES


def closest_names(name: str) -> list[str]:
    return difflib.get_close_matches(name.lower(), list(_ALIASES), n=3, cutoff=0.5)


def variant_config(name: str) -> dict[str, Any]:
    """Full AutoencoderTiny parameters of a variant."""
    from .config import DEFAULTS

    return {**DEFAULTS, **get_variant(name).config}
