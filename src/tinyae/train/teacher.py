"""The teacher: what gives the target latents (and, where it can, the reference decode) in the TAE's latent space.

Three kinds of source:
- a diffusers VAE (folder or hub id) loaded with the class its config.json names: AutoencoderKL (SD1/2, SDXL, SD3,
  FLUX.1 and any fine-tune), AutoencoderKLFlux2 (FLUX.2), AutoencoderDC (Sana's DC-AE), AutoencoderKLQwenImage;
  its raw latents are converted to the diffusion latents a TAE consumes (`tinyae.latents.from_vae_latents`);
- any tinyae source (variant, folder, file, ENCODER,DECODER pair): its latents already are TAE latents;
- `latents:DIR`: precomputed teacher latents, one file per training image with the image's stem
  (`tinyae encode` writes them: `<stem>.safetensors` or `<stem>.latent.png`).

The convention: explicit `scaling_factor`/`shift_factor` win, then the registry `family`, then the VAE's own config
(what its pipelines apply); FLUX.2 uses its batch-norm statistics and Qwen-Image its per-channel latents_mean/std.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

DIFFUSERS_VAES = ("AutoencoderKL", "AutoencoderKLFlux2", "AutoencoderDC", "AutoencoderKLQwenImage")
LATENTS_PREFIX = "latents:"


class TeacherError(ValueError):
    """A teacher that cannot be loaded or does not fit the student."""


class Teacher:
    """Images (B, 3, H, W) in [-1, 1] -> TAE latents (B, C, H/f, W/f), float32, no gradients; and back if it can."""

    kind = "tinyae"

    def __init__(self, model: Any, convention: dict[str, Any], latent_channels: int, scale_factor: int,
                 source: str):
        self.model, self.convention, self.source = model, convention, source
        self.latent_channels, self.scale_factor = latent_channels, scale_factor

    can_encode = True

    @property
    def can_decode(self) -> bool:
        return getattr(self.model, "decoder", None) is not None

    def to(self, device: torch.device) -> "Teacher":
        if self.model is not None:
            self.model = self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model.encode(x).latents.float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z).sample.float()


class DiffusersTeacher(Teacher):
    kind = "diffusers"

    def __init__(self, model: Any, convention: dict[str, Any], latent_channels: int, scale_factor: int,
                 source: str, sample: bool):
        super().__init__(model, convention, latent_channels, scale_factor, source)
        self.sample, self.cls = sample, type(model).__name__

    can_decode = True

    def _flux2(self) -> Any:
        """The registry's FLUX.2 family with this VAE's channel count (a FLUX.2-style VAE of another width)."""
        from dataclasses import replace

        from ..variants import FAMILIES

        return replace(FAMILIES["flux2"], latent_channels=self.latent_channels)

    def _to_tae(self, z: torch.Tensor) -> torch.Tensor:
        c = self.convention
        if c["kind"] == "flux2":
            from ..latents import from_vae_latents

            bn = self.model.bn
            return from_vae_latents(z, self._flux2(), bn_mean=bn.running_mean, bn_var=bn.running_var,
                                    bn_eps=c["bn_eps"])
        if c["kind"] == "qwen":
            mean, std = (torch.tensor(c[k], device=z.device).view(1, -1, 1, 1) for k in ("mean", "std"))
            return (z - mean) / std
        return (z - c["shift_factor"]) * c["scaling_factor"]

    def _to_vae(self, z: torch.Tensor) -> torch.Tensor:
        c = self.convention
        if c["kind"] == "flux2":
            from ..latents import to_vae_latents

            bn = self.model.bn
            return to_vae_latents(z, self._flux2(), bn_mean=bn.running_mean, bn_var=bn.running_var,
                                  bn_eps=c["bn_eps"])
        if c["kind"] == "qwen":
            mean, std = (torch.tensor(c[k], device=z.device).view(1, -1, 1, 1) for k in ("mean", "std"))
            return z * std + mean
        return z / c["scaling_factor"] + c["shift_factor"]

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        video = self.cls == "AutoencoderKLQwenImage"
        out = self.model.encode(x[:, :, None] if video else x)
        if hasattr(out, "latent_dist"):
            dist = out.latent_dist
            z = dist.sample(generator) if self.sample else dist.mode()
        else:  # AutoencoderDC: deterministic
            z = out.latent
        z = z[:, :, 0] if video else z
        return self._to_tae(z.float())

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        video = self.cls == "AutoencoderKLQwenImage"
        v = self._to_vae(z.float())
        y = self.model.decode(v[:, :, None] if video else v).sample
        return (y[:, :, 0] if video else y).float()


class LatentsTeacher(Teacher):
    """Precomputed latents: `latents_for(image_path)` reads the file with the image's stem."""

    kind = "latents"
    can_encode = False
    can_decode = False

    def __init__(self, folder: Path, convention: dict[str, Any], latent_channels: int, scale_factor: int):
        super().__init__(None, convention, latent_channels, scale_factor, f"{LATENTS_PREFIX}{folder}")
        self.files: dict[str, Path] = {}
        for p in sorted(folder.rglob("*")):
            if p.name.endswith((".safetensors", ".latent.png")):
                stem = p.name[: -len(".latent.png")] if p.name.endswith(".latent.png") else p.stem
                if stem in self.files:
                    raise TeacherError(f"{folder}: two latent files for {stem!r}: {self.files[stem]} and {p}")
                self.files[stem] = p

    def latents_for(self, image: str | Path) -> torch.Tensor:
        """The converted (C, h, w) latents of one training image."""
        from ..codec import load_latents

        stem = Path(image).stem
        if stem not in self.files:
            raise TeacherError(f"{image}: no precomputed latents named {stem}.safetensors or {stem}.latent.png in "
                               f"{self.source[len(LATENTS_PREFIX):]}")
        z = load_latents(self.files[stem]).latents.float()
        if z.shape[0] != self.latent_channels:
            raise TeacherError(f"{self.files[stem]}: {z.shape[0]} latent channels, expected {self.latent_channels}")
        c = self.convention
        return (z - c["shift_factor"]) * c["scaling_factor"]

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise TeacherError("precomputed latents come with the data, not from images")


