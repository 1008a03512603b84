"""Video TAEs in diffusers video pipelines: `set_vae(pipe, AutoencoderTinyVideo...)` and live previews.

`tinyae.diffusers.set_vae` and `tinyae.diffusers.LivePreview` dispatch here for video models and pipelines.
Supported (diffusers 0.42): WanPipeline (Wan 2.1 / 2.2 A14B: taew2_1; Wan 2.2 TI2V-5B: taew2_2),
HunyuanVideoPipeline (taehv), HunyuanVideo15Pipeline (taehv1_5), CogVideoXPipeline (taecvx), LTX2Pipeline
(taeltx_2 / taeltx2_3), and their image-to-video / video-to-video siblings by class-name prefix.

A video TAE consumes the latents the video model denoises, so the pipeline VAE (`PipelineVideoVAE`) answers every
config field the pipelines read with the value that makes their de-normalisation the identity: Wan's
`latents_mean` 0 / `latents_std` 1, `scaling_factor` 1 (HunyuanVideo, CogVideoX), LTX-2's `latents_mean` /
`latents_std` buffers 0 / 1 and `timestep_conditioning` False; plus the compression ratios each pipeline reads
(`scale_factor_spatial` / `_temporal`, `temporal_compression_ratio`, `block_out_channels`, `z_dim`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..model import DecoderOutput
from .config import VideoConfig
from .model import AutoencoderTinyVideo
from .variants import FAMILIES, VIDEO_VARIANTS, VideoFamily

# Pipeline class name prefixes -> video family, most specific first. Wan is told apart by its latent channels.
_PIPELINE_PREFIXES = (("HunyuanVideo15", "hunyuanvideo1.5"), ("HunyuanVideo", "hunyuanvideo"),
                      ("HunyuanSkyreels", "hunyuanvideo"), ("LTX2", "ltx2"), ("CogVideoX", "cogvideox"),
                      ("Wan", "wan"))


def is_video_model(model: Any) -> bool:
    return isinstance(model, AutoencoderTinyVideo)


def video_pipeline_family(pipe: Any) -> VideoFamily | None:
    """The video family of a diffusers pipeline from its class name (and, for Wan, its transformer's channels);
    None for a pipeline that is not a video pipeline tinyae knows."""
    for klass in type(pipe).__mro__:
        for prefix, name in _PIPELINE_PREFIXES:
            if klass.__name__.startswith(prefix):
                if name != "wan":
                    return FAMILIES[name]
                channels = _denoiser_channels(pipe)
                return FAMILIES["wan2.2" if channels == 48 else "wan2.1"]
    return None


def _denoiser_channels(pipe: Any) -> int | None:
    cfg = getattr(getattr(pipe, "transformer", None), "config", None)
    return None if cfg is None else (cfg.get("out_channels") or cfg.get("in_channels"))


def _variants_for(fam: VideoFamily) -> str:
    return " or ".join(v.name for v in VIDEO_VARIANTS.values() if v.family == fam)


def check_video_vae(model: Any, pipe: Any) -> VideoFamily:
    """Check that `model` is a video TAE for `pipe`'s family; return the family. ValueError otherwise.

    Checked: a video TAE for a video pipeline (and not for an image one), latent channels, spatial and temporal
    compression, the registry variant's family where the model knows its variant (taew2_1 and taehv have the same
    shapes but not the same latents), and the denoiser's output channels."""
    fam = video_pipeline_family(pipe)
    where = type(pipe).__name__
    if fam is None:
        raise ValueError(f"{where} is not a video pipeline tinyae knows (Wan*, HunyuanVideo*, HunyuanVideo15*, "
                         f"LTX2*, CogVideoX*); a video TAE ({type(model).__name__}) cannot be its VAE")
    if not is_video_model(model):
        raise ValueError(f"{where} is a video pipeline ({fam.name} latents) and needs a video TAE "
                         f"(tinyae.AutoencoderTinyVideo: {_variants_for(fam)}), got {type(model).__name__}")
    cfg = model.config
    if cfg.latent_channels != fam.latent_channels:
        raise ValueError(f"this video TAE has {cfg.latent_channels} latent channels but {where} needs "
                         f"{fam.latent_channels} ({fam.name} latents): use {_variants_for(fam)}")
    if cfg.encoder_space_factor != fam.spatial_ratio or cfg.encoder_time_factor != fam.temporal_ratio:
        raise ValueError(f"this video TAE compresses {cfg.encoder_space_factor}x in space and "
                         f"{cfg.encoder_time_factor}x in time but {where} needs {fam.spatial_ratio}x and "
                         f"{fam.temporal_ratio}x: use {_variants_for(fam)}")
    if cfg.time_factor != fam.temporal_ratio or cfg.space_factor != fam.spatial_ratio:
        raise ValueError(f"this video TAE skips temporal or spatial upscaling (a preview model); {where} needs full "
                         "frames: set the full model and preview with LivePreview(time=False/space=False)")
    if cfg.variant in VIDEO_VARIANTS and VIDEO_VARIANTS[cfg.variant].family != fam:
        raise ValueError(f"{cfg.variant} is for {VIDEO_VARIANTS[cfg.variant].family.name} latents, but {where} "
                         f"denoises {fam.name} latents: use {_variants_for(fam)}")
    channels = _denoiser_channels(pipe)
    if channels is not None and fam.name != "hunyuanvideo1.5" and channels != fam.latent_channels:
        raise ValueError(f"{where}'s transformer outputs {channels} channels, not the {fam.latent_channels} of "
                         f"{fam.name} latents: tinyae cannot pair a video TAE with it")
    return fam


