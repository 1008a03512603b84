"""Compatibility: `tinyae.ov_backend` is `tinyae.engine.openvino` (the same module object, so patching either patches both)."""

import sys

from .engine import openvino as _module

sys.modules[__name__] = _module
