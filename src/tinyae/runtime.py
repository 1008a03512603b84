"""Compatibility: `tinyae.runtime` is now `tinyae.engine` (optimize, the fused kernels, ONNX export, backends);
`OptimizedAutoencoderTiny` lives in `tinyae.autoencoder`, `export_onnx_main` in `tinyae.cli.export_onnx`."""

from ._compat import reexport
from .engine import runtime as _module

reexport(globals(), _module)
from .autoencoder import OptimizedAutoencoderTiny  # noqa: E402,F401
from .cli.export_onnx import main as export_onnx_main  # noqa: E402,F401
