"""Compatibility: `tinyae.blocks` is `tinyae.nets.blocks` (the same module object, so patching either patches both)."""

import sys

from .nets import blocks as _module

sys.modules[__name__] = _module
