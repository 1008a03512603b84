"""Constants, the CLI's one error type and its one-line error text."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable


DEFAULT_MODEL = "taef2"


MODEL_ENV = "TINYAE_MODEL"


LATENT_FORMATS = {"safetensors": ".safetensors", "png": ".latent.png"}


IMAGE_FORMATS = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}


PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP"}


DEFAULT_MAX_PIXELS = 50_000_000  # about 7000x7000; an 8K frame is 33 Mpixel


class CliError(Exception):
    """A problem reported as one line, ending the command with exit status 1."""


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        text = f"{where}{e.strerror}"
    else:
        text = str(e) or type(e).__name__
        if isinstance(e, KeyError) and text.startswith(("'", '"')):
            text = text[1:-1]
        if not isinstance(e, (CliError, ValueError, KeyError, NotImplementedError, RuntimeError, ImportError)):
            text = f"{type(e).__name__}: {text} (run with --debug for the traceback)"
    return " ".join(text.split())


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through atomic_write, which removes its temporary file


def run_guarded(body: Callable[[], int], debug: bool, interrupted: str) -> int:
    """A command's exit status: body()'s; 1 with one `tinyae: error: ...` line for an exception (the traceback
    only with --debug); 130 with `tinyae: interrupted; <interrupted>` for Ctrl-C or SIGTERM."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"tinyae: interrupted; {interrupted}", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"tinyae: error: {_one_line(e)}", file=sys.stderr)
        return 1
