"""The onnxruntime backend: AutoencoderTiny's encode/decode over onnxruntime sessions of tinyae's own ONNX export,
and `check_onnx` (onnxruntime against the torch float32 model)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..nets.config import TinyConfig
from ..nets.model import AutoencoderTinyBase, AutoencoderTinyOutput, DecoderOutput, MissingPartError
from .onnx import ONNX_CONFIG, ONNX_FILES, _require_onnx
from .optimize import copy_float32_cpu


class OnnxRuntimeAutoencoder:
    """AutoencoderTiny's encode/decode API over onnxruntime sessions (CPU tensors; float32 inside).

    Inputs are checked like AutoencoderTiny's (ValueError naming the problem); outputs come back in the input's
    dtype. `encode(x).latents`, `decode(z).sample`, `config`, `spatial_scale_factor` as on the torch model.
    """

    check_finite = True
    _check = AutoencoderTinyBase._check  # the same input checks as the torch model (uses .device and .check_finite)
    _finite = AutoencoderTinyBase._finite

    def __init__(self, folder: str | os.PathLike, providers: Sequence[str] | None = None,
                 threads: int | None = None):
        _require_onnx()
        import onnxruntime as ort

        folder = self._load_config(folder)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.sessions: dict[str, Any] = {}
        for part, name in ONNX_FILES.items():
            if (folder / name).is_file():
                self.sessions[part] = ort.InferenceSession(str(folder / name), options, providers=providers)
        self._check_parts()

    def _load_config(self, folder: str | os.PathLike) -> Path:

        folder = Path(folder)
        if not (folder / ONNX_CONFIG).is_file():
            raise ValueError(f"{folder}: not a tinyae ONNX export (no {ONNX_CONFIG}); create one with "
                             "`tinyae export-onnx`")
        with open(folder / ONNX_CONFIG, encoding="utf-8") as f:
            self.config = TinyConfig.from_dict(json.load(f))
        self.folder = folder
        return folder

    def _check_parts(self) -> None:
        if not self.sessions:
            raise ValueError(f"{self.folder}: holds neither {ONNX_FILES['encoder']} nor {ONNX_FILES['decoder']}")

    device = torch.device("cpu")
    dtype = torch.float32

    @property
    def spatial_scale_factor(self) -> int:
        return self.config.spatial_scale_factor

    def _run(self, part: str, x: torch.Tensor) -> torch.Tensor:
        if part not in self.sessions:
            raise MissingPartError(f"{self.folder} has no {ONNX_FILES[part]}: export a model that has the {part}")
        return self._infer(self.sessions[part], x).to(x.dtype)

    def _infer(self, session: Any, x: torch.Tensor) -> torch.Tensor:
        feed = {session.get_inputs()[0].name: x.detach().float().contiguous().numpy()}
        return torch.from_numpy(session.run(None, feed)[0])

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderTinyOutput | tuple[torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> raw latents (B, C, H/f, W/f)."""
        if "encoder" in self.sessions:
            x = self._check(x, "images", self.config.in_channels, self.spatial_scale_factor)
        out = self._run("encoder", x)
        return AutoencoderTinyOutput(latents=out) if return_dict else (out,)

    def decode(self, x: torch.Tensor, generator: torch.Generator | None = None, return_dict: bool = True
               ) -> DecoderOutput | tuple[torch.Tensor]:
        """Raw latents (B, C, h, w) -> images (B, 3, h*f, w*f) in about [-1, 1]."""
        if "decoder" in self.sessions:
            x = self._check(x, "latents", self.config.latent_channels, 1)
        out = self._run("decoder", x)
        return DecoderOutput(sample=out) if return_dict else (out,)

    def __repr__(self) -> str:
        return f"OnnxRuntimeAutoencoder({str(self.folder)!r}, parts={list(self.sessions)})"


ONNX_TOLERANCE = 1e-4


def check_onnx(model: AutoencoderTinyBase, folder: str | os.PathLike, size: int = 128, seed: int = 0
               ) -> dict[str, float]:
    """Max abs difference of onnxruntime against the torch float32 model on a smooth test image of `size` pixels
    (and its latents), per exported part."""
    backend = OnnxRuntimeAutoencoder(folder)
    ref = copy_float32_cpu(model)
    f = ref.spatial_scale_factor
    size = max(f, size // f * f)
    gen = torch.Generator().manual_seed(seed)
    images = F.interpolate(torch.rand(1, ref.config.in_channels, size // 8 + 1, size // 8 + 1, generator=gen),
                           size=(size, size), mode="bilinear", align_corners=True) * 2 - 1
    out: dict[str, float] = {}
    with torch.no_grad():
        latents = (ref.encode(images).latents if ref.encoder is not None else
                   torch.randn(1, ref.config.latent_channels, size // f, size // f, generator=gen))
        if "encoder" in backend.sessions:
            out["encoder"] = float((backend.encode(images).latents - latents).abs().max())
        if "decoder" in backend.sessions:
            out["decoder"] = float((backend.decode(latents).sample - ref.decode(latents).sample).abs().max())
    return out

