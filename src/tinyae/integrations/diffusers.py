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

import math
import os
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from PIL import Image, ImageDraw, features

try:
    from diffusers import ModelMixin  # also the name diffusers' pipeline loader looks up in this module
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("tinyae.diffusers needs diffusers: pip install 'tinyae[diffusers]'") from e

from .. import autoencoder as _model
from ..nets.config import TinyConfig
from ..data.latents import unpack_flux, unpack_flux2, unpack_tokens
from ..nets.variants import FAMILIES, VARIANTS, Family
from ..io.weights import atomic_write

__all__ = ["AutoencoderTiny", "LivePreview", "PreviewFrame", "check_vae", "pipeline_family", "set_vae"]

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


# ---------------------------------------------------------------------------------------------- x0 estimates
def noise_level(scheduler: Any, timestep: Any) -> tuple[float, float] | None:
    """(alpha, sigma) such that the latents after the step just taken are alpha * x0 + sigma * noise.

    Known for deterministic first-order schedulers whose step keeps (x0, noise) estimates consistent, so that two
    consecutive latents determine x0: FlowMatchEulerDiscreteScheduler (alpha = 1 - sigma), EulerDiscreteScheduler
    (alpha = 1, no churn) and DDIMScheduler (sqrt of alphas_cumprod; eta = 0, no clipping). None for the others.
    """
    name = type(scheduler).__name__
    cfg = scheduler.config
    if name == "FlowMatchEulerDiscreteScheduler":
        if cfg.get("stochastic_sampling", False) or cfg.get("invert_sigmas", False) or scheduler.step_index is None:
            return None
        s = float(scheduler.sigmas[scheduler.step_index])
        return 1.0 - s, s
    if name == "EulerDiscreteScheduler":
        if scheduler.step_index is None:
            return None
        return 1.0, float(scheduler.sigmas[scheduler.step_index])
    if name == "DDIMScheduler":
        if cfg.get("clip_sample", False) or cfg.get("thresholding", False) or not scheduler.num_inference_steps:
            return None
        prev = int(timestep) - cfg.num_train_timesteps // scheduler.num_inference_steps
        abar = float(scheduler.alphas_cumprod[prev]) if prev >= 0 else float(scheduler.final_alpha_cumprod)
        return math.sqrt(abar), math.sqrt(1.0 - abar)
    return None


def x0_from_two(prev: torch.Tensor, prev_level: tuple[float, float], cur: torch.Tensor,
                cur_level: tuple[float, float]) -> torch.Tensor | None:
    """x0 from latents at two noise levels (x = a x0 + s n, x' = a' x0 + s' n): (s' x - s x') / (s' a - s a')."""
    (a, s), (a2, s2) = prev_level, cur_level
    den = s2 * a - s * a2
    if abs(den) < 1e-8:
        return None
    if s2 == 0.0:  # the last step of a schedule ending at noise 0 lands on x0 itself
        return cur / a2
    return ((s2 * prev.float() - s * cur.float()) / den).to(cur.dtype)


def _scheduler_x0(scheduler: Any) -> torch.Tensor | None:
    """The x0 estimate that multistep schedulers keep (DPMSolverMultistep with dpmsolver++, UniPC predicting x0)."""
    name = type(scheduler).__name__
    outs = getattr(scheduler, "model_outputs", None)
    if not outs or outs[-1] is None:
        return None
    cfg = scheduler.config
    if name == "DPMSolverMultistepScheduler" and cfg.get("algorithm_type") in ("dpmsolver++", "sde-dpmsolver++"):
        return outs[-1]
    if name == "UniPCMultistepScheduler" and cfg.get("predict_x0", True):
        return outs[-1]
    return None


# ---------------------------------------------------------------------------------------------- previews
@dataclass
class PreviewFrame:
    """One preview: `kind` "x0" (the denoised estimate) or "xt" (the noisy latents as they are).

    `latents` are what the TAE decoded (B, C, h, w); `images` the decoded batch as RGB PIL images.
    """

    step: int
    timestep: float
    kind: str
    latents: torch.Tensor
    images: list[Image.Image] = field(repr=False)

    @property
    def image(self) -> Image.Image:
        return self.images[0]


