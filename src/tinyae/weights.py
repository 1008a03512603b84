"""Compatibility: `tinyae.weights` is now `tinyae.io` (files, layouts, hub, local, load, save); `load` here builds
the public `tinyae.AutoencoderTiny`, as it always did."""

from typing import Any

from ._compat import reexport
from .io import files, hub, layouts, load as _load, local, save

for _module in (files, layouts, hub, local, _load, save):
    reexport(globals(), _module)
from .autoencoder import AutoencoderTiny  # noqa: E402


def load(source: Any, **kwargs: Any) -> AutoencoderTiny:  # noqa: F811
    """`tinyae.io.load.load` building a `tinyae.AutoencoderTiny` (see there for sources and keywords)."""
    kwargs.setdefault("model_class", AutoencoderTiny)
    return _load.load(source, **kwargs)


def build(sd: dict, config: dict | None = None, source: str = "weights", **kwargs: Any) -> AutoencoderTiny:  # noqa: F811
    """`tinyae.io.layouts.build` building a `tinyae.AutoencoderTiny`."""
    kwargs.setdefault("model_class", AutoencoderTiny)
    return layouts.build(sd, config, source, **kwargs)
