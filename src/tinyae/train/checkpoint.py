"""Checkpoints: one file, RUN_DIR/checkpoint.pt, written atomically, read with `weights_only=True`.

It holds everything a resume needs to continue the same trajectory: config, step, data position (samples_seen),
training seconds, student, EMA, optimiser, grad scaler, the adversarial part (discriminator, its optimiser, replay
buffer, generators) and the RNG states (torch, CUDA, Python, NumPy).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..weights import atomic_write

FORMAT = "tinyae.train"
VERSION = 1
NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this run."""


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, state: dict[str, Any]) -> Path:
    path = run_dir / NAME
    doc = {"format": FORMAT, "version": VERSION, **state, "rng": rng_state()}
    atomic_write(path, lambda p: torch.save(doc, p))
    return path


def load(run_dir: Path) -> dict[str, Any] | None:
    """The run's checkpoint, or None when RUN_DIR has none."""
    path = run_dir / NAME
    if not path.exists():
        return None
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a tinyae training checkpoint")
    if doc.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {doc.get('version')}, this tinyae reads {VERSION}")
    return doc


def rank_path(run_dir: Path, rank: int) -> Path:
    return run_dir / f"checkpoint.rank{rank}.pt"


def save_rank(run_dir: Path, rank: int, state: dict[str, Any]) -> None:
    """What differs between DDP ranks (replay buffer, its generators, RNG states), for rank > 0; written before
    rank 0's checkpoint, and used on resume only when its step and world size match that checkpoint's."""
    doc = {"format": FORMAT + ".rank", "version": VERSION, **state, "rng": rng_state()}
    atomic_write(rank_path(run_dir, rank), lambda p: torch.save(doc, p))


def load_rank(run_dir: Path, rank: int, step: int, world: int) -> dict[str, Any] | None:
    path = rank_path(run_dir, rank)
    if not path.exists():
        return None
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None  # cut short by a kill before rank 0's checkpoint: not used
    ok = isinstance(doc, dict) and doc.get("format") == FORMAT + ".rank" and doc.get("step") == step
    return doc if ok and doc.get("world_size") == world else None
