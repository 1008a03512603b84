"""Compatibility: `tinyae.config` is `tinyae.nets.config` (the same module object, so patching either patches both)."""

import sys

from .nets import config as _module

sys.modules[__name__] = _module
