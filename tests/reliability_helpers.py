"""Small fixtures for the reliability tests: a tiny random model saved to a folder, tiny images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from test_hub import tiny_model  # the 8-channel random model, shared with the hub tests


def saved_model(folder: Path, seed: int = 0) -> Path:
    """A tiny model in diffusers layout (config.json + safetensors): a `--model FOLDER` for the CLI."""
    tiny_model(seed).save_pretrained(folder)
    return folder


def tiny_images(folder: Path, n: int, size: int = 24, seed: int = 0) -> list[Path]:
    """`n` random RGB PNGs of size x size (size need not be a multiple of 8)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"im{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def hidden(folder: Path) -> list[str]:
    """Temporary or hidden files left in a folder tree (there must be none)."""
    return sorted(p.name for p in folder.rglob(".*")) if folder.exists() else []


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
