"""Weight formats, hub downloads and integrity, kept apart from the model.

Accepted sources (`load`):
- a variant name ("taesd", "taesdxl", "taesd3", "taef1", "taef2", "taesana", or an alias): downloaded from its hub
  repository (huggingface_hub cache, offline mode, HF_ENDPOINT), pinned sha256 checked where known;
- a folder in diffusers layout (config.json + diffusion_pytorch_model.safetensors or .bin);
- a folder holding the original pair `<name>_encoder.<ext>` / `<name>_decoder.<ext>` (either may be absent);
- a pair of files `(encoder_path, decoder_path)` (either may be None);
- a single file: one half in the original layout, diffusers-keyed (`encoder.layers.N...`), or combined with
  ComfyUI's `taesd_encoder.` / `taesd_decoder.` prefixes;
- a hub repo id ("owner/name"): diffusers layout, an original pair, or one weights file; offline (HF_HUB_OFFLINE,
  local_files_only) or with the hub unreachable, from the cached snapshot. See docs/weights.md.

The architecture is inferred from the tensors (never from file names). Loading is strict: any missing, unexpected
or mis-shaped tensor, an unreadable file or a sha256 mismatch raises `WeightsError`, never a half-loaded model.
Pickled files are read with `torch.load(weights_only=True)`: nothing in a file is executed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from ..nets.config import DEFAULTS
from ..nets.model import AutoencoderTinyBase
from ..nets.variants import closest_names, get_variant, is_variant
from .files import WeightsError, check_sha256, first_line, read_tensors
from .hub import _repo_files, _variant_files
from .layouts import build, to_diffusers_keys
from .local import _local_files


# ---------------------------------------------------------------------------------------------- load/save
def load(source: Any, *, sha256: str | dict[str, str] | None = None, revision: str | None = None,
         cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None,
         subfolder: str | None = None, token: str | bool | None = None,
         model_class: type[AutoencoderTinyBase] | None = None, **ignored: Any) -> AutoencoderTinyBase:
    """Load a model of `model_class` (default the bare network, `tinyae.nets.model.AutoencoderTinyBase`;
    `tinyae.AutoencoderTiny.from_pretrained` passes tinyae.AutoencoderTiny) from any source (see the module
    docstring). Raises WeightsError.

    `sha256`: expected sha256 of a single file, or {file name: sha256} for several.
    Unknown keywords that diffusers' from_pretrained accepts (variant, use_safetensors, ...) are ignored.
    """
    hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
    if isinstance(source, (tuple, list)):
        if len(source) != 2 or all(s is None for s in source):
            raise WeightsError("a pair of files must be (encoder_path, decoder_path), one of them may be None")
        found = {"config": None, "files": [(str(s), p) for s, p in zip(source, ("encoder", "decoder"))
                                           if s is not None]}
        label = " + ".join(str(s) for s in source if s is not None)
    elif isinstance(source, (str, os.PathLike)) and Path(source).exists():
        found, label = _local_files(Path(source), subfolder), str(source)
    elif isinstance(source, str) and is_variant(source):
        v = get_variant(source)
        found, label = _variant_files(v, subfolder=subfolder, **hub), f"{v.name} ({v.repo_id})"
        if found["config"] is None:
            found["config"] = {**DEFAULTS, **v.config}
    elif isinstance(source, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith((".", "/")):
        found, label = _repo_files(source, subfolder=subfolder, **hub), source
    else:
        close = closest_names(str(source))
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise WeightsError(f"{source!r}: not a known variant, an existing file or folder, or a hub repo id.{hint}")

    sd: dict[str, torch.Tensor] = {}
    for path, part in found["files"]:
        expected = sha256.get(os.path.basename(path)) if isinstance(sha256, dict) else sha256
        check_sha256(path, expected)
        try:
            tensors = to_diffusers_keys(read_tensors(path), part)
        except WeightsError as e:
            msg = str(e)
            raise WeightsError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
        clash = set(tensors) & set(sd)
        if clash:
            raise WeightsError(f"{path}: tensors already given by another file, e.g. {sorted(clash)[:3]}")
        sd.update(tensors)
    try:
        return build(sd, found["config"], source=label, model_class=model_class)
    except WeightsError:
        raise
    except Exception as e:  # a tensor layout the checks above did not foresee: still one WeightsError
        raise WeightsError(f"{label}: cannot build a model from these tensors ({first_line(e)})") from None

