"""`AutoencoderTinyVideo`: the TAEHV family with diffusers' conventions.

Public API as diffusers' video VAEs: video NCTHW in [-1, 1], `encode(x).latents` (N, C, T', h, w),
`decode(z).sample` (N, 3, T'', H, W), `config`, `from_pretrained` / `save_pretrained`. The original networks stay
reachable: `model.encoder` / `model.decoder` are the original nn.Sequential layer lists (frames folded into the
batch, images in [0, 1]) and `encode_video` / `decode_video` are the original NTCHW [0, 1] functions.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from ..model import AutoencoderTinyOutput, DecoderOutput, MissingPartError
from ..nets.model import ParameterFacts
from . import weights as W
from .config import VideoConfig
from .frames import DecodeStream, EncodeStream, decode_latents, decoded_frame_count, encode_frames
from .variants import VideoVariant, get_video_variant


class AutoencoderTinyVideo(ParameterFacts, nn.Module):
    """A video Tiny AutoEncoder. Build from a `VideoConfig`, a variant name, or load with `from_pretrained`."""

    def __init__(self, config: VideoConfig | str | None = None, *, encoder: bool = True, decoder: bool = True,
                 **changes: Any):
        super().__init__()
        if config is None or isinstance(config, str):
            config = VideoConfig.of_variant(get_video_variant(config or "taew2_1"))
        self._config = config.replace(**changes)
        self.encoder, self.decoder = W.build_parts(self._config, encoder, decoder)
        self.tile_rows: int | None = None  # latent rows per spatial band; None: untiled (enable_tiling)

    # -- metadata
    @property
    def config(self) -> VideoConfig:
        return self._config

    @property
    def temporal_compression_ratio(self) -> int:
        return self._config.time_factor

    @property
    def spatial_compression_ratio(self) -> int:
        return self._config.encoder_space_factor

    def decoded_frames(self, num_latents: int) -> int:
        """Frames `decode` gives for `num_latents` latents (4n+1, 8n+1; see docs/video.md for the exceptions)."""
        return decoded_frame_count(self._config, num_latents)

    # -- spatial tiling (exact)
    def enable_tiling(self, latent_rows: int = 16) -> None:
        """Compute encode/decode (parallel and streamed) in row bands of `latent_rows` latent rows: the same values
        (within float rounding), peak activation memory proportional to the band instead of the frame height."""
        if isinstance(latent_rows, bool) or not isinstance(latent_rows, int) or latent_rows < 1:
            raise ValueError(f"latent_rows must be a positive integer, got {latent_rows!r}")
        self.tile_rows = latent_rows

    def disable_tiling(self) -> None:
        self.tile_rows = None

    @property
    def use_tiling(self) -> bool:
        return self.tile_rows is not None

    def _part(self, name: str) -> nn.Sequential:
        part = getattr(self, name)
        if part is None:
            raise MissingPartError(f"this model has no {name} (its weights hold only the "
                                   f"{'decoder' if name == 'encoder' else 'encoder'})")
        return part

    # -- original convention: NTCHW, frames in [0, 1]
    def encode_video(self, x: torch.Tensor, parallel: bool = True) -> torch.Tensor:
        """Frames (N, T, 3, H, W) in [0, 1] -> latents (N, T', C, H/f, W/f). parallel=False streams (O(1) in T)."""
        return encode_frames(self._config, self._part("encoder"), x.to(self.dtype), parallel, self.tile_rows)

    def decode_video(self, z: torch.Tensor, parallel: bool = True) -> torch.Tensor:
        """Latents (N, T, C, h, w) -> frames (N, T', 3, H, W) in [0, 1]. parallel=False streams (O(1) in T)."""
        return decode_latents(self._config, self._part("decoder"), z.to(self.dtype), parallel, self.tile_rows)

    # -- diffusers convention: NCTHW, video in [-1, 1]
    def encode(self, x: torch.Tensor, return_dict: bool = True, parallel: bool = True
               ) -> AutoencoderTinyOutput | tuple[torch.Tensor]:
        """Video (N, 3, T, H, W) in [-1, 1] -> `.latents` (N, C, T', H/f, W/f)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 5:
            raise ValueError(f"encode expects a video tensor (N, 3, T, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        z = self.encode_video(((x.transpose(1, 2) + 1) / 2).clamp(0, 1), parallel).transpose(1, 2)
        return AutoencoderTinyOutput(latents=z) if return_dict else (z,)

    def decode(self, z: torch.Tensor, generator: torch.Generator | None = None, return_dict: bool = True,
               parallel: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Latents (N, C, T, h, w) -> `.sample` (N, 3, T', H, W) in [-1, 1]."""
        if not isinstance(z, torch.Tensor) or z.ndim != 5:
            raise ValueError(f"decode expects latents (N, C, T, h, w), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        y = self.decode_video(z.transpose(1, 2), parallel).transpose(1, 2) * 2 - 1
        return DecoderOutput(sample=y) if return_dict else (y,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        return self.decode(self.encode(sample).latents, return_dict=return_dict)

    # -- previews
    def preview(self, time: bool = True, space: bool = True) -> "AutoencoderTinyVideo":
        """A decoder-only copy (weights shared in value) that skips temporal and/or spatial upscaling.

        time=False: one frame per latent (no temporal upscale, nothing trimmed); space=False: frames at 1/8 size
        (times the patch size). Cheaper previews, as the original offers."""
        cfg = self._config.replace(
            decoder_time_upscale=tuple(t and time for t in self._config.decoder_time_upscale),
            decoder_space_upscale=tuple(s and space for s in self._config.decoder_space_upscale))
        out = AutoencoderTinyVideo(cfg, encoder=False, decoder=True).to(self.device, self.dtype)
        sd = W.fit_tgrow({f"decoder.{k}": v for k, v in self._part("decoder").state_dict().items()}, out.decoder)
        W.load_into({"decoder": out.decoder}, sd, "preview")
        out.tile_rows = self.tile_rows
        return out.eval()

    def optimize(self, precision: str = "auto") -> "AutoencoderTinyVideo":
        """A fast inference copy (fused CPU convolutions, channels-last; tinyae.video.fast.optimize_video)."""
        from .fast import optimize_video

        return optimize_video(self, precision)

    # -- loading and saving
    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, variant: str | VideoVariant | None = None,
                        torch_dtype: torch.dtype | None = None, **overrides: Any) -> "AutoencoderTinyVideo":
        """Load a single file (.pth/.safetensors) or a diffusers-style folder. Strict; raises WeightsError.

        `variant` names the frame handling where the architecture does not tell (taehv / taew2_1 / taecvx /
        taeos1_3 share one); else a folder's config.json, else the file name, else the generic 4n+1 rule.
        `overrides`: e.g. decoder_time_upscale=(False, False, False) for a cheaper preview."""
        sd, stored, where = W.read_source(source)
        cfg, has_enc, has_dec = W.resolve_config(sd, where, variant, stored, **overrides)
        model = cls(cfg, encoder=has_enc, decoder=has_dec)
        if has_dec:
            sd = W.fit_tgrow(sd, model.decoder)
        W.load_into({"encoder": model.encoder, "decoder": model.decoder}, sd, where)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        return model.eval()

    def _parts(self) -> dict[str, nn.Module | None]:
        return {"encoder": self.encoder, "decoder": self.decoder}

    def save_pretrained(self, save_directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Diffusers-style folder: config.json + diffusion_pytorch_model.safetensors (original tensor names)."""
        W.save_folder(self._parts(), self._config, save_directory, dtype)

    def save_original(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """The original single file (.safetensors or .pth), as madebyollin/taehv ships it."""
        W.save_file(self._parts(), path, dtype)

    # -- streaming
    def stream_encoder(self) -> "StreamingEncoder":
        return StreamingEncoder(self)

    def stream_decoder(self, num_latents: int | None = None) -> "StreamingDecoder":
        return StreamingDecoder(self, num_latents)

    def extra_repr(self) -> str:
        c = self._config
        return (f"variant={c.variant}, latent_channels={c.latent_channels}, patch_size={c.patch_size}, "
                f"time={c.time_factor}x, decoder={c.decoder}")


class StreamingEncoder:
    """Encode a video frame by frame: `push(frames)` as they come, `flush()` at the end; memory O(1) in T.

    frames: (N, 3, H, W) one frame or (N, 3, T, H, W) several, in [-1, 1] (`original=True`: [0, 1]). Returns the
    latents completed so far, (N, C, T', h, w) (T' may be 0); their concatenation equals `model.encode(video)`.
    """

    def __init__(self, model: AutoencoderTinyVideo, original: bool = False):
        self.model, self.original = model, original
        self._s = EncodeStream(model.config, model._part("encoder"), model.tile_rows)

    def _out(self, zs: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        if not zs:
            c, f = self.model.config.latent_channels, self.model.config.encoder_space_factor
            return like.new_zeros(like.shape[0], c, 0, like.shape[-2] // f, like.shape[-1] // f)
        return torch.stack(zs, 2)

    @torch.no_grad()
    def push(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(self.model.dtype)
        x = x.unsqueeze(2) if x.ndim == 4 else x
        if x.ndim != 5:
            raise ValueError(f"push expects (N, 3, H, W) or (N, 3, T, H, W) frames, got {tuple(frames.shape)}")
        x = x if self.original else ((x + 1) / 2).clamp(0, 1)
        self._like = x[:, :, 0]
        return self._out([z for f in x.unbind(2) for z in self._s.push(f)], self._like)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """The last latents (the end padded with copies of the last frame). Ready for a new video after."""
        return self._out(self._s.flush(), self._like)


class StreamingDecoder:
    """Decode latents as they come: `push(latents)` returns the frames they complete; memory O(1) in T.

    latents: (N, C, h, w) one or (N, C, T, h, w) several. Frames (N, 3, T', H, W) in [-1, 1] (`original=True`:
    [0, 1]); their concatenation equals `model.decode(all latents)`. `num_latents` is needed for taecvx only.
    `frames(latents)` yields single frames (N, 3, H, W) from an iterable of latents.
    """

    def __init__(self, model: AutoencoderTinyVideo, num_latents: int | None = None, original: bool = False):
        self.model, self.original = model, original
        self._s = DecodeStream(model.config, model._part("decoder"), num_latents, model.tile_rows)

    def _frames(self, latents: torch.Tensor):
        z = latents.to(self.model.dtype)
        z = z.unsqueeze(2) if z.ndim == 4 else z
        if z.ndim != 5 or z.shape[1] != self.model.config.latent_channels:
            raise ValueError(f"push expects ({self.model.config.latent_channels} channels) (N, C, h, w) or "
                             f"(N, C, T, h, w) latents, got {tuple(latents.shape)}")
        for lat in z.unbind(2):
            for f in self._s.push(lat):
                yield f if self.original else f * 2 - 1

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        out = list(self._frames(latents))
        if out:
            return torch.stack(out, 2)
        c, f = self.model.config, self.model.config.space_factor
        return latents.new_zeros(latents.shape[0], 3, 0, latents.shape[-2] * f, latents.shape[-1] * f)

    def frames(self, latents: Any):
        """Yield decoded frames (N, 3, H, W) one at a time from an iterable of latents (N, C, h, w)."""
        with torch.no_grad():
            for z in latents:
                yield from self._frames(z)
