"""Compatibility: `tinyae.weights` is now `tinyae.io` (files, key layouts, hub, load, save); `load` here builds
the public `tinyae.AutoencoderTiny`, as it always did."""

from typing import Any

from ._compat import reexport
from .io import weights as _module

reexport(globals(), _module)
from .autoencoder import AutoencoderTiny  # noqa: E402


def load(source: Any, **kwargs: Any) -> AutoencoderTiny:  # noqa: F811
    """`tinyae.io.weights.load` building a `tinyae.AutoencoderTiny` (see there for sources and keywords)."""
    kwargs.setdefault("model_class", AutoencoderTiny)
    return _module.load(source, **kwargs)
