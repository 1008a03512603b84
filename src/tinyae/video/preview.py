"""Live previews of video generation: `tinyae.diffusers.LivePreview(video_tae, pipe=...)` becomes this.

Each previewed step decodes the pipeline's latents (or their x0 estimate, where the scheduler makes it computable:
see `tinyae.diffusers.LivePreview`) with the video TAE and shows them as one image per video: `frames="strip"`
(default) `strip` frames evenly spaced through the clip side by side, or `frames="first"` the first frame only
(decodes only the first latent: the TAE is causal, so that frame is exactly the full decode's first frame).
`time=False` / `space=False` decode with the cheaper preview network (`AutoencoderTinyVideo.preview`).
Needs diffusers (`pip install tinyae[diffusers]`). HunyuanVideo15Pipeline takes no `callback_on_step_end`; call
`decode(latents)` yourself there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..diffusers import LivePreview, PreviewFrame, _to_pil
from .pipelines import check_video_vae

__all__ = ["VideoLivePreview", "VideoPreviewFrame"]


@dataclass
class VideoPreviewFrame(PreviewFrame):
    """A `PreviewFrame` whose `images` are one strip (or first frame) per video; `video` holds the decoded frames
    of the first video as PIL images; `latents` are the TAE latents decoded (B, C, T, h, w)."""

    video: list[Image.Image] = field(default_factory=list, repr=False)


def _strip(frames: list[Image.Image], n: int) -> Image.Image:
    """`n` frames evenly spaced through `frames` (first and last included), side by side."""
    n = min(n, len(frames))
    pick = [frames[round(i * (len(frames) - 1) / max(n - 1, 1))] for i in range(n)]
    out = Image.new("RGB", (sum(f.width for f in pick), pick[0].height))
    x = 0
    for f in pick:
        out.paste(f, (x, 0))
        x += f.width
    return out


class VideoLivePreview(LivePreview):
    """`LivePreview` for video pipelines (Wan, HunyuanVideo, CogVideoX, LTX-2); see the module docstring.

    Extra arguments: `frames` "strip" | "first", `strip` (frames per strip, default 4), `time` / `space` (False:
    cheaper preview network). `height` / `width` (pixels) are needed for LTX-2, whose packed tokens do not say
    the frame size. `family=` is not taken: the family comes from the pipeline. `optimize` is accepted and ignored
    (video models have no optimize() yet)."""

    def __init__(self, model: Any, every: int = 1, *, pipe: Any = None, family: Any = None, frames: str = "strip",
                 strip: int = 4, time: bool = True, space: bool = True, **kwargs: Any):
        if family is not None:
            raise ValueError("video previews take the family from the pipeline: pass pipe=, not family=")
        if frames not in ("strip", "first"):
            raise ValueError(f"frames must be 'strip' or 'first', got {frames!r}")
        if isinstance(strip, bool) or not isinstance(strip, int) or strip < 1:
            raise ValueError(f"strip must be a positive integer, got {strip!r}")
        kwargs.pop("optimize", None)
        super().__init__(model, every, optimize=False, **kwargs)
        self.frames_mode, self.strip = frames, strip
        self._patch = (1, 1)
        if pipe is not None:
            self.family = self._check_pipe(pipe)
        if not (time and space):
            self.model = model.preview(time=time, space=space)

    def _check_pipe(self, pipe: Any) -> Any:
        fam = check_video_vae(self.source_model, pipe)
        self._patch = (getattr(pipe, "transformer_spatial_patch_size", 1),
                       getattr(pipe, "transformer_temporal_patch_size", 1))
        return fam

    def to_tae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's latents -> the TAE's (B, C, T, h, w): CogVideoX's are (B, T, C, h, w), LTX-2's packed
        tokens (B, T*h*w, C*p*p*pt) (need height/width)."""
        name = self.family.name
        if name == "cogvideox":
            return latents.permute(0, 2, 1, 3, 4)
        if name == "ltx2" and latents.ndim == 3:
            if self.height is None:
                raise ValueError("LTX-2 latents are packed tokens: pass height= and width= (pixels) to LivePreview")
            p, pt = self._patch
            f = self.family.spatial_ratio
            h, w = self.height // f // p, self.width // f // p
            b, s, _ = latents.shape
            t = s // (h * w)
            x = latents.reshape(b, t, h, w, -1, pt, p, p)  # as LTX2Pipeline._unpack_latents
            return x.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, step: int = 0, timestep: Any = 0.0, kind: str = "xt"
               ) -> VideoPreviewFrame:
        """Decode pipeline latents (or an x0 estimate) into a `VideoPreviewFrame`."""
        z = self.to_tae_latents(latents)
        if self.frames_mode == "first":
            z = z[:, :, :1]
        p = next(self.model.parameters())
        video = self.model.decode(z.to(p.device, p.dtype)).sample  # (B, 3, T, H, W) in [-1, 1]
        per_video = [_to_pil(v.transpose(0, 1)) for v in video]
        images = [fr[0] if self.frames_mode == "first" else _strip(fr, self.strip) for fr in per_video]
        t = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        return VideoPreviewFrame(step, t, kind, z, images, video=per_video[0])
