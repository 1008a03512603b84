"""Compatibility: `tinyae.weights` is `tinyae.io.weights` (the same module object, so patching either patches both)."""

import sys

from .io import weights as _module

sys.modules[__name__] = _module
