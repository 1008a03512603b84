"""tinyae in diffusers pipelines: a drop-in `pipe.vae`, and live previews of sampling (`LivePreview`).

Needs diffusers (`pip install tinyae[diffusers]`). Inside this package `import diffusers` is the real diffusers.

    from tinyae.diffusers import AutoencoderTiny, LivePreview, set_vae
    set_vae(pipe, AutoencoderTiny.from_pretrained("taef1"))       # checks the family, then pipe.vae = ...
    image = pipe(prompt, callback_on_step_end=LivePreview(pipe.vae, pipe=pipe, animation="steps.gif")).images[0]

Latent conventions (see docs/diffusers.md): every TAE consumes the latents the denoiser works on, unpacked, so a
pipeline VAE must have `scaling_factor=1.0` and `shift_factor=0.0` (the pipeline's own `latents / scaling_factor +
shift_factor` is then the identity). FLUX.2 pipelines also de-normalise with `vae.bn` statistics and
`vae.config.batch_norm_eps`; this module's `AutoencoderTiny` exposes an identity batch norm (mean 0, variance 1,
eps 0), so the pipeline hands TAEF2 the normalised, un-patchified latents it was trained on.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn as nn

try:
    from diffusers import ModelMixin  # also the name diffusers' pipeline loader looks up in this module
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("tinyae.diffusers needs diffusers: pip install 'tinyae[diffusers]'") from e

from .. import autoencoder as _model
from ..nets.config import TinyConfig
from ..nets.variants import FAMILIES, VARIANTS, Family


__all__ = ["AutoencoderTiny", "check_vae", "pipeline_family", "set_vae"]

# Keyword arguments that diffusers' pipeline loader passes to a component's from_pretrained.
_LOADER_KWARGS = ("max_memory", "offload_folder", "offload_state_dict", "use_safetensors", "low_cpu_mem_usage",
                  "disable_mmap")


class PipelineConfig(TinyConfig):
    """`TinyConfig` that also answers `batch_norm_eps` (0.0), which FLUX.2 pipelines read; not saved."""

    __slots__ = ()
    PIPELINE_FIELDS = {"batch_norm_eps": 0.0}

    def __getattr__(self, name: str) -> Any:
        if name in PipelineConfig.PIPELINE_FIELDS:
            return PipelineConfig.PIPELINE_FIELDS[name]
        return super().__getattr__(name)

    def __reduce__(self):  # copies and pickles stay PipelineConfig
        return (_rebuild_pipeline_config, (self.init_kwargs(),))


def _rebuild_pipeline_config(kwargs: dict[str, Any]) -> PipelineConfig:
    return PipelineConfig(**kwargs)


class AutoencoderTiny(_model.AutoencoderTiny, ModelMixin):
    """`tinyae.AutoencoderTiny` made a full diffusers pipeline component.

    Same network, weights and API as `tinyae.AutoencoderTiny` (it is a subclass), plus what pipelines need beyond
    encode/decode: it is a `diffusers.ModelMixin`, so `pipe.save_pretrained` writes it and
    `Pipeline.from_pretrained` loads it back as this class; `bn` and `config.batch_norm_eps` make FLUX.2 pipelines'
    batch-norm (de)normalisation the identity. Build one with `from_pretrained` (any tinyae source) or
    `from_model(tinyae_model)`.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._config = PipelineConfig(**self._config.init_kwargs())

    # nn.Module's conversions: ModelMixin.to warns about fp32 modules a TAE does not have.
    to = nn.Module.to
    cuda = nn.Module.cuda
    half = nn.Module.half
    float = nn.Module.float

    @property
    def bn(self) -> types.SimpleNamespace:
        """Identity batch-norm statistics (running_mean 0, running_var 1) over FLUX.2's 4x patchified channels."""
        n = 4 * self.config.latent_channels
        p = next(self.parameters())
        return types.SimpleNamespace(running_mean=torch.zeros(n, device=p.device, dtype=p.dtype),
                                     running_var=torch.ones(n, device=p.device, dtype=p.dtype))

    @classmethod
    def from_model(cls, model: _model.AutoencoderTiny) -> "AutoencoderTiny":
        """The same model as a pipeline component: shares `model`'s weight tensors, copies its toggles."""
        if isinstance(model, cls):
            return model
        if not isinstance(model, _model.AutoencoderTiny):
            raise ValueError(f"expected a tinyae.AutoencoderTiny, got {type(model).__name__}")
        new = cls.from_config(model.config, has_encoder=model.encoder is not None,
                              has_decoder=model.decoder is not None)
        new.load_state_dict(model.state_dict(), assign=True)
        for name in ("use_slicing", "use_tiling", "tiling_options", "gradient_checkpointing", "check_finite"):
            setattr(new, name, getattr(model, name))
        return new.train(model.training)

    @classmethod
    def from_pretrained(cls, source: Any, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, **kwargs: Any) -> "AutoencoderTiny":
        """As `tinyae.AutoencoderTiny.from_pretrained`; also accepts the keywords diffusers' pipeline loader passes
        (`device_map` may be a device; `variant`, `use_flashpack` and `quantization_config` must be unset)."""
        for name in _LOADER_KWARGS:
            kwargs.pop(name, None)
        for name in ("variant", "quantization_config"):
            if kwargs.pop(name, None) is not None:
                raise ValueError(f"tinyae's AutoencoderTiny does not support {name}")
        if kwargs.pop("use_flashpack", False):
            raise ValueError("tinyae's AutoencoderTiny does not support use_flashpack")
        device_map = kwargs.pop("device_map", None)
        if device_map is not None:
            if isinstance(device_map, dict):
                raise ValueError("tinyae's AutoencoderTiny is tiny: pass device_map as one device, not a dict")
            device = device if device is not None else device_map
        return cls.from_model(_model.AutoencoderTiny.from_pretrained(source, torch_dtype=torch_dtype, device=device,
                                                                     **kwargs))