def _affine(scaling: float | None, shift: float | None, family: str | None, default: tuple[float, float]
            ) -> dict[str, Any]:
    from ..latents import _family

    s, t = default
    if family is not None:
        fam = _family(family)
        if fam.packing == "flux2":
            raise TeacherError("--family flux2 needs the FLUX.2 VAE's batch-norm statistics: use an "
                               "AutoencoderKLFlux2 teacher (or explicit --scaling-factor/--shift-factor)")
        s, t = fam.scaling_factor, fam.shift_factor
    if scaling is not None or shift is not None:
        s, t = (1.0 if scaling is None else scaling), (0.0 if shift is None else shift)
    return {"kind": "affine", "family": family, "scaling_factor": float(s), "shift_factor": float(t)}


def _diffusers_config(source: str) -> dict[str, Any] | None:
    """config.json of a local folder, or None when `source` is no folder with one."""
    path = Path(source)
    for candidate in (path / "config.json", path / "vae" / "config.json"):
        if candidate.is_file():
            try:
                return {**json.loads(candidate.read_text()), "_folder": str(candidate.parent)}
            except (OSError, json.JSONDecodeError) as e:
                raise TeacherError(f"{candidate}: not a readable config.json ({e})") from None
    return None


def load_teacher(source: str, *, family: str | None = None, scaling_factor: float | None = None,
                 shift_factor: float | None = None, sample: bool = False) -> Teacher:
    """Load a teacher from a source string (see the module docstring). Raises TeacherError."""
    if source.startswith(LATENTS_PREFIX):
        folder = Path(source[len(LATENTS_PREFIX):])
        if not folder.is_dir():
            raise TeacherError(f"--teacher {source}: {folder} is not a folder")
        t = LatentsTeacher(folder, _affine(scaling_factor, shift_factor, family, (1.0, 0.0)), 0, 8)
        if not t.files:
            raise TeacherError(f"--teacher {source}: no .safetensors or .latent.png latent files in {folder}")
        from ..codec import load_latents

        first = load_latents(next(iter(t.files.values())))
        t.latent_channels = int(first.latents.shape[0])
        if first.size:
            t.scale_factor = max(8, round(first.size[0] / first.latents.shape[-1]))
        return t
    cfg = _diffusers_config(source)
    if cfg is None and re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not Path(source).exists():
        cfg = _hub_config(source)
    if cfg is not None and cfg.get("_class_name") in DIFFUSERS_VAES:
        return _load_diffusers(cfg, source, family, scaling_factor, shift_factor, sample)
    if cfg is not None and cfg.get("_class_name") not in (None, "AutoencoderTiny"):
        raise TeacherError(f"--teacher {source}: {cfg.get('_class_name')} is not a VAE class tinyae can distil "
                           f"({', '.join(DIFFUSERS_VAES)}, or a tinyae AutoencoderTiny)")
    from ..cli import model_source
    from ..model import AutoencoderTiny
    from ..weights import WeightsError

    try:
        model = AutoencoderTiny.from_pretrained(model_source(source)).float().eval()
    except WeightsError as e:
        raise TeacherError(f"--teacher {source}: {e}") from None
    if model.encoder is None:
        raise TeacherError(f"--teacher {source}: has no encoder, so it cannot give target latents")
    model.requires_grad_(False)
    conv = _affine(scaling_factor, shift_factor, family, (1.0, 0.0))
    return Teacher(model, conv, model.config.latent_channels, model.spatial_scale_factor, source)


