"""Compatibility: `tinyae.model` was the network and the public class; now `tinyae.nets.model` (the network,
`AutoencoderTinyBase`) and `tinyae.autoencoder` (the public `AutoencoderTiny`)."""

from ._compat import reexport
from .nets import model as _module

reexport(globals(), _module)
from .autoencoder import AutoencoderTiny, OptimizedAutoencoderTiny  # noqa: E402,F401
