"""The video TAEs (madebyollin's TAEHV family) as data: architecture, frame handling, and each family's latents.

The latents every video TAE consumes are the ones its video model denoises, i.e. the full VAE's latents after the
normalisation the diffusers pipeline applies; `VideoFamily` records that normalisation as diffusers' VAE class and
pipeline define it (diffusers 0.42: AutoencoderKLWan + WanPipeline, AutoencoderKLHunyuanVideo,
AutoencoderKLHunyuanVideo15, AutoencoderKLLTX2Video + LTX2Pipeline, AutoencoderKLCogVideoX + CogVideoXPipeline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..variants import did_you_mean

# Wan 2.1's per-channel latent statistics: AutoencoderKLWan's default config (diffusers 0.42).
WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass(frozen=True)
class VideoFamily:
    """A video model family's latent conventions (its full VAE, as diffusers' pipelines apply them).

    normalisation: "scale": diffusion latents = vae latents * scaling_factor (HunyuanVideo, CogVideoX);
    "mean_std": (z - mean) / std per channel, mean/std from the VAE config (Wan: `latents_mean`/`latents_std`);
    "mean_std_buffers": (z - mean) * scaling_factor / std, mean/std stored in the VAE weights (LTX-2).
    """

    name: str
    diffusers_vae: str  # the diffusers class of the full VAE
    latent_channels: int
    spatial_ratio: int  # pixels per latent pixel
    temporal_ratio: int  # frames per latent frame (after the first)
    normalisation: str
    scaling_factor: float = 1.0
    latents_mean: tuple[float, ...] | None = None  # where diffusers' defaults hold them
    latents_std: tuple[float, ...] | None = None
    note: str = ""


@dataclass(frozen=True)
class FrameRule:
    """How a variant maps frame counts (beyond padding the end to the time factor and trimming t-1 frames)."""

    keep_all_for_even_latents: bool = False  # CogVideoX: no trim when the latent count is even
    encode_chunk: int | None = None  # frames per chunk of the frame grid (taeh3: 17; one pass over all chunks)
    encode_front_zeros: int = 0  # zero frames the encoder reads before each chunk (taeh3: 3)
    encode_drop_last: int = 0  # latents the last chunk lacks: the grid is 5c - 3 latents, 17c - 12 frames (taeh3: 3)
    decode_chunk: int | None = None  # latents per chunk whose first t-1 decoded frames are dropped (taeh3: 5)


@dataclass(frozen=True)
class VideoVariant:
    name: str
    description: str
    family: VideoFamily
    latent_channels: int
    patch_size: int
    encoder_time_downscale: tuple[bool, bool, bool]
    decoder_time_upscale: tuple[bool, bool, bool]
    decoder: str = "base"  # "base" | "super"
    frames: FrameRule = field(default_factory=FrameRule)
    files: tuple[str, ...] = ()  # names of the released files (madebyollin/taehv)
    aliases: tuple[str, ...] = ()

    @property
    def time_factor(self) -> int:
        return 2 ** sum(self.decoder_time_upscale)

    @property
    def space_factor(self) -> int:
        return 8 * self.patch_size


FAMILIES: dict[str, VideoFamily] = {f.name: f for f in [
    VideoFamily("hunyuanvideo", "AutoencoderKLHunyuanVideo", 16, 8, 4, "scale", 0.476986),
    VideoFamily("wan2.1", "AutoencoderKLWan", 16, 8, 4, "mean_std", 1.0, WAN21_MEAN, WAN21_STD,
                note="also Wan 2.2 14B (A14B) models"),
    VideoFamily("wan2.2", "AutoencoderKLWan", 48, 16, 4, "mean_std",
                note="Wan 2.2 TI2V-5B; its 48-channel latents_mean/std are in the VAE's config.json, "
                     "not in diffusers' defaults (which are Wan 2.1's)"),
    VideoFamily("hunyuanvideo1.5", "AutoencoderKLHunyuanVideo15", 32, 16, 4, "scale", 1.03682),
    VideoFamily("ltx2", "AutoencoderKLLTX2Video", 128, 32, 8, "mean_std_buffers", 1.0,
                note="latents_mean/latents_std are buffers in the VAE weights"),
    VideoFamily("cogvideox", "AutoencoderKLCogVideoX", 16, 8, 4, "scale", 1.15258426,
                note="CogVideoX-2b default; the 5b VAE config sets scaling_factor 0.7"),
    VideoFamily("opensora1.3", "", 16, 8, 4, "scale", 1.0, note="Open-Sora 1.3's VAE is not in diffusers"),
    VideoFamily("h3", "", 24, 16, 4, "scale", 1.0, note="MiniMax H3's VAE is not in diffusers"),
]}
# Mochi (AutoencoderKLMochi, 12 channels, per-channel mean/std) has no tiny autoencoder in this family.

_T4 = ((True, True, False), (False, True, True))  # 4x time: encoder, decoder strides
_T8 = ((True, True, True), (True, True, True))  # 8x time (LTX-2)


def _v(name: str, description: str, family: str, channels: int, patch: int, time: tuple, decoder: str = "base",
       frames: FrameRule = FrameRule(), aliases: tuple[str, ...] = ()) -> VideoVariant:
    return VideoVariant(name, description, FAMILIES[family], channels, patch, time[0], time[1], decoder, frames,
                        (f"{name}.pth", f"{name}.safetensors"), aliases)


VIDEO_VARIANTS: dict[str, VideoVariant] = {v.name: v for v in [
    _v("taehv", "HunyuanVideo", "hunyuanvideo", 16, 1, _T4, aliases=("hunyuanvideo",)),
    _v("taew2_1", "Wan 2.1 (and Wan 2.2 14B)", "wan2.1", 16, 1, _T4, aliases=("wan2.1", "wan21", "wan")),
    _v("taecvx", "CogVideoX", "cogvideox", 16, 1, _T4, frames=FrameRule(keep_all_for_even_latents=True),
       aliases=("cogvideox",)),
    _v("taeos1_3", "Open-Sora 1.3", "opensora1.3", 16, 1, _T4, aliases=("opensora1.3",)),
    _v("taew2_2", "Wan 2.2 TI2V-5B (48 channels, 16x space)", "wan2.2", 48, 2, _T4, aliases=("wan2.2", "wan22")),
    _v("taehv1_5", "HunyuanVideo 1.5 (32 channels, 16x space)", "hunyuanvideo1.5", 32, 2, _T4,
       aliases=("hunyuanvideo1.5",)),
    _v("taeltx_2", "LTX-2 (128 channels, 32x space, 8x time)", "ltx2", 128, 4, _T8, aliases=("ltx2",)),
    _v("taeltx2_3", "LTX-2.3 (128 channels, 32x space, 8x time)", "ltx2", 128, 4, _T8, aliases=("ltx2.3",)),
    _v("taeh3", "MiniMax H3 (24 channels; chunked frame handling)", "h3", 24, 2, _T4,
       frames=FrameRule(encode_chunk=17, encode_front_zeros=3, encode_drop_last=3, decode_chunk=5),
       aliases=("h3",)),
    _v("taehv1_5_super", "HunyuanVideo 1.5, `super` decoder", "hunyuanvideo1.5", 32, 2, _T4, decoder="super"),
    _v("taew2_2_super", "Wan 2.2 TI2V-5B, `super` decoder", "wan2.2", 48, 2, _T4, decoder="super"),
]}

_ALIASES = {a: v.name for v in VIDEO_VARIANTS.values() for a in (v.name, *v.aliases)}


def get_video_variant(name: str) -> VideoVariant:
    """Look a video variant up by name or alias (case-insensitive). KeyError lists the closest known names."""
    key = name.lower()
    if key in _ALIASES:
        return VIDEO_VARIANTS[_ALIASES[key]]
    raise KeyError(f"unknown video variant {name!r}{did_you_mean(key, _ALIASES)} Known: {', '.join(VIDEO_VARIANTS)}")


def is_video_variant(name: object) -> bool:
    return isinstance(name, str) and name.lower() in _ALIASES


def variant_from_filename(filename: str) -> VideoVariant | None:
    """Last resort, as the original does: the variant whose name the file name holds (longest match wins)."""
    stem = filename.lower().rsplit("/", 1)[-1]
    hits = [v for v in VIDEO_VARIANTS.values() if v.name in stem]
    return max(hits, key=lambda v: len(v.name)) if hits else None