@dataclasses.dataclass(frozen=True)
class PipelineVideoConfig(VideoConfig):
    """`VideoConfig` that also answers the config fields diffusers' video pipelines read (not saved)."""

    def __getattr__(self, name: str) -> Any:
        c = self.latent_channels
        fields = {"z_dim": c, "scaling_factor": 1.0, "shift_factor": 0.0, "latents_mean": [0.0] * c,
                  "latents_std": [1.0] * c, "scale_factor_spatial": self.encoder_space_factor,
                  "scale_factor_temporal": self.time_factor, "temporal_compression_ratio": self.time_factor,
                  "spatial_compression_ratio": self.encoder_space_factor, "timestep_conditioning": False,
                  "block_out_channels": (64,) * (self.encoder_space_factor.bit_length()),
                  "invert_scale_latents": False}
        if name in fields:
            return fields[name]
        raise AttributeError(name)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            return default


class PipelineVideoVAE(AutoencoderTinyVideo):
    """`AutoencoderTinyVideo` as a diffusers video pipeline's `vae` (see the module docstring); same weights."""

    def __init__(self, config: VideoConfig | str | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        self._config = PipelineVideoConfig(**{f.name: getattr(self._config, f.name)
                                              for f in dataclasses.fields(VideoConfig)})

    @classmethod
    def from_model(cls, model: AutoencoderTinyVideo) -> "PipelineVideoVAE":
        """The same model as a pipeline component, sharing `model`'s weight tensors."""
        if isinstance(model, cls):
            return model
        new = cls(model.config, encoder=model.encoder is not None, decoder=model.decoder is not None)
        new.load_state_dict(model.state_dict(), assign=True)
        new.tile_rows = model.tile_rows
        return new.train(model.training)

    @property
    def latents_mean(self) -> torch.Tensor:  # LTX-2 pipelines read these buffers
        return torch.zeros(self.config.latent_channels, device=self.device, dtype=self.dtype)

    @property
    def latents_std(self) -> torch.Tensor:
        return torch.ones(self.config.latent_channels, device=self.device, dtype=self.dtype)

    @property
    def spatial_compression_ratio(self) -> int:
        return self.config.encoder_space_factor

    @property
    def temperal_downsample(self) -> list[bool]:  # (sic) WanVideoToVideoPipeline reads 2**sum and 2**len of it
        c = self.config
        steps, time = c.encoder_space_factor.bit_length() - 1, c.encoder_time_factor.bit_length() - 1
        return [False] * (steps - time) + [True] * time

    def decode(self, z: torch.Tensor, temb: Any = None, return_dict: bool = True, parallel: bool = True,
               **_: Any) -> DecoderOutput | tuple[torch.Tensor]:
        """As `AutoencoderTinyVideo.decode`; accepts (and ignores) LTX-2's decode timestep `temb`."""
        return super().decode(z, return_dict=return_dict, parallel=parallel)


def register_with_diffusers() -> None:
    """Let `DiffusionPipeline.save_pretrained` / `from_pretrained` save and load a `PipelineVideoVAE` component.

    diffusers saves and loads only components whose class derives from one in its `LOADABLE_CLASSES` table (short
    of executing a .py file shipped with the weights), so this adds this module's `PipelineVideoVAE` to it; the
    pipeline's model_index.json then names it as ["tinyae.video.pipelines", "PipelineVideoVAE"], and loading
    imports this module, which registers it again. Idempotent; done when this module is imported."""
    try:
        from diffusers.pipelines import pipeline_loading_utils as plu
    except ImportError:  # diffusers absent: nothing to register with
        return
    methods = ["save_pretrained", "from_pretrained"]
    plu.LOADABLE_CLASSES.setdefault(__name__, {})["PipelineVideoVAE"] = methods
    plu.ALL_IMPORTABLE_CLASSES["PipelineVideoVAE"] = methods  # the same dict the loaders were handed


def set_video_vae(pipe: Any, model: AutoencoderTinyVideo) -> PipelineVideoVAE:
    """Check `model` against the video pipeline (`check_video_vae`), then make it `pipe.vae`; return it."""
    check_video_vae(model, pipe)
    register_with_diffusers()
    vae = PipelineVideoVAE.from_model(model)
    if hasattr(pipe, "register_modules"):  # also records it in model_index.json (`pipe.vae =` does not when the
        pipe.register_modules(vae=vae)     # pipeline was built with vae=None)
    else:
        pipe.vae = vae
    # the ratios pipelines cache at construction (from the VAE they were built with, or their defaults)
    ratios = {"vae_scale_factor_spatial": vae.spatial_compression_ratio,
              "vae_spatial_compression_ratio": vae.spatial_compression_ratio,
              "vae_scale_factor_temporal": vae.temporal_compression_ratio,
              "vae_temporal_compression_ratio": vae.temporal_compression_ratio, "vae_scaling_factor_image": 1.0,
              "vae_scaling_factor": 1.0,
              "num_channels_latents": vae.config.latent_channels}
    for name, value in ratios.items():
        if hasattr(pipe, name):
            setattr(pipe, name, value)
    processor = getattr(pipe, "video_processor", None)
    if processor is not None and hasattr(processor, "register_to_config"):
        processor.register_to_config(vae_scale_factor=vae.spatial_compression_ratio)
    return vae


register_with_diffusers()
