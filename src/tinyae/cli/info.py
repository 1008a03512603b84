"""`tinyae info`: describe weights or a latent file, and what --precision auto picks here."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .common import _kb
from .runner import Reporter
from .models import _model_hint, _video, identify_variant, model_source, resolve_files
from .convert import _source_dtype


def _latent_info(path: Path) -> dict[str, Any] | None:
    """Latent-file facts, or None when `path` is not a latent file."""
    from ..data.codec import LatentFileError, load_latents

    if not path.is_file() or not path.name.endswith((".safetensors", ".png")):
        return None
    try:
        e = load_latents(path)
    except LatentFileError:
        return None
    return {"kind": "latents", "file": str(path), "bytes": path.stat().st_size,
            "latent_shape": list(e.latents.shape), "original_size": list(e.size) if e.size else None,
            "alpha": e.alpha is not None, **e.metadata}


def cmd_info(args: argparse.Namespace) -> int:
    if (rc := _video("info", args)) is not None:
        return rc
    from ..nets.config import UNCHECKED_BY_TENSORS
    from ..autoencoder import AutoencoderTiny
    from ..nets.variants import VARIANTS, variant_config
    from ..io.files import WeightsError, sha256_file
    from ..io.save import identify

    rep = Reporter(args.json)
    lat = _latent_info(Path(args.src)) if "," not in args.src else None
    if lat is not None:
        rep.emit(lat)
        for k, v in lat.items():
            rep.line(f"{k:16} {v}")
        return 0
    source = model_source(args.src)
    try:
        model = AutoencoderTiny.from_pretrained(source)
        files = resolve_files(source)
    except WeightsError as e:
        raise WeightsError(_model_hint(args.src, e)) from None
    variant = identify_variant(source, model)
    same_arch = [n for n in VARIANTS if variant_config(n) == model.config.init_kwargs()]
    params = {part: sum(p.numel() for p in getattr(model, part).parameters())
              for part in ("encoder", "decoder") if getattr(model, part) is not None}
    formats = ["original", "comfyui", "safetensors"]
    formats.insert(0, "diffusers" if model.config.diffusers_compatible else "diffusers (tinyae only)")
    doc = {"kind": "weights", "source": args.src, "variant": variant, "same_architecture_as": same_arch,
           "latent_channels": model.config.latent_channels, "scale_factor": model.spatial_scale_factor,
           "image_channels": model.config.image_channels,
           "parts": list(params), "parameters": {**params, "total": sum(params.values())},
           "dtype": _source_dtype(source), "diffusers_compatible": model.config.diffusers_compatible,
           "files": [{"path": p, "part": part, "bytes": os.path.getsize(p), "sha256": sha256_file(p),
                      "known_as": identify(p)} for p, part in files],
           "formats": formats, "auto_precision": _auto_precision(model),
           "config_from": _config_origin(source, files),
           "not_checked_against_tensors": {k: model.config[k] for k in UNCHECKED_BY_TENSORS}}
    rep.emit(doc)
    rep.line(f"variant          {variant or 'unknown'}"
             + (f" (architecture of {', '.join(same_arch)})" if same_arch and not variant else ""))
    rep.line(f"latent channels  {doc['latent_channels']}")
    rep.line(f"scale factor     {doc['scale_factor']} (image pixels per latent pixel)")
    rep.line(f"image channels   {doc['image_channels']} "
             f"({'RGBA, straight alpha' if doc['image_channels'] == 4 else 'RGB'})")
    rep.line("parameters       " + ", ".join(f"{k} {v:,}" for k, v in doc["parameters"].items()))
    rep.line(f"dtype            {doc['dtype']}")
    for f in doc["files"]:
        known = f"  = {f['known_as']}" if f["known_as"] else ""
        rep.line(f"file             {f['path']} ({_kb(f['bytes'])}) sha256 {f['sha256']}{known}")
    rep.line(f"saves to         {', '.join(formats)}")
    rep.line(f"not in weights   {', '.join(f'{k}={v}' for k, v in doc['not_checked_against_tensors'].items())} "
             f"(from {doc['config_from']}: no tensor confirms them)")
    for d in doc["auto_precision"]:
        rep.line(f"--precision auto {d['precision']} on {d['device']}: {d['why']}")
    return 0


def _auto_precision(model: Any = None) -> list[dict[str, str]]:
    """What --precision auto resolves to on each device of this machine (for `model`'s weights), and why."""
    import torch

    from ..engine.precision import explain_precision

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [dict(zip(("device", "precision", "why"), (d, *explain_precision(d, model)))) for d in devices]


def _config_origin(source: Any, files: list[tuple[str, str | None]]) -> str:
    """Where a loaded model's non-tensor settings came from: a config.json, the variant registry, or defaults."""
    from ..nets.variants import is_variant
    from ..io.save import DIFFUSERS_WEIGHTS

    if any(Path(p).name in DIFFUSERS_WEIGHTS for p, _ in files):
        return "config.json"
    if isinstance(source, str) and is_variant(source):
        return "the variant registry"
    return "the defaults (weights files hold no config)"