# Saved pipelines record the class's module in model_index.json: keep the public path users import it from.
AutoencoderTiny.__module__ = "tinyae.diffusers"


# ---------------------------------------------------------------------------------------------- checks
# Pipeline class name prefixes -> family, most specific first.
_PIPELINE_PREFIXES = (("Flux2", "flux2"), ("Flux", "flux"), ("StableDiffusion3", "sd3"),
                      ("StableDiffusionXL", "sdxl"), ("StableDiffusion", "sd"), ("QwenImage21", "qwenimage21"))


def pipeline_family(pipe: Any) -> Family:
    """The latent family of a diffusers pipeline, from its class: SD1/2, SDXL, SD3, FLUX.1, FLUX.2 or Qwen-Image 2.1
    pipelines."""
    for klass in type(pipe).__mro__:
        for prefix, name in _PIPELINE_PREFIXES:
            if klass.__name__.startswith(prefix):
                return FAMILIES[name]
    raise ValueError(f"{type(pipe).__name__} is not a pipeline tinyae knows (StableDiffusion*, StableDiffusionXL*, "
                     "StableDiffusion3*, Flux*, Flux2*, QwenImage21*); pass family= explicitly")


def _resolve_family(pipe: Any = None, family: str | Family | None = None) -> Family:
    if family is not None:
        from ..data.latents import _family

        fam = _family(family)
        if pipe is not None and pipeline_family(pipe) != fam:
            raise ValueError(f"family {fam.name!r} does not match {type(pipe).__name__} "
                             f"({pipeline_family(pipe).name!r})")
        return fam
    if pipe is None:
        raise ValueError("pass the pipeline or the family")
    return pipeline_family(pipe)


def _variants_for(fam: Family) -> str:
    return " or ".join(v.name for v in VARIANTS.values() if v.family == fam)


def check_vae(model: Any, pipe: Any = None, family: str | Family | None = None) -> Family:
    """Check that `model` is the right TAE for a pipeline (or family); return the family. ValueError otherwise.

    Checked: latent channels, spatial scale, `scaling_factor == 1` and `shift_factor == 0` (the TAE consumes the
    denoiser's latents directly), and, given a pipeline, that its denoiser works on the family's latents.
    """
    fam = _resolve_family(pipe, family)
    where = type(pipe).__name__ if pipe is not None else f"family {fam.name!r}"
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "latent_channels") or not callable(getattr(model, "decode", None)):
        raise ValueError(f"expected a tinyae AutoencoderTiny, got {type(model).__name__}")
    if cfg.latent_channels != fam.latent_channels:
        raise ValueError(f"this TAE has {cfg.latent_channels} latent channels but {where} needs {fam.latent_channels} "
                         f"({fam.name} latents): use {_variants_for(fam)}")
    scale = getattr(model, "spatial_scale_factor", 2 ** (len(cfg.block_out_channels) - 1))
    if scale != fam.vae_scale_factor:
        raise ValueError(f"this TAE works at 1/{scale} scale but {where} needs 1/{fam.vae_scale_factor}: use "
                         f"{_variants_for(fam)}")
    if getattr(cfg, "scaling_factor", 1.0) != 1.0 or getattr(cfg, "shift_factor", 0.0) != 0.0:
        raise ValueError(f"a TAE consumes the denoiser's latents directly, so as a pipeline VAE it needs "
                         f"scaling_factor=1.0 and shift_factor=0.0 (got {cfg.scaling_factor}, {cfg.shift_factor}); "
                         "the family's constants are applied by tinyae.latents.from_vae_latents, not by the TAE")
    if pipe is not None:
        den = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
        dcfg = getattr(den, "config", None)
        if dcfg is not None:
            channels = dcfg.get("out_channels") or dcfg.get("in_channels")
            want = fam.latent_channels * (4 if fam.packing in ("flux", "flux2") else 1)
            if channels is not None and channels != want:
                raise ValueError(f"{type(pipe).__name__}'s {type(den).__name__} outputs {channels} channels, not the "
                                 f"{want} of {fam.name} latents: tinyae cannot pair a TAE with it")
        pipe_scale = getattr(pipe, "vae_scale_factor", None)
        if isinstance(pipe_scale, int) and pipe_scale != scale:
            raise ValueError(f"{type(pipe).__name__} was built for a VAE at 1/{pipe_scale} scale, "
                             f"this TAE is 1/{scale}")
    return fam


def set_vae(pipe: Any, model: _model.AutoencoderTiny) -> AutoencoderTiny:
    """Check `model` against the pipeline (`check_vae`), then make it `pipe.vae`; return the pipeline VAE.

    A plain `tinyae.AutoencoderTiny` becomes this module's `AutoencoderTiny` (sharing its weights), which FLUX.2
    pipelines and `pipe.save_pretrained` need; diffusers' own AutoencoderTiny is set as it is (not for FLUX.2).
    Raises ValueError, before any generation, on a wrong model.
    """
    from ..video import pipelines as video

    if video.is_video_model(model) or video.video_pipeline_family(pipe) is not None:
        return video.set_video_vae(pipe, model)  # video TAEs and pipelines: tinyae.video.pipelines
    fam = check_vae(model, pipe)
    if isinstance(model, _model.AutoencoderTiny):
        vae = AutoencoderTiny.from_model(model)
    elif fam.packing == "flux2":
        raise ValueError(f"FLUX.2 pipelines need tinyae's AutoencoderTiny (taef2), got {type(model).__name__}")
    else:  # e.g. diffusers' own AutoencoderTiny, already a pipeline component
        vae = model
    pipe.vae = vae
    return vae

