"""Frame handling of the video TAEs, in the original convention (NTCHW, frames in [0, 1]), parallel or streamed.

Rules (the original project's): encode pads the end with copies of the last frame to a multiple of the encoder's
time factor t (4, or 8 for LTX-2), giving ceil(T/t) latents; decode gives t frames per latent and drops the first
t-1 (t*n - t + 1 frames: 4n+1 / 8n+1), except CogVideoX (taecvx), which keeps them all for an even latent count.
taeh3 follows MiniMax H3's grid: 17c - 12 frames <-> 5c - 3 latents (c chunks); encode reads the frames padded to
the grid in 17-frame chunks, each after 3 zero frames; decode drops the first 3 frames of each 5-latent chunk and
ends at the grid; both in one pass (memory carried across chunks). `EncodeStream` / `DecodeStream` give exactly
the parallel result. See docs/video.md for what was checked against the original.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VideoConfig
from .execute import FrameStream, run_parallel
from .tiling import BandedFrameStream, run_banded


def _check_frames(cfg: VideoConfig, x: torch.Tensor) -> None:
    f = cfg.encoder_space_factor
    if x.shape[-3] != 3:
        raise ValueError(f"frames must have 3 channels (RGB), got {x.shape[-3]}")
    if x.shape[-2] % f or x.shape[-1] % f:
        raise ValueError(f"frame height and width must be multiples of {f} (pixels per latent pixel), "
                         f"got {x.shape[-2]}x{x.shape[-1]}; pad or crop the frames")


def _run(layers: nn.Sequential, x: torch.Tensor, band: int | None) -> torch.Tensor:
    return run_parallel(layers, x) if band is None else run_banded(layers, x, band)


def _stream(layers: nn.Sequential, band: int | None) -> FrameStream | BandedFrameStream:
    return FrameStream(layers) if band is None else BandedFrameStream(layers, band)


def _decoder_band(cfg: VideoConfig, tile_rows: int | None) -> int | None:
    """Decoder output rows (before the pixel shuffle) of a band of `tile_rows` latent rows."""
    return None if tile_rows is None else tile_rows * (cfg.space_factor // cfg.patch_size)


def grid_frames(cfg: VideoConfig, num_frames: int) -> int:
    """Frames the encoder reads for `num_frames` input frames (the end padded with copies of the last frame).

    Multiples of the time factor; taeh3: H3's grid, chunk*c - short*t frames (17c - 12: 5, 22, 39, ... 124)."""
    rule, t = cfg.frames, cfg.encoder_time_factor
    if not rule.encode_chunk:
        return -(-num_frames // t) * t
    short = rule.encode_drop_last * t
    return max(1, -(-(num_frames + short) // rule.encode_chunk)) * rule.encode_chunk - short


def encode_frames(cfg: VideoConfig, encoder: nn.Sequential, x: torch.Tensor, parallel: bool = True,
                  tile_rows: int | None = None) -> torch.Tensor:
    """Frames (N, T, 3, H, W) in [0, 1] -> latents (N, T', C, H/f, W/f); T' = ceil(T/t) (taeh3: 5c - 3).

    taeh3: the padded frames are read in 17-frame chunks, each after 3 zero frames, in one pass (memory carried
    across chunks). `tile_rows`: compute in row bands of that many latent rows (exact; tinyae.video.tiling)."""
    _check_frames(cfg, x)
    if x.shape[1] < 1:
        raise ValueError("no frames to encode")
    if not parallel:
        s = EncodeStream(cfg, encoder, tile_rows)
        out = [z for frame in x.unbind(1) for z in s.push(frame)] + s.flush()
        return torch.stack(out, 1)
    x = F.pixel_unshuffle(x, cfg.patch_size) if cfg.patch_size > 1 else x
    rule, t = cfg.frames, cfg.encoder_time_factor
    n = grid_frames(cfg, x.shape[1])
    x = torch.cat([x, x[:, -1:].expand(-1, n - x.shape[1], -1, -1, -1)], 1)
    if rule.encode_chunk:
        zeros = x.new_zeros(x.shape[0], rule.encode_front_zeros, *x.shape[2:])
        x = torch.cat([y for c in x.split(rule.encode_chunk, 1) for y in (zeros, c)], 1)
        x = torch.cat([x, x[:, -1:].expand(-1, -x.shape[1] % t, -1, -1, -1)], 1)
    return _run(encoder, x, tile_rows)


def needs_latent_count(cfg: VideoConfig) -> bool:
    """Whether the frames decode keeps depend on the latent count (taecvx, taeh3): streaming needs it up front."""
    return cfg.frames.keep_all_for_even_latents or bool(cfg.frames.decode_chunk)


def _trim(cfg: VideoConfig, num_latents: int) -> int:
    if cfg.frames.keep_all_for_even_latents and num_latents % 2 == 0:
        return 0
    return cfg.time_factor - 1


def _kept(cfg: VideoConfig, raw: int, num_latents: int) -> bool:
    """Whether the decoder's raw output frame `raw` is kept: the first t-1 frames are dropped (taeh3: of each
    5-latent chunk)."""
    chunk = cfg.frames.decode_chunk
    return (raw % (chunk * cfg.time_factor) if chunk else raw) >= _trim(cfg, num_latents)


def decoded_frame_count(cfg: VideoConfig, num_latents: int) -> int:
    """Frames decode gives for `num_latents` latents: t*n - t + 1 (taecvx: 4n for even n; taeh3: at most
    17c - 12 for c = ceil(n/5) chunks, H3's grid, which 5c - 3 latents fill exactly)."""
    t, chunk, trim = cfg.time_factor, cfg.frames.decode_chunk, _trim(cfg, num_latents)
    if not chunk:
        return num_latents * t - trim
    full, rest = divmod(num_latents, chunk)
    kept = full * (chunk * t - trim) + (rest * t - trim if rest else 0)
    return min(kept, -(-num_latents // chunk) * (chunk * t - trim) - cfg.frames.encode_drop_last * t)


def finish_frames(cfg: VideoConfig, y: torch.Tensor) -> torch.Tensor:
    """Decoder output (..., 3*p*p, h, w) -> frames (..., 3, h*p, w*p) clamped to [0, 1]."""
    y = y.clamp(0, 1)
    return F.pixel_shuffle(y, cfg.patch_size) if cfg.patch_size > 1 else y


def decode_latents(cfg: VideoConfig, decoder: nn.Sequential, z: torch.Tensor, parallel: bool = True,
                   tile_rows: int | None = None) -> torch.Tensor:
    """Latents (N, T, C, h, w) -> frames (N, T', 3, H, W) in [0, 1]; T' = decoded_frame_count(cfg, T).

    One pass over all latents (taeh3 too: memory is carried across its chunks). `tile_rows`: compute in row
    bands of that many latent rows (exact; tinyae.video.tiling)."""
    if z.ndim != 5 or z.shape[2] != cfg.latent_channels:
        raise ValueError(f"latents must be (N, T, {cfg.latent_channels}, h, w), got {tuple(z.shape)}")
    if z.shape[1] < 1:
        raise ValueError("no latents to decode")
    if not parallel:
        s = DecodeStream(cfg, decoder, num_latents=z.shape[1], tile_rows=tile_rows)
        return torch.stack([f for lat in z.unbind(1) for f in s.push(lat)], 1)
    n = z.shape[1]
    y = finish_frames(cfg, _run(decoder, z, _decoder_band(cfg, tile_rows)))
    keep = [f for f in range(y.shape[1]) if _kept(cfg, f, n)][:decoded_frame_count(cfg, n)]
    return y[:, keep] if len(keep) < y.shape[1] else y


class EncodeStream:
    """Push frames (N, 3, H, W) in [0, 1] one at a time, get latents (N, C, h, w) as they complete; then `flush()`.

    Holds O(1) frames whatever the video's length; the latents equal `encode_frames(..., parallel=True)`.
    """

    def __init__(self, cfg: VideoConfig, encoder: nn.Sequential | None, tile_rows: int | None = None,
                 stream: Any = None):
        self.cfg, self.rule = cfg, cfg.frames
        self.stream = stream if stream is not None else _stream(encoder, tile_rows)  # or an ONNX one (video.onnx)
        self._last: torch.Tensor | None = None
        self._count = 0  # frames pushed, padding included

    def _step(self, frame: torch.Tensor) -> list[torch.Tensor]:
        x = F.pixel_unshuffle(frame, self.cfg.patch_size) if self.cfg.patch_size > 1 else frame
        return list(self.stream.push(x))

    def _frame(self, frame: torch.Tensor) -> list[torch.Tensor]:
        out = []
        if self.rule.encode_chunk and self._count % self.rule.encode_chunk == 0:  # taeh3: zeros before each chunk
            for _ in range(self.rule.encode_front_zeros):
                out += self._step(torch.zeros_like(frame))
        self._count += 1
        return out + self._step(frame)

    def push(self, frame: torch.Tensor) -> list[torch.Tensor]:
        _check_frames(self.cfg, frame)
        self._last = frame
        return self._frame(frame)

    def flush(self) -> list[torch.Tensor]:
        """End of the video: the remaining latents (the end padded with copies of the last frame). The stream is
        then ready for a new video."""
        if self._last is None:
            raise ValueError("no frames were pushed")
        out = []
        for _ in range(grid_frames(self.cfg, self._count) - self._count):
            out += self._frame(self._last)
        while self.stream.pending:  # taeh3: its chunks of 3 + 17 frames already fill whole latents
            out += self._step(self._last)
        self.stream.reset()
        self._last, self._count = None, 0
        return out


class DecodeStream:
    """Push latents (N, C, h, w) one at a time, get frames (N, 3, H, W) in [0, 1] as they are decoded.

    Holds O(1) state whatever the number of latents; the frames equal `decode_latents(..., parallel=True)`.
    `num_latents` is needed only where the frame rule depends on the count (taecvx, taeh3: `needs_latent_count`).
    """

    def __init__(self, cfg: VideoConfig, decoder: nn.Sequential | None, num_latents: int | None = None,
                 tile_rows: int | None = None, stream: Any = None):
        if needs_latent_count(cfg) and num_latents is None:
            raise ValueError(f"{cfg.variant or 'this model'}: which frames are kept depends on the number of "
                             "latents; pass num_latents to stream it")
        self.cfg, self.num_latents = cfg, num_latents or 1
        self.stream = stream if stream is not None else _stream(decoder, _decoder_band(cfg, tile_rows))
        self._raw = self._emitted = 0
        self._limit = decoded_frame_count(cfg, num_latents) if num_latents else None

    def push(self, latent: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for y in self.stream.push(latent):
            raw, self._raw = self._raw, self._raw + 1
            if _kept(self.cfg, raw, self.num_latents) and (self._limit is None or self._emitted < self._limit):
                self._emitted += 1
                out.append(finish_frames(self.cfg, y))
        return out
