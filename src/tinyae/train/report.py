"""What a run tells: metrics.jsonl (one JSON object per logged step or eval), TensorBoard events when tensorboard
is installed, a PNG of the curves (matplotlib), and a rich progress bar (loss, images/s, ETA) or plain lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..weights import atomic_write


class Metrics:
    """RUN_DIR/metrics.jsonl. `truncate(step)` drops lines after a resumed checkpoint's step (they are redone)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional (the train extra)
                self.writer = None

    def truncate(self, step: int) -> None:
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and _complete(line) and json.loads(line)["step"] <= step]
        text = "".join(line + "\n" for line in keep)
        atomic_write(self.path, lambda p: Path(p).write_text(text))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.writer is not None:
            prefix = "eval/" if record.get("kind") == "eval" else "train/"
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.writer.add_scalar(prefix + k, v, record["step"])
            self.writer.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip() and _complete(line)]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _complete(line: str) -> bool:
    """False for a line cut short by a kill."""
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def plot_curves(records: list[dict[str, Any]], path: Path) -> bool:
    """Training losses and eval PSNRs against steps as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("latent", "pool", "mse", "disc"):
        pts = [(r["step"], r[key]) for r in train if r.get(key)]
        if pts:
            a.plot(*zip(*pts), label=key)
    if a.lines:
        a.set_yscale("log")
        a.legend()
    a.set_xlabel("step")
    a.set_title("training losses")
    for key in ("psnr", "teacher_psnr", "latent_psnr", "roundtrip_psnr", "via_teacher_psnr"):
        pts = [(r["step"], r[key]) for r in evals if r.get(key) is not None]
        if pts:
            b.plot(*zip(*pts), marker="o", label=key)
    b.set_xlabel("step")
    b.set_ylabel("dB")
    b.set_title("validation")
    if b.lines:
        b.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=80))
    plt.close(fig)
    return True


class Progress:
    """A rich progress bar on a terminal; otherwise one plain line every `every` steps (on stderr)."""

    def __init__(self, total: int | None, start: int, every: int, enabled: bool = True):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.every, self.enabled = every, enabled
        self.bar = None
        if enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, \
                TimeRemainingColumn

            self.bar = Bar(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                           TimeRemainingColumn(), console=self.console, transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, info: str, eta: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif self.enabled and step % self.every == 0:
            print(f"step {step}  {info}  ETA {eta}", file=sys.stderr, flush=True)

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, markup=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
