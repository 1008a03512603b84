"""Video TAE weights: the architecture inferred from the tensors, strict loading, and saving in each format.

Formats: the original single file (`encoder.N.*` and `decoder.N.*` in one .pth or .safetensors; either half may be
absent), and a diffusers-style folder (config.json + diffusion_pytorch_model.safetensors, same keys). Patch size,
latent channels, decoder kind (base / super) and per-stage temporal strides come from tensor shapes; the variant
(frame handling, family) from an explicit argument, the folder's config.json, or, as a last resort, the file name.
TGrow weights stored with more output channels than the model needs are cut to their last timestep(s).
Loading is strict: any missing, unexpected or mis-shaped tensor raises WeightsError; pickles load weights_only.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..weights import WeightsError, atomic_write, read_tensors
from .config import VideoConfig
from .layers import TGrow, TPool, build_decoder, build_encoder, build_super_decoder
from .variants import VideoVariant, get_video_variant, variant_from_filename

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def build_parts(cfg: VideoConfig, encoder: bool = True, decoder: bool = True
                ) -> tuple[nn.Sequential | None, nn.Sequential | None]:
    enc = build_encoder(cfg.latent_channels, cfg.patch_size, cfg.encoder_time_downscale) if encoder else None
    dec = None
    if decoder:
        dec = (build_super_decoder(cfg.latent_channels, cfg.patch_size, cfg.decoder_time_upscale)
               if cfg.decoder == "super" else
               build_decoder(cfg.latent_channels, cfg.patch_size, cfg.decoder_time_upscale, cfg.decoder_space_upscale))
    return enc, dec


def _skeleton(cfg: VideoConfig) -> tuple[nn.Sequential, nn.Sequential]:
    with torch.device("meta"):
        enc, dec = build_parts(cfg)
    assert enc is not None and dec is not None
    return enc, dec


def _shape(sd: dict[str, torch.Tensor], key: str, where: str) -> tuple[int, ...]:
    if key not in sd:
        raise WeightsError(f"{where}: no tensor {key!r}; not a video TAE (TAEHV family) state dict")
    return tuple(sd[key].shape)


def _patch(channels: int, key: str, where: str) -> int:
    p = math.isqrt(channels // 3)
    if channels % 3 or p * p * 3 != channels:
        raise WeightsError(f"{where}: {key} has {channels} image channels, not 3*p*p")
    return p


def infer_config(sd: dict[str, torch.Tensor], where: str = "weights") -> tuple[VideoConfig, bool, bool]:
    """The architecture the tensors hold: (config, has_encoder, has_decoder). Frame rule left at the default."""
    has_enc = any(k.startswith("encoder.") for k in sd)
    has_dec = any(k.startswith("decoder.") for k in sd)
    if not has_enc and not has_dec:
        raise WeightsError(f"{where}: no encoder.* or decoder.* tensors; not a video TAE (TAEHV family) file")
    kw: dict[str, Any] = {}
    enc_p = dec_p = enc_c = dec_c = None
    base_enc, base_dec = _skeleton(VideoConfig())
    if has_enc:
        enc_p = _patch(_shape(sd, "encoder.0.weight", where)[1], "encoder.0.weight", where)
        last = len(base_enc) - 1
        enc_c = _shape(sd, f"encoder.{last}.weight", where)[0]
        flags = []
        for i in (i for i, m in enumerate(base_enc) if isinstance(m, TPool)):
            o, n = _shape(sd, f"encoder.{i}.conv.weight", where)[:2]
            if n not in (o, 2 * o):
                raise WeightsError(f"{where}: encoder.{i}.conv.weight {tuple(sd[f'encoder.{i}.conv.weight'].shape)}"
                                   " is no temporal pooling of stride 1 or 2")
            flags.append(n == 2 * o)
        kw["encoder_time_downscale"] = tuple(flags)
    if has_dec:
        kind = "super" if "decoder.0.weight" in sd else "base"  # base: decoder.0 is the Clamp
        kw["decoder"] = kind
        _, dec = _skeleton(VideoConfig(decoder=kind))
        first = "decoder.0.weight" if kind == "super" else "decoder.1.weight"
        dec_c = _shape(sd, first, where)[1]
        dec_p = _patch(_shape(sd, f"decoder.{len(dec) - 1}.weight", where)[0], f"decoder.{len(dec) - 1}.weight",
                       where)
        ratios = []
        for i in (i for i, m in enumerate(dec) if isinstance(m, TGrow)):
            o, n = _shape(sd, f"decoder.{i}.conv.weight", where)[:2]
            if o % n:
                raise WeightsError(f"{where}: decoder.{i}.conv.weight {(o, n)} is no temporal upscaling")
            ratios.append(o // n)
        flags = [r >= 2 for r in ratios]
        if has_enc:  # TGrow weights may hold more timesteps than used: match the encoder's time factor
            while sum(flags) > sum(kw["encoder_time_downscale"]) and any(flags):
                flags[flags.index(True)] = False
        kw["decoder_time_upscale"] = tuple(flags)
    if has_enc and has_dec and (enc_p, enc_c) != (dec_p, dec_c):
        raise WeightsError(f"{where}: encoder (patch {enc_p}, {enc_c} latent channels) and decoder (patch {dec_p}, "
                           f"{dec_c} latent channels) do not belong together")
    kw["patch_size"] = enc_p or dec_p
    kw["latent_channels"] = enc_c or dec_c
    if not has_enc:
        kw["encoder_time_downscale"] = kw["decoder_time_upscale"][::-1]
    if not has_dec:
        kw["decoder_time_upscale"] = kw["encoder_time_downscale"][::-1]
    return VideoConfig(**kw), has_enc, has_dec


def fit_tgrow(sd: dict[str, torch.Tensor], decoder: nn.Sequential, prefix: str = "decoder.") -> dict[str, torch.Tensor]:
    """Cut TGrow weights stored with more output channels than `decoder` needs to the last timestep(s)."""
    sd = dict(sd)
    for i, m in enumerate(decoder):
        key = f"{prefix}{i}.conv.weight"
        if isinstance(m, TGrow) and key in sd:
            need = m.conv.weight.shape[0]
            have = sd[key].shape[0]
            if have > need and have % need == 0:
                sd[key] = sd[key][-need:]
    return sd


def resolve_config(sd: dict[str, torch.Tensor], where: str, variant: str | VideoVariant | None = None,
                   stored: dict[str, Any] | None = None, **overrides: Any) -> tuple[VideoConfig, bool, bool]:
    """Config for these tensors: inferred architecture + frame rule of the variant; overrides may only reduce."""
    inferred, has_enc, has_dec = infer_config(sd, where)
    v: VideoVariant | None = None
    if isinstance(variant, VideoVariant):
        v = variant
    elif variant is not None:
        v = get_video_variant(variant)
    elif stored and stored.get("variant"):
        v = get_video_variant(stored["variant"])
    elif not stored:
        v = variant_from_filename(where)
    cfg = inferred
    if v is not None:
        for name in ("latent_channels", "patch_size", "decoder"):
            mine, theirs = getattr(inferred, name), getattr(v, name)
            if mine != theirs and (name != "decoder" or has_dec):
                raise WeightsError(f"{where}: the tensors are a {name}={mine!r} model; variant {v.name} has "
                                   f"{name}={theirs!r}")
        cfg = cfg.replace(frames=v.frames, variant=v.name)
    elif stored and isinstance(stored.get("frames"), dict):
        cfg = cfg.replace(frames=VideoConfig.from_dict({"frames": stored["frames"]}).frames)
    if overrides:
        for name in ("decoder_time_upscale", "decoder_space_upscale"):
            if name in overrides and any(a and not b for a, b in zip(overrides[name], getattr(cfg, name))):
                raise WeightsError(f"{where}: {name}={tuple(overrides[name])} asks for more upscaling than the "
                                   f"weights hold ({getattr(cfg, name)})")
        try:
            cfg = cfg.replace(**overrides)
        except (TypeError, ValueError) as e:
            raise WeightsError(f"{where}: {e}") from None
    return cfg, has_enc, has_dec


def load_into(parts: dict[str, nn.Module | None], sd: dict[str, torch.Tensor], where: str) -> None:
    """Strict: every tensor of each present part, nothing else, each of the right shape; else WeightsError."""
    want: dict[str, torch.Tensor] = {}
    for name, part in parts.items():
        if part is not None:
            want.update({f"{name}.{k}": v for k, v in part.state_dict().items()})
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    shapes = [f"{k} {tuple(sd[k].shape)} (expected {tuple(want[k].shape)})"
              for k in want if k in sd and sd[k].shape != want[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:4])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:4])}")
    if shapes:
        problems.append(f"wrong shapes: {'; '.join(shapes[:4])}")
    if problems:
        raise WeightsError(f"{where}: " + "; ".join(problems))
    for name, part in parts.items():
        if part is not None:
            prefix = f"{name}."
            part.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, strict=True)


def read_source(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, str]:
    """(tensors, stored config.json or None, a name for messages) of a file or a diffusers-style folder."""
    path = Path(source)
    if path.is_dir():
        cfg_path, w_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not w_path.exists():
            raise WeightsError(f"{path}: no {WEIGHTS_NAME} in this folder")
        stored = None
        if cfg_path.exists():
            try:
                stored = json.loads(cfg_path.read_text())
            except (OSError, ValueError) as e:
                raise WeightsError(f"{cfg_path}: unreadable config ({e})") from None
            if not isinstance(stored, dict):
                raise WeightsError(f"{cfg_path}: not a JSON object")
            if stored.get("_class_name") not in (None, "AutoencoderTinyVideo"):
                raise WeightsError(f"{cfg_path}: a {stored.get('_class_name')} config, not a video TAE's")
        return read_tensors(w_path), stored, str(path)
    return read_tensors(path), None, str(path)


def _tensors(parts: dict[str, nn.Module | None], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out = {}
    for name, part in parts.items():
        if part is not None:
            for k, v in part.state_dict().items():
                v = v.detach().cpu()
                out[f"{name}.{k}"] = (v.to(dtype) if dtype is not None else v).contiguous()
    return out


def save_file(parts: dict[str, nn.Module | None], path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """The original single-file layout: .safetensors, or .pth (a plain state dict)."""
    path = Path(path)
    sd = _tensors(parts, dtype)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file as write

        atomic_write(path, lambda tmp: write(sd, tmp))
    elif path.suffix in (".pth", ".pt"):
        atomic_write(path, lambda tmp: torch.save(sd, tmp))
    else:
        raise ValueError(f"{path}: save as .safetensors or .pth")


def save_folder(parts: dict[str, nn.Module | None], cfg: VideoConfig, folder: str | os.PathLike,
                dtype: torch.dtype | None = None) -> None:
    """Diffusers-style folder: config.json + diffusion_pytorch_model.safetensors (original keys)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder")
    save_file(parts, folder / WEIGHTS_NAME, dtype)
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(cfg.to_json_string() + "\n"))
