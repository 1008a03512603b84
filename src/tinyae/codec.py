"""Compatibility: `tinyae.codec` is `tinyae.data.codec` (the same module object, so patching either patches both)."""

import sys

from .data import codec as _module

sys.modules[__name__] = _module