def _to_pil(x: torch.Tensor) -> list[Image.Image]:
    """Images in [-1, 1] (B, 3, H, W) -> PIL, rounded as diffusers' image processor does."""
    arr = (x.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


_ANIMATION_FORMATS = {".gif": "GIF", ".webp": "WEBP"}


def _fast_copy(model: Any, optimize: bool | str) -> Any:
    """An optimized copy of a tinyae model for previews (`optimize`: True for "auto", or a precision name), or
    the model itself where it cannot be optimized (another kind of model, a device optimize() does not run on)."""
    if optimize is False or not isinstance(model, _model.AutoencoderTiny) or model.decoder is None:
        return model
    from ..autoencoder import OptimizedAutoencoderTiny
    from ..engine.runtime import explain_precision

    if isinstance(model, OptimizedAutoencoderTiny) or explain_precision(model.device)[0] == "exact":
        return model
    return model.optimize("auto" if optimize is True else optimize)


class LivePreview:
    """A `callback_on_step_end` that decodes each step's denoised estimate with a TAE.

    At each step it turns the pipeline's latents into the TAE's latents (FLUX tokens -> 16 x H/8 x W/8; FLUX.2
    tokens -> 32 x H/8 x W/8, still batch-normalised, which is what TAEF2 consumes) and decodes, every `every`
    steps and at the last one. `mode="x0"` (default) previews the denoised estimate where the scheduler makes it
    computable: from two consecutive latents for FlowMatchEuler / Euler / DDIM (every step after the first), from
    the scheduler's own estimate for DPMSolverMultistep (dpmsolver++) / UniPC; otherwise, and with `mode="xt"`, the
    noisy latents as they are. Each frame says which (`PreviewFrame.kind`).

    Outputs: `on_frame(frame)`; PNGs in `save_dir` (`step_000.png`...); after the last step an animated GIF or
    WebP (`animation=` path, `frame_ms` per frame) and a contact sheet (`contact_sheet=` path, tiles at most
    `tile` pixels, `columns` per row). Frames are kept in `self.frames` (`keep_frames=False` keeps none). A new
    generation (step 0) starts afresh.

    A preview never breaks the generation: the first error warns once (RuntimeWarning) and switches the preview
    off (`self.enabled`); `strict=True` raises instead. Bad arguments, and with `pipe`/`family` given, a model of
    the wrong family, raise ValueError at construction.

    `optimize` (default True): decode with `model.optimize()` ("auto" precision, >= 40 dB against fp32; a
    precision name picks one), a copy made once here, so later changes to the model's weights are not seen;
    False decodes with `model` itself (diffusers' exact function). `self.model` is what decodes.

    `height`/`width` (image pixels) are needed for non-square FLUX / FLUX.2 images, whose packed tokens do not say
    the aspect ratio; without them the token grid is taken as square.
    """

    def __new__(cls, model: Any = None, *args: Any, pipe: Any = None, **kwargs: Any) -> "LivePreview":
        if cls is LivePreview:  # video TAEs and video pipelines: tinyae.video.preview.VideoLivePreview
            from ..video import pipelines as video

            if video.is_video_model(model) or (pipe is not None and video.video_pipeline_family(pipe) is not None):
                from ..video.preview import VideoLivePreview

                cls = VideoLivePreview
        return super().__new__(cls)

    def __init__(self, model: Any, every: int = 1, *, pipe: Any = None, family: str | Family | None = None,
                 mode: str = "x0", on_frame: Callable[[PreviewFrame], Any] | None = None,
                 save_dir: str | os.PathLike | None = None, animation: str | os.PathLike | None = None,
                 contact_sheet: str | os.PathLike | None = None, frame_ms: int = 100, tile: int = 256,
                 columns: int | None = None, height: int | None = None, width: int | None = None,
                 keep_frames: bool = True, strict: bool = False, optimize: bool | str = True):
        if not callable(getattr(model, "decode", None)) or not hasattr(getattr(model, "config", None),
                                                                        "latent_channels"):
            raise ValueError(f"model must be a tinyae AutoencoderTiny, got {type(model).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if mode not in ("x0", "xt"):
            raise ValueError(f"mode must be 'x0' or 'xt', got {mode!r}")
        if on_frame is not None and not callable(on_frame):
            raise ValueError("on_frame must be callable")
        for name, v in (("frame_ms", frame_ms), ("tile", tile), ("columns", columns), ("height", height),
                        ("width", width)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if (height is None) != (width is None):
            raise ValueError("pass both height and width, or neither")
        if animation is not None:
            fmt = _ANIMATION_FORMATS.get(Path(animation).suffix.lower())
            if fmt is None:
                raise ValueError(f"animation must end in .gif or .webp, got {str(animation)!r}")
            if fmt == "WEBP" and not features.check("webp"):
                raise ValueError("this Pillow cannot write WebP; use a .gif animation")
        if not keep_frames and (animation is not None or contact_sheet is not None):
            raise ValueError("an animation or contact sheet is made of the kept frames: keep_frames must be True")
        if contact_sheet is not None and Path(contact_sheet).suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
            raise ValueError(f"contact_sheet must be a .png, .jpg or .webp path, got {str(contact_sheet)!r}")
        if not isinstance(optimize, (bool, str)):
            raise ValueError(f"optimize must be True, False or a precision name, got {optimize!r}")
        self.source_model = model
        self.model = _fast_copy(model, optimize)
        self.every, self.mode, self.on_frame, self.strict = every, mode, on_frame, strict
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.animation = Path(animation) if animation is not None else None
        self.contact_sheet = Path(contact_sheet) if contact_sheet is not None else None
        self.frame_ms, self.tile, self.columns, self.keep_frames = frame_ms, tile, columns, keep_frames
        self.height, self.width = height, width
        self.family: Family | None = None
        if pipe is not None or family is not None:
            self.family = check_vae(model, pipe, family)
        self.enabled = True
        self.frames: list[PreviewFrame] = []
        self._prev: tuple[int, torch.Tensor, tuple[float, float] | None] | None = None

    # diffusers calls callback_on_step_end(pipe, step, timestep, callback_kwargs) and reads back the dict.
    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.enabled:
            try:
                self._step(pipe, int(step), timestep, callback_kwargs["latents"])
            except Exception as e:
                if self.strict:
                    raise
                self.enabled = False
                warnings.warn(f"LivePreview switched off after an error at step {step}: {type(e).__name__}: {e}",
                              RuntimeWarning, stacklevel=2)
        return callback_kwargs

    def _step(self, pipe: Any, step: int, timestep: Any, latents: torch.Tensor) -> None:
        if step == 0:
            self.frames, self._prev = [], None
        if self.family is None:
            self.family = self._check_pipe(pipe)
        latents = latents.detach()
        total = getattr(pipe, "_num_timesteps", None)
        last = isinstance(total, int) and step == total - 1
        level = noise_level(pipe.scheduler, timestep) if self.mode == "x0" else None
        x, kind = latents, "xt"
        if self.mode == "x0":
            est = None
            if level is not None and self._prev is not None and self._prev[0] == step - 1 and self._prev[2]:
                est = x0_from_two(self._prev[1], self._prev[2], latents, level)
            if est is None and _scheduler_x0(pipe.scheduler) is not None:
                # a multistep scheduler's own estimate; after its last step the sample itself is the final x0
                est = latents if last else _scheduler_x0(pipe.scheduler)
            if est is not None and est.shape == latents.shape:
                x, kind = est, "x0"
            self._prev = (step, latents.clone(), level)
        if step % self.every and not last:
            return
        frame = self.decode(x, step, timestep, kind)
        if self.on_frame is not None:
            self.on_frame(frame)
        if self.save_dir is not None:
            for b, im in enumerate(frame.images):
                name = f"step_{step:03d}.png" if len(frame.images) == 1 else f"step_{step:03d}_{b}.png"
                _save_image(im, self.save_dir / name, "PNG")
        if self.keep_frames:
            self.frames.append(frame)
        if last:
            self.finish()

    def _check_pipe(self, pipe: Any) -> Any:
        return check_vae(self.model, pipe)

    def to_tae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's latents (or x0 estimate) -> the TAE's latents (B, C, h, w)."""
        fam = self.family
        lh = self.height // fam.vae_scale_factor if self.height else None
        lw = self.width // fam.vae_scale_factor if self.width else None
        if fam.packing == "flux":
            return unpack_flux(latents, lh, lw)
        if fam.packing == "flux2":
            return unpack_flux2(latents, lh, lw)
        if fam.packing == "tokens" and latents.dim() == 3:  # Qwen-Image 2.1: one token per latent pixel
            side = math.isqrt(latents.shape[1])
            if (lh is None or lw is None) and side * side != latents.shape[1]:
                raise ValueError(f"{latents.shape[1]} Qwen-Image 2.1 tokens do not form a square grid: pass "
                                 "LivePreview(height=, width=)")
            return unpack_tokens(latents, lh or side, lw or side)
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, step: int = 0, timestep: Any = 0.0, kind: str = "xt") -> PreviewFrame:
        """Decode pipeline latents (or an x0 estimate) into a `PreviewFrame`."""
        z = self.to_tae_latents(latents)
        p = next(self.model.parameters())
        out = self.model.decode(z.to(p.device, p.dtype)).sample
        t = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        return PreviewFrame(step, t, kind, z, _to_pil(out))

    # ------------------------------------------------------------------ outputs
    @property
    def images(self) -> list[Image.Image]:
        """The first image of each kept frame."""
        return [f.image for f in self.frames]

    def finish(self) -> None:
        """Write the animation and the contact sheet of the kept frames (done after the last step)."""
        if not self.frames:
            return
        if self.animation is not None:
            save_animation(self.images, self.animation, self.frame_ms)
        if self.contact_sheet is not None:
            sheet = make_contact_sheet(self.images, [f"{f.step} {f.kind}" for f in self.frames], self.tile,
                                       self.columns)
            _save_image(sheet, self.contact_sheet, None)


def _save_image(im: Image.Image, path: Path, fmt: str | None) -> None:
    fmt = fmt or {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    atomic_write(path, lambda tmp: im.save(tmp, format=fmt))


def save_animation(images: list[Image.Image], path: str | os.PathLike, frame_ms: int = 100) -> None:
    """An animated GIF or WebP (by suffix) of `images`, `frame_ms` per frame, looping; written atomically."""
    path = Path(path)
    fmt = _ANIMATION_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"animation must end in .gif or .webp, got {str(path)!r}")
    if not images:
        raise ValueError("no frames to animate")
    atomic_write(path, lambda tmp: images[0].save(tmp, format=fmt, save_all=True, append_images=images[1:],
                                                  duration=frame_ms, loop=0))


def make_contact_sheet(images: list[Image.Image], labels: list[str] | None = None, tile: int = 256,
                       columns: int | None = None) -> Image.Image:
    """A grid of `images` scaled to at most `tile` pixels a side, `columns` per row (default: one row up to 8)."""
    if not images:
        raise ValueError("no images for a contact sheet")
    thumbs = []
    for im in images:
        im = im.copy()
        im.thumbnail((tile, tile))
        thumbs.append(im)
    cols = columns or min(len(thumbs), 8)
    rows = -(-len(thumbs) // cols)
    w, h = max(t.width for t in thumbs), max(t.height for t in thumbs)
    sheet = Image.new("RGB", (cols * w, rows * h), "black")
    draw = ImageDraw.Draw(sheet)
    for i, t in enumerate(thumbs):
        x, y = (i % cols) * w, (i // cols) * h
        sheet.paste(t, (x, y))
        if labels:
            draw.text((x + 3, y + 2), labels[i], fill="white", stroke_width=1, stroke_fill="black")
    return sheet
