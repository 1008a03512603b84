"""Key layouts (original, diffusers, ComfyUI) and the architecture read off the tensors (`infer_config`), and `build`:
a strictly loaded model of a given class from diffusers-keyed tensors."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

import torch

from ..nets.config import DEFAULTS, IMAGE_CHANNELS, TinyConfig
from ..nets.model import AutoencoderTinyBase
from .files import FLOAT_DTYPES, WeightsError


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
COMFY_PREFIXES = {"taesd_encoder.": "encoder", "taesd_decoder.": "decoder"}
COMFY_SCALARS = ("vae_scale", "vae_shift")


# ---------------------------------------------------------------------------------------------- key layouts
_NUM = re.compile(r"^(\d+)\.(.+)$")


def _half_to_diffusers(sd: dict[str, torch.Tensor], part: str, original: bool) -> dict[str, torch.Tensor]:
    """Keys `N.rest` of one half -> `part.layers.M.rest`; the original decoder counts its Clamp as layer 0."""
    out = {}
    for k, v in sd.items():
        m = _NUM.match(k)
        if not m:
            raise WeightsError(f"unexpected tensor {k!r} in the {part}")
        idx = int(m.group(1)) - (1 if part == "decoder" and original else 0)
        if idx < 0:
            raise WeightsError(f"unexpected tensor {k!r} in the {part}")
        out[f"{part}.layers.{idx}.{m.group(2)}"] = v
    return out


def _guess_half(sd: dict[str, torch.Tensor]) -> str:
    """An original-layout half: the encoder's first conv is layer 0; the decoder's layer 0 is its (empty) Clamp."""
    return "encoder" if any(k.startswith("0.") for k in sd) else "decoder"


def to_diffusers_keys(sd: dict[str, torch.Tensor], part: str | None = None) -> dict[str, torch.Tensor]:
    """Any known layout -> diffusers' keys (`encoder.layers.N...`, `decoder.layers.N...`).

    `part` forces which half an original-layout file is ("encoder"/"decoder"); otherwise it is read from the keys.
    ComfyUI's `vae_scale`/`vae_shift` scalars are dropped (tinyae keeps latents raw; see docs/formats.md).
    """
    sd = {k: v for k, v in sd.items() if k not in COMFY_SCALARS}
    for prefix in ("first_stage_model.", "vae.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    if any(k.startswith(("encoder.layers.", "decoder.layers.")) for k in sd):
        bad = [k for k in sd if not k.startswith(("encoder.layers.", "decoder.layers."))]
        if bad:
            raise WeightsError(f"unexpected tensors {bad[:5]}")
        return dict(sd)
    if any(k.startswith(tuple(COMFY_PREFIXES)) for k in sd):
        out: dict[str, torch.Tensor] = {}
        for prefix, half in COMFY_PREFIXES.items():
            sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            out.update(_half_to_diffusers(sub, half, original=True))
        bad = [k for k in sd if not k.startswith(tuple(COMFY_PREFIXES))]
        if bad:
            raise WeightsError(f"unexpected tensors {bad[:5]}")
        return out
    if any(k.startswith(("encoder.", "decoder.")) for k in sd):  # original Sequential under a module name
        out = {}
        for half in ("encoder", "decoder"):
            sub = {k[len(half) + 1:]: v for k, v in sd.items() if k.startswith(half + ".")}
            out.update(_half_to_diffusers(sub, half, original=True))
        bad = [k for k in sd if not k.startswith(("encoder.", "decoder."))]
        if bad:
            raise WeightsError(f"unexpected tensors {bad[:5]}")
        return out
    return _half_to_diffusers(sd, part or _guess_half(sd), original=True)


def to_original_keys(sd: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """diffusers' keys of one half -> the original script's Sequential keys."""
    prefix, shift = f"{part}.layers.", (1 if part == "decoder" else 0)
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            idx, rest = k[len(prefix):].split(".", 1)
            out[f"{int(idx) + shift}.{rest}"] = v
    return out


# ---------------------------------------------------------------------------------------------- architecture
def _layers(sd: dict[str, torch.Tensor], part: str) -> dict[int, dict[str, torch.Tensor]]:
    layers: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    prefix = f"{part}.layers."
    for k, v in sd.items():
        if k.startswith(prefix):
            m = _NUM.match(k[len(prefix):])
            if not m:
                raise WeightsError(f"unexpected tensor {k!r} (expected {prefix}<number>.<name>)")
            layers[int(m.group(1))][m.group(2)] = v
    return dict(layers)


def _conv_shape(entry: dict[str, torch.Tensor], what: str) -> tuple[int, int]:
    w = entry.get("weight")
    if w is None or w.dim() != 4:
        raise WeightsError(f"cannot read the architecture: {what} is not a convolution")
    return int(w.shape[1]), int(w.shape[0])


def infer_config(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """AutoencoderTiny parameters (plus has_encoder/has_decoder) read off diffusers-keyed tensors."""
    enc, dec = _layers(sd, "encoder"), _layers(sd, "decoder")
    if not enc and not dec:
        raise WeightsError("no encoder or decoder tensors found")
    p: dict[str, Any] = {"has_encoder": bool(enc), "has_decoder": bool(dec)}
    midblock = set()
    if enc:
        idx = sorted(enc)
        stem, i = [], 0
        # leading plain convs: one conv directly followed by a block = standard; convs with gaps (ReLUs) = stem
        while i < len(idx) and "conv.0.weight" not in enc[idx[i]]:
            stem.append(idx[i])
            i += 1
        if not stem:
            raise WeightsError("cannot read the architecture: the encoder does not start with a convolution")
        n_in = _conv_shape(enc[stem[0]], f"encoder layer {stem[0]}")[0]
        if stem[0] > 0:  # F16: a parameter-free PixelUnshuffle before the first conv (and a ReLU after it)
            if stem[0] != 1 or len(stem) != 1 or (i < len(idx) and idx[i] != 3):
                raise WeightsError("cannot read the architecture: the encoder does not start with a convolution")
            p["in_channels"], p["patch_size"] = _patchified(n_in, "encoder's first convolution")
        else:
            p["in_channels"], p["patch_size"] = n_in, 1
        if len(stem) > 1 or (i < len(idx) and idx[i] != stem[0] + 1 and stem[0] == 0):
            p["encoder_stem_channels"] = tuple(_conv_shape(enc[s], f"encoder layer {s}")[1] for s in stem)
        channels, counts = [], []
        for j in idx[i:-1]:
            e = enc[j]
            if "conv.0.weight" in e:
                if not counts:
                    channels.append(int(e["conv.0.weight"].shape[0]))
                    counts.append(0)
                counts[-1] += 1
                if "pool.0.weight" in e:
                    midblock.add(("encoder", len(counts) - 1))
            else:  # stride-2 conv opening a new stage
                channels.append(_conv_shape(e, f"encoder layer {j}")[1])
                counts.append(0)
        p["encoder_block_out_channels"], p["num_encoder_blocks"] = tuple(channels), tuple(counts)
        p["latent_channels"] = _conv_shape(enc[idx[-1]], f"encoder layer {idx[-1]}")[1]
        if midblock and midblock != {("encoder", len(counts) - 1)}:
            raise WeightsError("unsupported architecture: GroupNorm branch outside the encoder's last stage")
    if dec:
        idx = sorted(dec)
        lat, ch0 = _conv_shape(dec[idx[0]], "decoder layer 0")
        if "latent_channels" in p and p["latent_channels"] != lat:
            raise WeightsError(f"encoder and decoder disagree: {p['latent_channels']} vs {lat} latent channels")
        p["latent_channels"] = lat
        channels, counts = [ch0], [0]
        for j in idx[1:-1]:
            e = dec[j]
            if "conv.0.weight" in e:
                counts[-1] += 1
                if "pool.0.weight" in e:
                    midblock.add(("decoder", len(counts) - 1))
            else:  # conv after an upsample: opens the next stage
                channels.append(_conv_shape(e, f"decoder layer {j}")[1])
                counts.append(0)
        p["decoder_block_out_channels"], p["num_decoder_blocks"] = tuple(channels), tuple(counts)
        n_out = _conv_shape(dec[idx[-1]], f"decoder layer {idx[-1]}")[1]
        out, patch = (n_out, 1) if n_out in IMAGE_CHANNELS else _patchified(n_out, "decoder's last convolution")
        if p.setdefault("patch_size", patch) != patch or p.setdefault("in_channels", out) != out:
            raise WeightsError(f"encoder and decoder disagree: {p['in_channels']} image channels in "
                               f"{p['patch_size']}x{p['patch_size']} patches vs {out} in {patch}x{patch}")
        p["out_channels"] = out
        dec_mid = {m for m in midblock if m[0] == "decoder"}
        if dec_mid and dec_mid != {("decoder", 0)}:
            raise WeightsError("unsupported architecture: GroupNorm branch outside the decoder's first stage")
    p["use_midblock_gn"] = bool(midblock)
    p.setdefault("out_channels", p.get("in_channels"))
    return p


def _patchified(channels: int, what: str) -> tuple[int, int]:
    """(image channels, patch size) of a convolution side with image_channels * patch**2 channels (F16: 12 or 16)."""
    for image in IMAGE_CHANNELS:
        patch = math.isqrt(channels // image)
        if patch > 1 and image * patch * patch == channels:
            return image, patch
    raise WeightsError(f"cannot read the architecture: the {what} has {channels} channels, not 3 or 4 image "
                       "channels (RGB, RGBA) in square patches")


def _describe_mismatch(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> str | None:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(sd)) if own[k].shape != sd[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensor(s), e.g. {missing[:3]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
    if shapes:
        parts.append(f"{len(shapes)} wrong shape(s), e.g. {shapes[:2]}")
    return "; ".join(parts) or None


def build(sd: dict[str, torch.Tensor], config: dict[str, Any] | None = None, source: str = "weights",
          model_class: type[AutoencoderTinyBase] | None = None) -> AutoencoderTinyBase:
    """A model from diffusers-keyed tensors: architecture from `config` if given, else inferred; strict load.
    `model_class`: the class to build (default the bare network; tinyae.AutoencoderTiny passes itself)."""
    model_class = model_class or AutoencoderTinyBase

    try:
        inferred = infer_config(sd)
    except WeightsError as e:
        raise WeightsError(f"{source}: {e}") from None
    has = {"has_encoder": inferred.pop("has_encoder"), "has_decoder": inferred.pop("has_decoder")}
    if has["has_encoder"]:
        inferred.setdefault("encoder_stem_channels", ())
    try:
        params = TinyConfig.from_dict(config if config is not None else {**DEFAULTS, **inferred}).init_kwargs()
    except ValueError as e:
        raise WeightsError(f"{source}: config: {e}") from None
    # The architecture the tensors imply must be the config's before anything is allocated: a config asking for
    # 100000 channels must not build a 100000-channel network to find out.
    differ = [f"{k} {params[k]!r} (the tensors have {v!r})" for k, v in inferred.items() if params.get(k) != v]
    if differ:
        raise WeightsError(f"{source}: the config does not match the tensors (wrong shapes): "
                           f"{'; '.join(differ[:3])}")
    try:
        model = model_class(**params, **has)
    except ValueError as e:
        raise WeightsError(f"{source}: {e}") from None
    problem = _describe_mismatch(model, sd)
    if problem:
        raise WeightsError(f"{source}: tensors do not fit the architecture: {problem}")
    for k, v in sd.items():
        if v.dtype not in FLOAT_DTYPES or v.layout != torch.strided:
            raise WeightsError(f"{source}: tensor {k} is {v.dtype} {v.layout}, expected dense floating point")
        if not torch.isfinite(v).all():
            raise WeightsError(f"{source}: tensor {k} holds NaN or infinite values")
    model.load_state_dict(sd, strict=True)  # float32 model; from_pretrained(torch_dtype=...) casts after
    return model.eval()

