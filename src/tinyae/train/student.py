"""The student: a registry variant's architecture or an explicit config (from scratch), or tinyae weights
(fine-tune); a half the weights lack is built from scratch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..model import AutoencoderTiny


def _explicit_config(spec: str) -> dict[str, Any] | None:
    """A JSON object given inline or as a .json file (AutoencoderTiny parameters), else None."""
    text = spec.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--student: not valid JSON ({e})") from None
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return json.loads(path.read_text())
    return None


def build_student(spec: str, seed: int) -> tuple[AutoencoderTiny, list[str], str]:
    """(model in float32, the halves that came with weights, a one-line description)."""
    from ..config import TinyConfig
    from ..variants import get_variant, is_variant, variant_config

    torch.manual_seed(seed)
    if is_variant(spec):
        v = get_variant(spec)
        return AutoencoderTiny(**variant_config(v.name)), [], f"{v.name} architecture, from scratch"
    cfg = _explicit_config(spec)
    if cfg is not None:
        return AutoencoderTiny.from_config(TinyConfig.from_dict(cfg)), [], "explicit config, from scratch"
    from ..cli import model_source
    from ..weights import WeightsError

    try:
        loaded = AutoencoderTiny.from_pretrained(model_source(spec)).float()
    except WeightsError as e:
        raise ValueError(f"--student {spec}: {e} (give a variant name for its architecture from scratch, a "
                         "config.json, or weights to fine-tune)") from None
    parts = [p for p in ("encoder", "decoder") if getattr(loaded, p) is not None]
    if len(parts) == 2:
        return loaded, parts, f"fine-tune of {spec}"
    full = AutoencoderTiny.from_config(loaded.config)
    missing, unexpected = full.load_state_dict(loaded.state_dict(), strict=False)
    other = "decoder" if parts == ["encoder"] else "encoder"
    if unexpected or any(not k.startswith(other) for k in missing):
        raise ValueError(f"--student {spec}: its {parts[0]} does not fit the architecture")
    return full, parts, f"{parts[0]} from {spec}, {other} from scratch"


def check_fit(student: AutoencoderTiny, latent_channels: int, scale_factor: int, teacher: str) -> None:
    """ValueError when the student's latents cannot match the teacher's."""
    if student.config.latent_channels != latent_channels:
        raise ValueError(f"the student has {student.config.latent_channels} latent channels but the teacher "
                         f"{teacher} gives {latent_channels}: choose a student with latent_channels {latent_channels}")
    if student.spatial_scale_factor != scale_factor:
        raise ValueError(f"the student downscales {student.spatial_scale_factor}x but the teacher {teacher} "
                         f"{scale_factor}x")
