"""Frame handling of the video TAEs, in the original convention (NTCHW, frames in [0, 1]), parallel or streamed.

Rules (the original project's): encode pads the end with copies of the last frame to a multiple of the encoder's
time factor t (4, or 8 for LTX-2), giving ceil(T/t) latents; decode gives t frames per latent and drops the first
t-1 (t*n - t + 1 frames: 4n+1 / 8n+1), except CogVideoX (taecvx), which keeps them all for an even latent count.
taeh3 encodes 17-frame chunks independently (3 zero frames before each, its last 3 latents dropped) and decodes
5-latent chunks independently, each trimmed. `EncodeStream` / `DecodeStream` give exactly the parallel result.
"""

from __future__ import annotations

from collections import deque
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


def _encode_chunk(cfg: VideoConfig, encoder: nn.Sequential, x: torch.Tensor, tile_rows: int | None = None
                  ) -> torch.Tensor:
    rule, t = cfg.frames, cfg.encoder_time_factor
    if rule.encode_front_zeros:
        x = torch.cat([x.new_zeros(x.shape[0], rule.encode_front_zeros, *x.shape[2:]), x], 1)
    if x.shape[1] % t:
        x = torch.cat([x, x[:, -1:].expand(-1, t - x.shape[1] % t, -1, -1, -1)], 1)
    z = _run(encoder, x, tile_rows)
    drop = min(rule.encode_drop_last, z.shape[1] - 1)
    return z[:, :z.shape[1] - drop]


def encode_frames(cfg: VideoConfig, encoder: nn.Sequential, x: torch.Tensor, parallel: bool = True,
                  tile_rows: int | None = None) -> torch.Tensor:
    """Frames (N, T, 3, H, W) in [0, 1] -> latents (N, T', C, H/f, W/f); T' = ceil(T/t) (taeh3: per chunk).

    `tile_rows`: compute in row bands of that many latent rows (exact; tinyae.video.tiling)."""
    _check_frames(cfg, x)
    if x.shape[1] < 1:
        raise ValueError("no frames to encode")
    if not parallel:
        s = EncodeStream(cfg, encoder, tile_rows)
        out = [z for frame in x.unbind(1) for z in s.push(frame)] + s.flush()
        return torch.stack(out, 1)
    x = F.pixel_unshuffle(x, cfg.patch_size) if cfg.patch_size > 1 else x
    size = cfg.frames.encode_chunk or x.shape[1]
    return torch.cat([_encode_chunk(cfg, encoder, c, tile_rows) for c in x.split(size, 1)], 1)


def decoded_frame_count(cfg: VideoConfig, num_latents: int) -> int:
    """Frames decode gives for `num_latents` latents."""
    size = cfg.frames.decode_chunk or num_latents
    full, rest = divmod(num_latents, size)
    return full * _chunk_frames(cfg, size, num_latents) + (_chunk_frames(cfg, rest, num_latents) if rest else 0)


def _trim(cfg: VideoConfig, num_latents: int) -> int:
    if cfg.frames.keep_all_for_even_latents and num_latents % 2 == 0:
        return 0
    return cfg.time_factor - 1


def _chunk_frames(cfg: VideoConfig, n: int, total: int) -> int:
    return n * cfg.time_factor - _trim(cfg, total)


def finish_frames(cfg: VideoConfig, y: torch.Tensor) -> torch.Tensor:
    """Decoder output (..., 3*p*p, h, w) -> frames (..., 3, h*p, w*p) clamped to [0, 1]."""
    y = y.clamp(0, 1)
    return F.pixel_shuffle(y, cfg.patch_size) if cfg.patch_size > 1 else y


def decode_latents(cfg: VideoConfig, decoder: nn.Sequential, z: torch.Tensor, parallel: bool = True,
                   tile_rows: int | None = None) -> torch.Tensor:
    """Latents (N, T, C, h, w) -> frames (N, T', 3, H, W) in [0, 1]; T' = decoded_frame_count(cfg, T).

    `tile_rows`: compute in row bands of that many latent rows (exact; tinyae.video.tiling)."""
    if z.ndim != 5 or z.shape[2] != cfg.latent_channels:
        raise ValueError(f"latents must be (N, T, {cfg.latent_channels}, h, w), got {tuple(z.shape)}")
    if z.shape[1] < 1:
        raise ValueError("no latents to decode")
    if not parallel:
        s = DecodeStream(cfg, decoder, num_latents=z.shape[1], tile_rows=tile_rows)
        return torch.stack([f for lat in z.unbind(1) for f in s.push(lat)], 1)
    trim = _trim(cfg, z.shape[1])
    size = cfg.frames.decode_chunk or z.shape[1]
    band = _decoder_band(cfg, tile_rows)
    return torch.cat([finish_frames(cfg, _run(decoder, c, band))[:, trim:] for c in z.split(size, 1)], 1)


