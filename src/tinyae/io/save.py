"""Saving: diffusers layout, the original pair, ComfyUI's single file; `identify` names a known variant's file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..nets.model import AutoencoderTinyBase
from ..nets.variants import KNOWN_SHA256
from .files import atomic_write, sha256_file
from .layouts import DIFFUSERS_WEIGHTS, to_original_keys


def state_dict_of(model: AutoencoderTinyBase, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_diffusers(model: AutoencoderTinyBase, folder: str | os.PathLike, safe_serialization: bool = True) -> None:
    """config.json + diffusion_pytorch_model.safetensors (or .bin), each written atomically."""
    folder = Path(folder)
    cfg = model.config.to_dict()
    try:
        import diffusers

        cfg["_diffusers_version"] = diffusers.__version__
    except ImportError:
        cfg["_diffusers_version"] = "0.30.0"
    from .._version import __version__

    cfg["_tinyae_version"] = __version__
    if not model.config.diffusers_compatible:
        cfg["_tinyae_note"] = "diffusers' AutoencoderTiny cannot express this architecture; load it with tinyae"
    sd = state_dict_of(model)
    if safe_serialization:
        from safetensors.torch import save_file

        atomic_write(folder / DIFFUSERS_WEIGHTS[0], lambda p: save_file(sd, p, metadata={"format": "pt"}))
    else:
        atomic_write(folder / DIFFUSERS_WEIGHTS[1], lambda p: torch.save(sd, p))
    atomic_write(folder / "config.json", lambda p: Path(p).write_text(json.dumps(cfg, indent=2, sort_keys=True)))


def save_original(model: AutoencoderTinyBase, folder: str | os.PathLike, name: str, format: str = "safetensors"
                  ) -> list[str]:
    """`<name>_encoder.<ext>` / `<name>_decoder.<ext>` with the original script's keys; returns the paths."""
    if format not in ("safetensors", "pth"):
        raise ValueError(f"format must be 'safetensors' or 'pth', got {format!r}")
    sd, written = state_dict_of(model), []
    for part in ("encoder", "decoder"):
        if getattr(model, part) is None:
            continue
        half = to_original_keys(sd, part)
        path = Path(folder) / f"{name}_{part}.{format}"
        if format == "safetensors":
            from safetensors.torch import save_file

            atomic_write(path, lambda p, h=half: save_file(h, p, metadata={"format": "pt"}))
        else:
            atomic_write(path, lambda p, h=half: torch.save(h, p))
        written.append(str(path))
    return written


def save_comfyui(model: AutoencoderTinyBase, path: str | os.PathLike) -> str:
    """One safetensors file with `taesd_encoder.` / `taesd_decoder.` prefixes (ComfyUI's vae_approx / vae folder)."""
    sd, out = state_dict_of(model), {}
    for part in ("encoder", "decoder"):
        out.update({f"taesd_{part}.{k}": v for k, v in to_original_keys(sd, part).items()})
    from safetensors.torch import save_file

    atomic_write(path, lambda p: save_file(out, p, metadata={"format": "pt"}))
    return str(path)


def identify(path: str | os.PathLike) -> str | None:
    """The released file a weights file is byte-identical to, if known."""
    return KNOWN_SHA256.get(sha256_file(path))

