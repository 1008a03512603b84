"""Export of the trained (EMA) student into RUN_DIR/final, every format tinyae writes, side by side:

- the diffusers layout (config.json + diffusion_pytorch_model.safetensors; `AutoencoderTiny.from_pretrained`,
  tinyae's or diffusers'), with the latent convention in config.json (`_tinyae_training`);
- the original script's single files, `NAME_encoder/_decoder.safetensors` and `.pth` (as `tinyae convert --to
  original [--pth]` writes them);
- `comfyui/NAME.safetensors` (ComfyUI's one-file layout; a model with both halves) and `onnx/` (when onnx is
  installed), each in its own folder as their writers fill one;
- README.md, the model card.
"""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path
from typing import Any

from ..model import AutoencoderTiny
from ..runtime import ONNX_CONFIG, ONNX_FILES, export_onnx
from ..weights import atomic_write, save_comfyui, save_diffusers, save_original


def exportable(model: AutoencoderTiny, keep: list[str]) -> AutoencoderTiny:
    """A float32 CPU copy holding only the halves in `keep` (a half left from scratch and untrained is dropped)."""
    out = AutoencoderTiny(**model.config.init_kwargs(), has_encoder="encoder" in keep,
                          has_decoder="decoder" in keep)
    sd = {k: v for k, v in model.state_dict().items() if k.split(".")[0] in keep}
    out.load_state_dict(sd)
    return out.float().cpu().eval()


def export(run_dir: Path, model: AutoencoderTiny, keep: list[str], info: dict[str, Any]) -> list[Path]:
    """Write every format; returns the written paths. `info`: teacher, convention, data, steps, metrics, command."""
    model = exportable(copy.deepcopy(model), keep)
    final = run_dir / "final"
    save_diffusers(model, final)
    cfg_path = final / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["_tinyae_training"] = {"teacher": info["teacher"], "latents": info["convention"], "steps": info["steps"]}
    atomic_write(cfg_path, lambda p: Path(p).write_text(json.dumps(cfg, indent=2, sort_keys=True)))
    written = [cfg_path, final / "diffusion_pytorch_model.safetensors"]
    formats = info.get("formats", ())
    name = info.get("name", "tae")
    if "original" in formats:
        for fmt in ("safetensors", "pth"):
            written += map(Path, save_original(model, final, name, format=fmt))
    if "comfyui" in formats and len(keep) == 2:
        written.append(Path(save_comfyui(model, final / "comfyui" / f"{name}.safetensors")))
    if "onnx" in formats:
        try:
            written += export_onnx(model, final / "onnx", overwrite=True)
        except ImportError:
            pass  # the onnx extra is not installed
    stale = [final / f"{name}_{part}.{ext}" for part in ("encoder", "decoder") for ext in ("safetensors", "pth")]
    stale += [final / "comfyui" / f"{name}.safetensors"]
    stale += [final / "onnx" / n for n in (*ONNX_FILES.values(), ONNX_CONFIG)]
    for path in set(stale) - set(written):  # an earlier export of this run in a format no longer asked for
        path.unlink(missing_ok=True)
    for folder in (final / "comfyui", final / "onnx"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    card = model_card(model, keep, info, [p.relative_to(run_dir) for p in written])
    atomic_write(final / "README.md", lambda p: Path(p).write_text(card))
    return written + [final / "README.md"]


def model_card(model: AutoencoderTiny, keep: list[str], info: dict[str, Any], files: list[Path]) -> str:
    m = info.get("metrics") or {}
    conv = info["convention"]
    lines = [
        "---", "library_name: diffusers", "tags: [tinyae, taesd, autoencoder, distillation]", "---", "",
        f"# {info.get('name', 'tae')}: a Tiny AutoEncoder distilled with tinyae", "",
        f"- teacher: `{info['teacher']}`",
        f"- latent convention: {json.dumps({k: v for k, v in conv.items() if k not in ('mean', 'std')})} "
        "(the model consumes and produces the diffusion model's latents)",
        f"- student: {info['student']}; halves in this export: {', '.join(keep)}",
        f"- trained: {', '.join(info['trained'])}; {info['steps']} steps, {info['samples']} samples, "
        f"{info['minutes']:.1f} minutes",
        f"- data: {info['data_images']} images from {', '.join(info['data'])}; validation: {info.get('val') or 'none'}",
        f"- latent channels {model.config.latent_channels}, scale factor {model.spatial_scale_factor}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters",
        f"- written {datetime.date.today().isoformat()} by tinyae.train", "",
        "## Validation metrics (EMA weights, last evaluation)", "",
    ]
    if m:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in sorted(m.items())]
    else:
        lines.append("no evaluation was run (no --val folder)")
    lines += ["", "## Use", "", "```python", "from tinyae import AutoencoderTiny",
              "model = AutoencoderTiny.from_pretrained(\"final\")  # this folder", "```", "",
              "## Files", ""] + [f"- `{f}`" for f in files] + ["", "## Command", "", "```", info["command"], "```", ""]
    return "\n".join(lines)
