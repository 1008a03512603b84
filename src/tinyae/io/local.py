"""Local sources: a folder in diffusers layout, an original encoder/decoder pair, or one weights file."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from ..nets.config import TinyConfig
from .files import WeightsError, first_line
from .layouts import DIFFUSERS_WEIGHTS, WEIGHT_SUFFIXES


# ---------------------------------------------------------------------------------------------- local
def _read_config(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read config ({first_line(e)})") from None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path}: config is not a JSON object")
    try:
        TinyConfig.from_dict(cfg)
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{path}: bad config ({e})") from None
    return cfg


def _find_pair(names: Iterable[str], where: str = "") -> list[tuple[str, str]]:
    """Pick `<name>_encoder.<ext>` / `<name>_decoder.<ext>` from file names, preferring safetensors.

    Several different `<name>`s are ambiguous: WeightsError (pass the files as a pair instead).
    """
    rank = {s: i for i, s in enumerate(WEIGHT_SUFFIXES)}
    found: dict[str, dict[str, tuple[int, str]]] = defaultdict(dict)
    for n in names:
        if "/" in n:
            continue
        stem, suffix = os.path.splitext(n)
        for part in ("encoder", "decoder"):
            if suffix in rank and stem.endswith("_" + part):
                best = found[stem[: -len(part) - 1]]
                if part not in best or rank[suffix] < best[part][0]:
                    best[part] = (rank[suffix], n)
    if len(found) > 1:
        raise WeightsError(f"{where}: weights of several models ({', '.join(sorted(found))}); pass the files as "
                           "a pair (encoder_path, decoder_path) instead")
    if not found:
        return []
    best = next(iter(found.values()))
    return [(best[p][1], p) for p in ("encoder", "decoder") if p in best]


def _local_files(path: Path, subfolder: str | None) -> dict[str, Any]:
    if subfolder:
        path = path / subfolder
    if path.is_file():
        return {"config": None, "files": [(str(path), None)]}
    if (path / "config.json").exists():
        for name in DIFFUSERS_WEIGHTS:
            if (path / name).exists():
                return {"config": _read_config(path / "config.json"), "files": [(str(path / name), None)]}
        raise WeightsError(f"{path}: config.json found but no {' or '.join(DIFFUSERS_WEIGHTS)}")
    names = sorted(os.listdir(path))
    pair = _find_pair(names, str(path))
    if pair:
        return {"config": None, "files": [(str(path / f), part) for f, part in pair]}
    singles = [n for n in names if n.endswith(WEIGHT_SUFFIXES)]
    if len(singles) == 1:
        return {"config": None, "files": [(str(path / singles[0]), None)]}
    raise WeightsError(f"{path}: no weights found (expected diffusers layout, <name>_encoder/<name>_decoder "
                       f"files, or one weights file; found {names[:8]})")