class EncodeStream:
    """Push frames (N, 3, H, W) in [0, 1] one at a time, get latents (N, C, h, w) as they complete; then `flush()`.

    Holds O(1) frames whatever the video's length; the latents equal `encode_frames(..., parallel=True)`.
    """

    def __init__(self, cfg: VideoConfig, encoder: nn.Sequential | None, tile_rows: int | None = None,
                 stream: Any = None):
        self.cfg, self.rule = cfg, cfg.frames
        self.stream = stream if stream is not None else _stream(encoder, tile_rows)  # or an ONNX one (video.onnx)
        self._held: deque[torch.Tensor] = deque()  # latents that may still be dropped (taeh3)
        self._last: torch.Tensor | None = None
        self._in_chunk = self._emitted = 0

    def _step(self, frame: torch.Tensor) -> list[torch.Tensor]:
        x = F.pixel_unshuffle(frame, self.cfg.patch_size) if self.cfg.patch_size > 1 else frame
        out = []
        for z in self.stream.push(x):
            self._held.append(z)
            while len(self._held) > self.rule.encode_drop_last:
                out.append(self._held.popleft())
        self._emitted += len(out)
        return out

    def push(self, frame: torch.Tensor) -> list[torch.Tensor]:
        _check_frames(self.cfg, frame)
        out = []
        if self.rule.encode_chunk and self._in_chunk == self.rule.encode_chunk:
            out += self._end_chunk()
        if self._in_chunk == 0:
            for _ in range(self.rule.encode_front_zeros):
                out += self._step(torch.zeros_like(frame))
        self._last, self._in_chunk = frame, self._in_chunk + 1
        return out + self._step(frame)

    def _end_chunk(self) -> list[torch.Tensor]:
        out = []
        while self.stream.pending:  # pad the end with copies of the last frame
            out += self._step(self._last)
        if not self._emitted and self._held:  # a chunk keeps at least one latent, as the parallel path does
            out.append(self._held[0])
        self._held.clear()
        self.stream.reset()
        self._in_chunk = self._emitted = 0
        return out

    def flush(self) -> list[torch.Tensor]:
        """End of the video: the remaining latents. The stream is then ready for a new video."""
        if self._last is None:
            raise ValueError("no frames were pushed")
        out = self._end_chunk()
        self._last = None
        return out


class DecodeStream:
    """Push latents (N, C, h, w) one at a time, get frames (N, 3, H, W) in [0, 1] as they are decoded.

    Holds O(1) state whatever the number of latents; the frames equal `decode_latents(..., parallel=True)`.
    `num_latents` is needed only where the frame rule depends on the count (taecvx).
    """

    def __init__(self, cfg: VideoConfig, decoder: nn.Sequential | None, num_latents: int | None = None,
                 tile_rows: int | None = None, stream: Any = None):
        if cfg.frames.keep_all_for_even_latents and num_latents is None:
            raise ValueError(f"{cfg.variant or 'this model'}: the first frames are kept or dropped depending on "
                             "whether the latent count is even; pass num_latents to stream it")
        self.cfg = cfg
        self.stream = stream if stream is not None else _stream(decoder, _decoder_band(cfg, tile_rows))
        self.trim = _trim(cfg, num_latents or 1)
        self._count, self._skip = 0, self.trim

    def push(self, latent: torch.Tensor) -> list[torch.Tensor]:
        size = self.cfg.frames.decode_chunk
        if size and self._count and self._count % size == 0:
            self.stream.reset()
            self._skip = self.trim
        self._count += 1
        out = []
        for y in self.stream.push(latent):
            if self._skip:
                self._skip -= 1
                continue
            out.append(finish_frames(self.cfg, y))
        return out
