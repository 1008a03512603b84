"""The model configuration: diffusers' AutoencoderTiny parameters plus the options of the newer variants.

`TinyConfig` is read-only, answers both `config.latent_channels` and `config["latent_channels"]`, and is
JSON-serialisable, like diffusers' FrozenDict config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Iterator

# Constructor parameters, in diffusers' order with diffusers' defaults ...
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "encoder_block_out_channels": (64, 64, 64, 64),
    "decoder_block_out_channels": (64, 64, 64, 64),
    "act_fn": "relu",
    "upsample_fn": "nearest",
    "latent_channels": 4,
    "upsampling_scaling_factor": 2,
    "num_encoder_blocks": (1, 3, 3, 3),
    "num_decoder_blocks": (3, 3, 3, 1),
    "latent_magnitude": 3,
    "latent_shift": 0.5,
    "force_upcast": False,
    "scaling_factor": 1.0,
    "shift_factor": 0.0,
}
# ... then the options diffusers cannot express (taef2's GroupNorm branch, taesana's 32x encoder stem).
EXTRA_DEFAULTS: dict[str, Any] = {
    # GroupNorm "pool" branch in the blocks of the lowest-resolution stage (encoder's last, decoder's first).
    "use_midblock_gn": False,
    # Stride-2 conv + ReLU layers that replace the encoder's first conv (taesana: (32, 64) -> 32x downscale).
    "encoder_stem_channels": (),
    # F16 (taeqi2_1): PixelUnshuffle(patch_size), conv, ReLU open the encoder; the decoder's last conv makes
    # image_channels * patch_size**2 channels, then PixelShuffle(patch_size). 1 = no patchify (every other variant).
    "patch_size": 1,
}
DEFAULTS: dict[str, Any] = {**DIFFUSERS_DEFAULTS, **EXTRA_DEFAULTS}
# Values no weight tensor can confirm (activations and upsampling have no weights; the rest are scalars):
# taken from config.json as they are (validated, not checked against the tensors), which `tinyae info` says.
UNCHECKED_BY_TENSORS = ("act_fn", "upsample_fn", "upsampling_scaling_factor", "latent_magnitude", "latent_shift",
                        "force_upcast", "scaling_factor", "shift_factor")

IMAGE_CHANNELS = (3, 4)  # RGB, RGBA (straight alpha)
ACTIVATIONS = ("relu", "silu", "swish", "mish", "gelu")
UPSAMPLE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic")
_TUPLES = ("encoder_block_out_channels", "decoder_block_out_channels", "num_encoder_blocks",
           "num_decoder_blocks", "encoder_stem_channels")


def _positive_ints(name: str, value: Any, allow_zero: bool = False, allow_empty: bool = False) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of integers, got {value!r}") from None
    if not items and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    low = 0 if allow_zero else 1
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < low:
            raise ValueError(f"{name} must hold integers >= {low}, got {value!r}")
    return items


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check a full parameter dict; return it with tuples normalised. Raises ValueError naming the parameter."""
    p = dict(params)
    for name in ("in_channels", "out_channels", "latent_channels", "upsampling_scaling_factor"):
        v = p[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    for name in _TUPLES:
        p[name] = _positive_ints(name, p[name], allow_zero=name.startswith("num_"),
                                 allow_empty=name == "encoder_stem_channels")
    if len(p["encoder_block_out_channels"]) != len(p["num_encoder_blocks"]):
        raise ValueError("encoder_block_out_channels should have the same length as num_encoder_blocks")
    if len(p["decoder_block_out_channels"]) != len(p["num_decoder_blocks"]):
        raise ValueError("decoder_block_out_channels should have the same length as num_decoder_blocks")
    if p["encoder_stem_channels"] and p["encoder_stem_channels"][-1] != p["encoder_block_out_channels"][0]:
        raise ValueError("encoder_stem_channels must end with encoder_block_out_channels[0]")
    for name in ("in_channels", "out_channels"):
        if p[name] not in IMAGE_CHANNELS:
            raise ValueError(f"{name} (image channels) must be 3 (RGB) or 4 (RGBA, straight alpha), got {p[name]!r}")
    if p["in_channels"] != p["out_channels"]:
        raise ValueError(f"in_channels and out_channels (the image channels) must agree, got {p['in_channels']} "
                         f"and {p['out_channels']}")
    v = p["patch_size"]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"patch_size must be a positive integer, got {v!r}")
    if v > 1 and p["encoder_stem_channels"]:
        raise ValueError("patch_size > 1 (F16 patchify) and encoder_stem_channels (F32 stem) exclude each other")
    if p["act_fn"] not in ACTIVATIONS:
        raise ValueError(f"act_fn must be one of {ACTIVATIONS}, got {p['act_fn']!r}")
    if p["upsample_fn"] not in UPSAMPLE_MODES:
        raise ValueError(f"upsample_fn must be one of {UPSAMPLE_MODES}, got {p['upsample_fn']!r}")
    for name in ("latent_magnitude", "scaling_factor"):
        v = p[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    for name in ("latent_shift", "shift_factor"):
        v = p[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    for name in ("force_upcast", "use_midblock_gn"):
        if not isinstance(p[name], bool):
            raise ValueError(f"{name} must be a bool, got {p[name]!r}")
    return p


class TinyConfig(Mapping):
    """Read-only model configuration with attribute access, JSON-serialisable.

    Besides the constructor parameters it carries `block_out_channels` (= decoder_block_out_channels), which
    diffusers pipelines read to derive their vae_scale_factor, and `_class_name`.
    """

    __slots__ = ("_data",)

    def __init__(self, **params: Any):
        data = validate({**DEFAULTS, **params})
        data["block_out_channels"] = data["decoder_block_out_channels"]
        object.__setattr__(self, "_data", data)

    # Mapping protocol
    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"config has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the config is read-only; build a new model with the changed parameters")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("the config is read-only")

    def __repr__(self) -> str:
        return f"TinyConfig({self.to_json_string()})"

    def __reduce__(self):
        return (_rebuild, (self.init_kwargs(),))

    @property
    def diffusers_compatible(self) -> bool:
        """True when diffusers' AutoencoderTiny can express this architecture (and so load what we save)."""
        return (not self["use_midblock_gn"] and not self["encoder_stem_channels"] and self["patch_size"] == 1
                and len(set(self["encoder_block_out_channels"])) == 1
                and len(set(self["decoder_block_out_channels"])) == 1)

    @property
    def spatial_scale_factor(self) -> int:
        """Image pixels per latent pixel along one side (8 for taesd..taef2, 16 for taeqi2_1, 32 for taesana)."""
        return 2 ** (len(self["num_encoder_blocks"]) - 1 + len(self["encoder_stem_channels"])) * self["patch_size"]

    @property
    def image_channels(self) -> int:
        """3 (RGB) or 4 (RGBA, straight alpha): in_channels = out_channels."""
        return self["in_channels"]

    def init_kwargs(self) -> dict[str, Any]:
        """The constructor parameters (no derived fields)."""
        return {k: self._data[k] for k in DEFAULTS}

    def diffusers_kwargs(self) -> dict[str, Any]:
        """The parameters diffusers' AutoencoderTiny takes (tinyae's own, EXTRA_DEFAULTS, left out)."""
        return {k: self._data[k] for k in DIFFUSERS_DEFAULTS}

    def to_dict(self) -> dict[str, Any]:
        out = {"_class_name": "AutoencoderTiny"}
        for k, v in self._data.items():
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TinyConfig":
        """Build from a diffusers or tinyae config.json dict; private (`_...`) and derived keys are ignored."""
        known = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in DEFAULTS}
        return cls(**known)


def _rebuild(kwargs: dict[str, Any]) -> TinyConfig:
    return TinyConfig(**kwargs)
