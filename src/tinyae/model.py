"""Compatibility: `tinyae.model` is `tinyae.nets.model` (the same module object, so patching either patches both)."""

import sys

from .nets import model as _module

sys.modules[__name__] = _module
