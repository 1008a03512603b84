"""The variants, as data: architecture, where the weights live, and the diffusion family's latent conventions.

Every TAE consumes the latents its diffusion model denoises, i.e. the full VAE's latents after the family's scaling and
shift ((z - shift_factor) * scaling_factor), and for taef2 FLUX.2's batch-normalised latents, un-patchified; see
`tinyae.latents.from_vae_latents` and docs/diffusers.md.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Iterable

# sha256 of released weight files we know (from madebyollin/taesd commit 5cccb12; see ../shared/weights/README.md).
KNOWN_SHA256: dict[str, str] = {
    "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6": "taef2_encoder.pth",
    "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5": "taef2_decoder.pth",
    "858f4e4cc293f88efaf58107f4154b960b9ced0cb5d9c050dad11f926b618c1f": "taesana_encoder.pth",
}
_PIN = {name: sha for sha, name in KNOWN_SHA256.items()}

# Qwen-Image 2.1's per-channel latent normalisation: diffusers 0.42 AutoencoderKLQwenImage21's default
# config.latents_mean / latents_std (the pipeline: diffusion latents = (vae latents - mean) / std).
QWENIMAGE21_LATENTS_MEAN = (
    0.5126, 0.7721, -0.0631, 1.3506, -0.7855, -2.1025, -0.3458, 1.3722, 1.8873, -1.7177, -0.651, 0.2732, 0.7562,
    -0.6163, -1.0277, 3.8363, 2.021, 0.0472, 0.932, 2.0087, 2.4954, -0.1391, -1.4249, 1.8464, -0.5236, 1.2826,
    3.7046, -1.3035, 2.7286, -1.4518, -1.9036, -1.9955, -0.0342, -1.0265, -0.7636, 3.0555, 0.0746, -3.0751, -0.1076,
    1.7376, -1.0914, -1.9435, -0.2784, -1.368, 0.4809, -0.4433, 0.3764, 0.5729, -2.0595, 1.096, -1.326, -2.0211,
    -5.0179, 0.5275, 4.0162, 1.8505, 0.3026, 1.9373, 1.4937, 0.2632, 0.5547, -1.7121, -0.1562, 0.0304,
)
QWENIMAGE21_LATENTS_STD = (
    3.2001, 3.2936, 3.4321, 3.0091, 3.1061, 4.0379, 4.0705, 3.791, 3.0785, 3.65, 3.9308, 3.0904, 2.8778, 3.7675,
    3.732, 5.0756, 3.2864, 4.0397, 3.1317, 4.0443, 2.9249, 3.9454, 3.0988, 4.2489, 3.4896, 3.8513, 3.9323, 3.4719,
    3.7498, 4.283, 3.5694, 4.2467, 3.9037, 3.2947, 5.077, 3.5075, 3.27, 3.4767, 2.8063, 5.1125, 3.5327, 4.7833,
    3.1286, 4.1819, 3.8527, 3.8312, 3.5605, 4.3875, 3.9624, 4.0168, 3.5643, 4.055, 5.5614, 4.2963, 4.408, 3.4959,
    3.8747, 3.7608, 3.5735, 3.149, 3.7662, 3.6746, 3.4563, 3.8161,
)


@dataclass(frozen=True)
class Family:
    """A diffusion model family's latent conventions (of its full VAE, as diffusers' pipelines apply them)."""

    name: str
    latent_channels: int  # channels of the VAE latent the TAE consumes
    scaling_factor: float  # diffusion latents = (vae latents - shift_factor) * scaling_factor
    shift_factor: float
    # "none" | "flux" (2x2 patches packed into tokens) | "flux2" (2x2 patchify + batch norm + tokens) |
    # "tokens" (Qwen-Image 2.1: each latent pixel one token, row-major)
    packing: str
    vae_scale_factor: int  # image pixels per VAE latent pixel
    # per-channel normalisation instead of scaling/shift: diffusion latents = (vae latents - mean) / std
    latents_mean: tuple[float, ...] = ()
    latents_std: tuple[float, ...] = ()


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
    "qwenimage21": Family("qwenimage21", 64, 1.0, 0.0, "tokens", 16, QWENIMAGE21_LATENTS_MEAN,
                          QWENIMAGE21_LATENTS_STD),
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
    _v("taeqi2_1", "Qwen-Image 2.1 (F16: 16x, 64 channels, RGBA)",
       {"latent_channels": 64, "in_channels": 4, "out_channels": 4, "patch_size": 2,
        "encoder_block_out_channels": (64, 64, 128, 256), "decoder_block_out_channels": (256, 128, 64, 64)},
       "qwenimage21", "madebyollin/taeqi2_1", "original", ("taeqi2_1_encoder.pth", "taeqi2_1_decoder.pth"),
       aliases=("qwen-image-2.1", "qwenimage21")),
]}

_ALIASES = {alias: v.name for v in VARIANTS.values() for alias in (v.name, *v.aliases)}


def get_variant(name: str) -> Variant:
    """Look a variant up by name or alias (case-insensitive). KeyError lists the closest known names."""
    key = name.lower()
    if key in _ALIASES:
        return VARIANTS[_ALIASES[key]]
    raise KeyError(f"unknown variant {name!r}{did_you_mean(key, _ALIASES)} Known: {', '.join(VARIANTS)}")


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """"; did you mean a, b?" for the closest of `candidates` to `name` (case-insensitive), or ""."""
    close = difflib.get_close_matches(name.lower(), list(candidates), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def is_variant(name: str) -> bool:
    return isinstance(name, str) and name.lower() in _ALIASES


def closest_names(name: str) -> list[str]:
    return difflib.get_close_matches(name.lower(), list(_ALIASES), n=3, cutoff=0.5)


def variant_config(name: str) -> dict[str, Any]:
    """Full AutoencoderTiny parameters of a variant."""
    from .config import DEFAULTS

    return {**DEFAULTS, **get_variant(name).config}
