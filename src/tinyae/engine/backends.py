"""`load_backend`: one entry point to the torch, onnxruntime and OpenVINO backends."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..nets.model import AutoencoderTinyBase
from .onnx import export_onnx
from .onnx_backend import OnnxRuntimeAutoencoder
from .optimize import optimize


BACKENDS = ("torch", "onnxruntime", "openvino")


def load_backend(model_or_onnx_folder: AutoencoderTinyBase | str | os.PathLike, backend: str = "onnxruntime",
                 **options: Any) -> Any:
    """An object with AutoencoderTiny's `encode(x).latents` / `decode(z).sample` running on `backend`.

    backend "onnxruntime": from a folder written by `export_onnx`, or from a model (exported to a temporary
    folder first); `options` go to OnnxRuntimeAutoencoder (providers, threads). backend "openvino": the same
    ONNX compiled by OpenVINO (`tinyae.engine.openvino.OpenVinoAutoencoder`: precision "bf16"/"f32", threads).
    backend "torch": the model itself (or `optimize(model, **options)` when options are given).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        if not isinstance(model_or_onnx_folder, AutoencoderTinyBase):
            raise ValueError("backend 'torch' needs an AutoencoderTiny model")
        return optimize(model_or_onnx_folder, **options) if options else model_or_onnx_folder
    if backend == "openvino":
        from .openvino import OpenVinoAutoencoder as cls
    else:
        cls = OnnxRuntimeAutoencoder
    if isinstance(model_or_onnx_folder, AutoencoderTinyBase):
        with tempfile.TemporaryDirectory(prefix="tinyae-onnx-") as tmp:
            export_onnx(model_or_onnx_folder, tmp)
            backend_obj = cls(tmp, **options)  # sessions hold the graphs in memory
            backend_obj.folder = Path("<exported in memory>")
            return backend_obj
    if not isinstance(model_or_onnx_folder, (str, os.PathLike)):
        raise ValueError(f"load_backend expects a model or a folder, got {type(model_or_onnx_folder).__name__}")
    return cls(model_or_onnx_folder, **options)

