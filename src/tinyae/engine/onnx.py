"""ONNX export: float32 graphs with the AutoencoderTiny conventions built in, dynamic batch, height and width."""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..io.files import atomic_write
from ..nets.model import AutoencoderTinyBase
from .optimize import Optimized


# ---------------------------------------------------------------------------------------------- ONNX
ONNX_FILES = {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
ONNX_CONFIG = "config.json"
MIN_OPSET = 17


class _ImagesToLatents(nn.Module):
    """The exported encoder: images in [-1, 1] -> raw latents (the AutoencoderTiny.encode convention)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images.add(1).div(2))


class _LatentsToImages(nn.Module):
    """The exported decoder: raw latents -> images in about [-1, 1] (the AutoencoderTiny.decode convention)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents).mul(2).sub(1)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ImportError("ONNX export and the onnxruntime backend need the onnx extra: "
                          "pip install 'tinyae[onnx]'") from None


def export_onnx(model: AutoencoderTinyBase, folder: str | os.PathLike, opset: int = MIN_OPSET, *,
                overwrite: bool = False) -> list[Path]:
    """Write `encoder.onnx` and `decoder.onnx` (whichever halves the model has) and `config.json` into `folder`.

    Graphs are float32 with the AutoencoderTiny conventions built in: encoder `images` (B, 3, H, W) in [-1, 1]
    -> `latents`; decoder `latents` (B, C, h, w) -> `images` in about [-1, 1]. Batch, height and width are
    dynamic. Each file is checked with `onnx.checker` and written atomically; existing files raise
    FileExistsError unless `overwrite`. Returns the written paths.
    """
    _require_onnx()
    import onnx


    if not isinstance(model, AutoencoderTinyBase):
        raise ValueError(f"export_onnx expects a tinyae AutoencoderTiny, got {type(model).__name__}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    if isinstance(model, Optimized):
        model = model.__dict__["_source"]
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    parts = {"encoder": model.encoder, "decoder": model.decoder}
    targets = [folder / ONNX_FILES[p] for p, net in parts.items() if net is not None] + [folder / ONNX_CONFIG]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (pass overwrite=True / --overwrite)")
    cfg = model.config
    written = []
    for part, net in parts.items():
        if net is None:
            continue
        if part == "encoder":
            wrapper: nn.Module = _ImagesToLatents(copy.deepcopy(net).float().cpu().eval())
            size = 8 * cfg.spatial_scale_factor
            example, names = torch.zeros(1, cfg.in_channels, size, size), ("images", "latents")
        else:
            wrapper = _LatentsToImages(copy.deepcopy(net).float().cpu().eval())
            example, names = torch.zeros(1, cfg.latent_channels, 8, 8), ("latents", "images")
        axes = {0: "batch", 2: "height", 3: "width"}
        path = folder / ONNX_FILES[part]

        def write(tmp: str, wrapper=wrapper, example=example, names=names) -> None:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                torch.onnx.export(wrapper, (example,), tmp, input_names=[names[0]], output_names=[names[1]],
                                  dynamic_axes={names[0]: axes, names[1]: axes}, opset_version=opset,
                                  dynamo=False)
            onnx.checker.check_model(tmp)

        atomic_write(path, write)
        written.append(path)
    config_path = folder / ONNX_CONFIG
    text = json.dumps({**cfg.to_dict(), "_tinyae_onnx_opset": opset}, indent=2, sort_keys=True)
    atomic_write(config_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    written.append(config_path)
    return written

