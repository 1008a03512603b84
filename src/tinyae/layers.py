"""Compatibility: `tinyae.layers` is `tinyae.nets.layers` (the same module object, so patching either patches both)."""

import sys

from .nets import layers as _module

sys.modules[__name__] = _module
