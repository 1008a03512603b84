"""Fault injection over a whole CLI batch (issue 11): `kill -9` at random points of a 20-file encode, decode and
roundtrip, then `--resume`: every output is byte-identical to an uninterrupted run's and no temporary file is left.

A tiny random model and 24x24 images keep it to seconds; the children fork from a server that imported torch
once, so starting one costs milliseconds, not the seconds of a fresh interpreter.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from tinyae import cli

from reliability_helpers import hidden, saved_model, tiny_images, tree_bytes

N = 20


def run_child(argv: list[str]) -> None:
    """A CLI run in a child process (forked from a server that imported torch once: fast to start)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop(cli.MODEL_ENV, None)
    import huggingface_hub.constants
    import torch

    huggingface_hub.constants.HF_HUB_OFFLINE = True  # read at import: the forkserver imported it before

    torch.set_num_threads(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.exit(cli.main(argv))


@pytest.fixture(scope="module")
def children():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "tinyae.cli", "tinyae.data.images", "tinyae.data.codec", "safetensors.torch",
                                "PIL.Image", "test_faults"])
    return ctx


def done(out: Path, pattern: str) -> int:
    return len(list(out.glob(pattern))) if out.exists() else 0


def kill_after(children, argv: list[str], out: Path, pattern: str, outputs: int) -> int:
    """Start the command, SIGKILL it once `outputs` outputs exist (or it ended); returns how many existed then."""
    proc = children.Process(target=run_child, args=(argv,))
    proc.start()
    deadline = time.monotonic() + 120
    while done(out, pattern) < outputs and proc.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.001)
    if proc.exitcode is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(60)
    return done(out, pattern)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    model = saved_model(root / "model")
    tiny_images(root / "in", N, size=24)
    return root, model


COMMANDS = {  # name: (argv after the command given root, output pattern counted, inputs)
    "encode": (lambda r, m, o: ["encode", str(r / "in"), "-o", str(o), "--model", str(m)], "*.safetensors"),
    "decode": (lambda r, m, o: ["decode", str(r / "ref-encode"), "-o", str(o), "--model", str(m)], "*.png"),
    "roundtrip": (lambda r, m, o: ["roundtrip", str(r / "in"), "-o", str(o), "--model", str(m)], "*.compare.png"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_kill_9_then_resume_gives_the_uninterrupted_outputs(batch, children, command):
    root, model = batch
    argv, pattern = COMMANDS[command]
    if command == "decode" and not (root / "ref-encode").exists():
        assert cli.main(COMMANDS["encode"][0](root, model, root / "ref-encode")) == 0
    ref = root / f"ref-{command}"
    if not ref.exists():
        assert cli.main(argv(root, model, ref) + ["--batch-size", "1"]) == 0
    expected = tree_bytes(ref)
    assert len(expected) == N * (2 if command == "roundtrip" else 1)

    out = root / f"killed-{command}"
    rng = random.Random(command)
    points = sorted(rng.sample(range(1, N), 3))  # kill once this many outputs exist
    landed = []
    for k in points:
        landed.append(kill_after(children, argv(root, model, out) + ["--batch-size", "1", "--resume"], out, pattern,
                                 k))
    assert any(0 < n < N for n in landed), landed  # at least one kill hit the middle of the batch
    # the same options as the uninterrupted run (another batch size may round differently in the last bit)
    rerun = children.Process(target=run_child, args=(argv(root, model, out) + ["--batch-size", "1", "--resume"],))
    rerun.start()
    rerun.join(300)
    assert rerun.exitcode == 0
    assert tree_bytes(out) == expected  # byte-identical, none missing, none extra
    assert hidden(out) == []  # the killed runs' temporary files were removed as provably stale
