"""An OpenVINO backend: tinyae's own ONNX export compiled by OpenVINO for the CPU (a benchmark contestant, and the
runtime a performance-minded CPU user would otherwise pick). `pip install openvino` (benchmark-only extra).

OpenVINO chooses bf16 by itself on CPUs with AVX512-BF16 or AMX; `precision` pins it ("bf16" or "fp32") through
its INFERENCE_PRECISION_HINT. Inputs are checked and outputs returned exactly as by `OnnxRuntimeAutoencoder`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .onnx import ONNX_FILES
from .onnx_backend import OnnxRuntimeAutoencoder

PRECISIONS = {"bf16": "bf16", "fp32": "f32"}  # tinyae's names -> OpenVINO's INFERENCE_PRECISION_HINT


def bf16_available() -> bool:
    """True when OpenVINO computes bf16 on this CPU (its CPU plugin lists BF16 among its capabilities)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoAutoencoder(OnnxRuntimeAutoencoder):
    """AutoencoderTiny's encode/decode API over OpenVINO compiled models (CPU; `precision` "bf16" or "fp32")."""

    def __init__(self, folder: str | os.PathLike, precision: str = "bf16", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise ImportError("the OpenVINO backend needs openvino: pip install openvino") from None
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        self._load_config(folder)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.sessions = {part: core.compile_model(str(Path(folder) / name), "CPU", config)
                         for part, name in ONNX_FILES.items() if (Path(folder) / name).is_file()}
        self._check_parts()
        got = {s.get_property("INFERENCE_PRECISION_HINT").get_type_name() for s in self.sessions.values()}
        if precision == "bf16" and got != {"bf16"}:  # OpenVINO falls back to f32 silently (AVX2-only CPUs)
            raise ValueError(f"OpenVINO computes bf16 only on CPUs with AVX512-BF16 or AMX; on this CPU it compiled "
                             f"{', '.join(sorted(got))} (its capabilities: "
                             f"{', '.join(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}); use precision='fp32'")
        self.precision = precision

    def _infer(self, session, x: torch.Tensor) -> torch.Tensor:
        out = session(x.detach().float().contiguous().numpy())[0]
        return torch.from_numpy(out.copy())

    def __repr__(self) -> str:
        return f"OpenVinoAutoencoder({str(self.folder)!r}, parts={list(self.sessions)}, precision={self.precision})"
