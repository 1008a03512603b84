"""Compatibility: `tinyae.latents` is `tinyae.data.latents` (the same module object, so patching either patches both)."""

import sys

from .data import latents as _module

sys.modules[__name__] = _module
