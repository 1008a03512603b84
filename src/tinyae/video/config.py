"""`VideoConfig`: the architecture and frame handling of one video TAE, read-only and JSON-serialisable."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .variants import FrameRule, VideoVariant

_FLAGS = ("encoder_time_downscale", "decoder_time_upscale", "decoder_space_upscale")


@dataclass(frozen=True)
class VideoConfig:
    """latent_channels, patch_size (pixel (un)shuffle), per-stage temporal/spatial flags, decoder kind, frame rule.

    Answers both `config.latent_channels` and `config["latent_channels"]`, like diffusers' FrozenDict config.
    """

    latent_channels: int = 16
    patch_size: int = 1
    encoder_time_downscale: tuple[bool, bool, bool] = (True, True, False)
    decoder_time_upscale: tuple[bool, bool, bool] = (False, True, True)
    decoder_space_upscale: tuple[bool, bool, bool] = (True, True, True)
    decoder: str = "base"  # "base" | "super"
    frames: FrameRule = field(default_factory=FrameRule)
    variant: str | None = None  # registry name, when known

    def __post_init__(self) -> None:
        for name in ("latent_channels", "patch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in _FLAGS:
            v = tuple(getattr(self, name))
            if name == "decoder_time_upscale" and len(v) == 2:  # the original's two-stage form: no first stage
                v = (False, *v)
            if len(v) != 3 or not all(isinstance(b, bool) for b in v):
                raise ValueError(f"{name} must be three booleans (one per stage), got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        if self.decoder not in ("base", "super"):
            raise ValueError(f"decoder must be 'base' or 'super', got {self.decoder!r}")
        if self.decoder == "super" and not all(self.decoder_space_upscale):
            raise ValueError("the super decoder upscales by pixel shuffle and cannot skip spatial upscaling")

    @classmethod
    def of_variant(cls, v: VideoVariant, **changes: Any) -> "VideoConfig":
        return cls(v.latent_channels, v.patch_size, v.encoder_time_downscale, v.decoder_time_upscale,
                   decoder=v.decoder, frames=v.frames, variant=v.name).replace(**changes)

    def replace(self, **changes: Any) -> "VideoConfig":
        return dataclasses.replace(self, **changes) if changes else self

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    @property
    def time_factor(self) -> int:
        """Frames per latent of the decoder (4 or 8; less with temporal upscaling skipped)."""
        return 2 ** sum(self.decoder_time_upscale)

    @property
    def encoder_time_factor(self) -> int:
        return 2 ** sum(self.encoder_time_downscale)

    @property
    def space_factor(self) -> int:
        """Decoded pixels per latent pixel along one side (less with spatial upscaling skipped)."""
        return 2 ** sum(self.decoder_space_upscale) * self.patch_size

    @property
    def encoder_space_factor(self) -> int:
        return 8 * self.patch_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return {"_class_name": "AutoencoderTinyVideo", **d}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VideoConfig":
        """From a config.json dict; private (`_...`) keys ignored, unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if not k.startswith("_") and k not in names)
        if unknown:
            raise ValueError(f"unknown video config keys: {unknown}")
        kw = {k: v for k, v in data.items() if k in names}
        for k in _FLAGS:
            if k in kw:
                kw[k] = tuple(kw[k])
        if isinstance(kw.get("frames"), Mapping):
            kw["frames"] = FrameRule(**kw["frames"])
        return cls(**kw)
