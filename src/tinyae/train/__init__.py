"""tinyae.train: distil a Tiny AutoEncoder from any VAE (the optional `train` extra: tensorboard, matplotlib).

    from tinyae.train import TrainConfig, train
    summary = train(TrainConfig(teacher="vae/", student="taef2", data=["photos/"], val="held_out/",
                                max_steps=20000), "runs/my-tae")

See docs/training.md for the recipe, every setting and a worked example; `tinyae train` is the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TrainConfig, resume_differences
from .evaluate import evaluate
from .teacher import Teacher, TeacherError, load_teacher

__all__ = ["TrainConfig", "Teacher", "TeacherError", "evaluate", "load_teacher", "resume_differences", "train"]


def train(config: TrainConfig, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Train (or resume) the run in `run_dir`; returns a summary (step, minutes, last metrics, exported files)."""
    from .trainer import Trainer

    return Trainer(config, run_dir, **kwargs).run()
