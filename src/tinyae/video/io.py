"""Video files in and out, frame by frame, through PyAV (`pip install 'tinyae[video]'`): mp4, webm, gif, mkv, mov,
or a folder of frame images. A long video never sits in memory: readers yield frames, writers take an iterator.

Frames are uint8 arrays (H, W, 3), RGB. Writes are atomic (tinyae.weights.atomic_write): a video file appears only
complete; a frame folder gets one PNG per frame, each written atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..weights import atomic_write

VIDEO_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".gif": "gif"}
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DEFAULT_FPS = 16.0


class VideoError(ValueError):
    """A video that cannot be read or written: names the file and the problem."""


def _av():
    try:
        import av
    except ModuleNotFoundError:
        raise VideoError("video files need PyAV: pip install 'tinyae[video]'") from None
    return av


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def frame_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in FRAME_SUFFIXES
                  and not f.name.startswith("."))


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int | None  # as the container says (may be None or approximate)


def probe(path: str | os.PathLike) -> VideoInfo:
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise VideoError(f"{path}: no frame images in this folder")
        from PIL import Image

        with Image.open(files[0]) as im:
            return VideoInfo(im.width, im.height, DEFAULT_FPS, len(files))
    av = _av()
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate
            return VideoInfo(s.codec_context.width, s.codec_context.height, float(rate) if rate else DEFAULT_FPS,
                             s.frames or None)
    except (av.error.FFmpegError, IndexError) as e:
        raise VideoError(f"{path}: cannot read as a video ({e})") from None


def read_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yield the frames of a video file or a folder of frame images (sorted by name), as uint8 (H, W, 3)."""
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        files = frame_files(path)
        if not files:
            raise VideoError(f"{path}: no frame images in this folder")
        size = None
        for f in files:
            with Image.open(f) as im:
                a = np.asarray(im.convert("RGB"))
            if size is not None and a.shape != size:
                raise VideoError(f"{f}: frame size {a.shape[1]}x{a.shape[0]} differs from the first frame's")
            size = a.shape
            yield a
        return
    if not path.exists():
        raise VideoError(f"{path}: no such file")
    av = _av()
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoError(f"{path}: has no video stream")
            for frame in c.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot read as a video ({e})") from None


def _encode_to(path: str, fmt: str, frames: Iterable[np.ndarray], fps: float, crf: int) -> int:
    av = _av()
    n = 0
    with av.open(path, "w", format=fmt) as c:
        stream = None
        for a in frames:
            if stream is None:
                h, w = a.shape[:2]
                rate = Fraction(fps).limit_denominator(1001)
                if fmt == "gif":
                    stream = c.add_stream("gif", rate=rate)
                    stream.pix_fmt = "rgb8"
                elif fmt == "webm":
                    stream = c.add_stream("libvpx-vp9", rate=rate)
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "b": "0"}
                else:
                    stream = c.add_stream("libx264", rate=rate)
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf)}
                if stream.pix_fmt == "yuv420p" and (w % 2 or h % 2):
                    raise VideoError(f"{fmt} (yuv420p) needs an even width and height, got {w}x{h}")
                stream.width, stream.height = w, h
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")
            for packet in stream.encode(frame):
                c.mux(packet)
            n += 1
        if stream is None:
            raise VideoError("no frames to write")
        for packet in stream.encode():
            c.mux(packet)
    return n


def write_frames(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = DEFAULT_FPS, crf: int = 18
                 ) -> int:
    """Write frames (uint8 (H, W, 3)) to a video file (by suffix) or, for a path without one, a folder of PNGs.

    Returns the number of frames written. crf: quality of mp4/webm (lower is better; 18 is visually lossless)."""
    path = Path(path)
    fmt = VIDEO_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        if path.suffix:
            raise VideoError(f"{path}: unknown video suffix; use one of {', '.join(VIDEO_SUFFIXES)} or a folder")
        from PIL import Image

        path.mkdir(parents=True, exist_ok=True)
        n = 0
        for n, a in enumerate(frames, 1):
            atomic_write(path / f"{n - 1:06d}.png", lambda tmp, a=a: Image.fromarray(a).save(tmp, format="PNG"))
        return n
    count = [0]

    def write(tmp: str) -> None:
        count[0] = _encode_to(tmp, fmt, frames, fps, crf)

    atomic_write(path, write)
    return count[0]
