"""Compatibility: `tinyae.runtime` is `tinyae.engine.runtime` (the same module object, so patching either patches both)."""

import sys

from .engine import runtime as _module

sys.modules[__name__] = _module
