"""Compatibility: `tinyae.variants` is `tinyae.nets.variants` (the same module object, so patching either patches both)."""

import sys

from .nets import variants as _module

sys.modules[__name__] = _module