def _hub_config(repo_id: str) -> dict[str, Any] | None:
    """config.json of a hub repository (or its vae/ subfolder) through tinyae's hub code, with the diffusers
    weights beside it in the cache when it names a diffusers VAE; None when the repository has no config.json or
    the hub cannot be reached (tinyae's loader then reports the problem)."""
    from ..weights import DIFFUSERS_WEIGHTS, WeightsError, _NotOnHub, hub_download

    for sub in (None, "vae"):
        try:
            path = Path(hub_download(repo_id, "config.json", subfolder=sub))
        except _NotOnHub:
            continue
        except WeightsError:
            return None
        cfg = json.loads(path.read_text())
        if cfg.get("_class_name") in DIFFUSERS_VAES:
            for name in DIFFUSERS_WEIGHTS:
                try:
                    hub_download(repo_id, name, subfolder=sub)
                    break
                except _NotOnHub:
                    continue
        return {**cfg, "_folder": str(path.parent)}
    return None


def _load_diffusers(cfg: dict[str, Any], source: str, family: str | None, scaling: float | None,
                    shift: float | None, sample: bool) -> Teacher:
    try:
        import diffusers
    except ImportError:
        raise TeacherError(f"--teacher {source}: a diffusers VAE needs diffusers: pip install 'tinyae[diffusers]'") \
            from None
    name = cfg["_class_name"]
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise TeacherError(f"--teacher {source}: this diffusers ({diffusers.__version__}) has no {name}")
    model = cls.from_pretrained(cfg["_folder"]).float().eval()
    model.requires_grad_(False)
    c = model.config
    if name == "AutoencoderKLFlux2":
        conv: dict[str, Any] = {"kind": "flux2", "family": "flux2", "bn_eps": float(c.batch_norm_eps)}
        channels, factor = int(c.latent_channels), 2 ** (len(c.block_out_channels) - 1)
    elif name == "AutoencoderKLQwenImage":
        conv = {"kind": "qwen", "family": None, "mean": list(map(float, c.latents_mean)),
                "std": list(map(float, c.latents_std))}
        channels, factor = int(c.z_dim), 2 ** len(c.temperal_downsample)
    elif name == "AutoencoderDC":
        conv = _affine(scaling, shift, family, (float(c.scaling_factor), 0.0))
        channels, factor = int(c.latent_channels), 2 ** (len(c.encoder_block_out_channels) - 1)
    else:
        default = (float(c.scaling_factor or 1.0), float(getattr(c, "shift_factor", None) or 0.0))
        conv = _affine(scaling, shift, family, default)
        channels, factor = int(c.latent_channels), 2 ** (len(c.block_out_channels) - 1)
    return DiffusersTeacher(model, conv, channels, factor, source, sample)
