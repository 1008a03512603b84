"""The fast path in one import: optimize(), the fused layers and FastNet, device precisions, ONNX export and the
backends, re-exported from their modules (precision, kernels, fastnet, optimize, onnx, onnx_backend, backends).

tiling.py and fast_stream.py import FastNet and the fused layers from here (their import lines stay as they were
while another branch edits them); new code imports the module that defines a name."""

from .backends import BACKENDS, load_backend  # noqa: F401
from .fastnet import STRIP_BYTES, FastNet, Segment  # noqa: F401
from .kernels import (PACKED_PER_LAYER, FastBlock, FastConv, FastStem, FastUpsampleConv,  # noqa: F401
                      compose_conv_weights, interleave_phases, upsample_conv_weights, upsample_deconv_weights)
from .onnx import MIN_OPSET, ONNX_CONFIG, ONNX_FILES, export_onnx  # noqa: F401
from .onnx_backend import ONNX_TOLERANCE, OnnxRuntimeAutoencoder, check_onnx  # noqa: F401
from .optimize import Optimized, OptimizedAutoencoderTinyBase, copy_float32_cpu, optimize  # noqa: F401
from .precision import (PRECISIONS, _fused_available, cpu_flags, cpu_has_fast_bf16, explain_precision,  # noqa: F401
                        resolve_precision)
