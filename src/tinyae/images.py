"""Compatibility: `tinyae.images` is `tinyae.data.images` (the same module object, so patching either patches both)."""

import sys

from .data import images as _module

sys.modules[__name__] = _module
