"""Live previews of sampling in diffusers pipelines (`LivePreview`: each step's latents, or its x0 estimate, decoded by
a TAE, shown or saved as frames, an animation or a contact sheet)."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image, ImageDraw, features

from .. import autoencoder as _model
from ..data.latents import unpack_flux, unpack_flux2, unpack_tokens
from ..nets.variants import Family
from ..io.files import atomic_write
from .diffusers import check_vae

__all__ = ["LivePreview", "PreviewFrame", "make_contact_sheet", "noise_level", "save_animation", "x0_from_two"]


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
    from ..engine.precision import explain_precision

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

