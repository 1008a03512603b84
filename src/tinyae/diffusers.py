"""Compatibility: `tinyae.diffusers` is `tinyae.integrations.diffusers` (the same module object, so patching either patches both)."""

import sys

from .integrations import diffusers as _module

sys.modules[__name__] = _module
