"""Compatibility: `tinyae.runtime` is now `tinyae.engine` (precision, kernels, fastnet, optimize, onnx, onnx_backend,
backends); `OptimizedAutoencoderTiny` lives in `tinyae.autoencoder`, `export_onnx_main` in `tinyae.cli.export_onnx`."""

from ._compat import reexport
from .engine import backends, fastnet, kernels, onnx, onnx_backend, optimize as _optimize, precision

for _module in (precision, kernels, fastnet, _optimize, onnx, onnx_backend, backends):
    reexport(globals(), _module)
from .autoencoder import OptimizedAutoencoderTiny  # noqa: E402,F401
from .cli.export_onnx import main as export_onnx_main  # noqa: E402,F401
