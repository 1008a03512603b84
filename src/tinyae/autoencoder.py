"""The public `AutoencoderTiny`: the network (`tinyae.nets.model.AutoencoderTinyBase`) composed with its loaders
(tinyae.io) and executors (tinyae.engine): from_pretrained/save_pretrained, enable_tiling, optimize().

The network and the layers under it never import this module; loaders and executors take the class to build
(`load(..., model_class=)`) or read it from the model (`optimized_class`), so the imports point one way."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from .engine.optimize import Optimized, optimize as _optimize
from .engine.tiling import check_options, tiled_apply
from .io.load import load
from .io.save import save_diffusers, save_original
from .nets.model import AutoencoderTinyBase, AutoencoderTinyOutput, DecoderOutput, MissingPartError  # noqa: F401


class AutoencoderTiny(AutoencoderTinyBase):
    """Tiny AutoEncoder (TAESD family), a drop-in for `diffusers.AutoencoderTiny`: the network of
    `tinyae.nets.model.AutoencoderTinyBase` (its docstring has the conventions: images (B, C, H, W) in [-1, 1],
    latents as the denoiser sees them, dtypes, tinyae's own parameters) plus loading and saving (`tinyae.io`),
    `enable_tiling` and `optimize()` (`tinyae.engine`).
    """

    # ------------------------------------------------------------------ tiling (tinyae.engine.tiling)
    def enable_tiling(self, **options: Any) -> None:
        """Encode/decode in tiles whose result equals the untiled one (see `tinyae.tiling` for options)."""
        self.tiling_options = check_options(self, options)
        self.use_tiling = True

    def _tiled(self, net: nn.Module, x: torch.Tensor, prepare: Any = None) -> torch.Tensor:
        return tiled_apply(net, x, prepare=prepare, **self.tiling_options)

    # ------------------------------------------------------------------ fast inference (tinyae.engine)
    def optimize(self, precision: str = "auto", **kw: Any) -> "AutoencoderTiny":
        """A copy whose encode/decode run as fast as this device allows; see `tinyae.runtime.optimize`."""
        return _optimize(self, precision, **kw)

    # ------------------------------------------------------------------ loading and saving (tinyae.io)
    @classmethod
    def from_pretrained(cls, source: str | os.PathLike | tuple, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, **kwargs: Any) -> "AutoencoderTiny":
        """Load a variant name ("taesd", "taef2", ...), a local folder or file(s), or a hub repo id.

        See `tinyae.io.load.load` for every accepted source and keyword (sha256, revision, cache_dir,
        local_files_only, subfolder). Raises `tinyae.WeightsError` for any fault in the weights.
        """
        model = load(source, model_class=AutoencoderTiny, **kwargs)
        if torch_dtype is not None or device is not None:
            model = model.to(device=device, dtype=torch_dtype)
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        **kwargs: Any) -> None:
        """Write diffusers layout: config.json + diffusion_pytorch_model.safetensors (atomically)."""
        save_diffusers(self, save_directory, safe_serialization=safe_serialization)

    def save_original(self, folder: str | os.PathLike, name: str, format: str = "safetensors") -> list[str]:
        """Write the original layout: `<name>_encoder.<ext>` / `<name>_decoder.<ext>` (format: safetensors|pth)."""
        return save_original(self, folder, name, format=format)


class OptimizedAutoencoderTiny(Optimized, AutoencoderTiny):
    """What `optimize` returns for an AutoencoderTiny: the AutoencoderTiny API over FastNet encoder/decoder.
    Inference only.

    `precision` ("fp32", "bf16", "fp16") and `dtype` say how it computes; `save_pretrained`/`save_original` write
    the original weights it was built from.
    """


AutoencoderTiny.optimized_class = OptimizedAutoencoderTiny  # what tinyae.engine's optimize() builds for it
