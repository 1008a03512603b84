"""Exact tiled encode/decode (placeholder until the tiling engine lands)."""

from __future__ import annotations

from typing import Any


def check_options(model: Any, options: dict[str, Any]) -> dict[str, Any]:
    raise NotImplementedError("exact tiling is not implemented yet; decode untiled (or with enable_slicing)")


def tiled_apply(net: Any, x: Any, **options: Any) -> Any:
    raise NotImplementedError("exact tiling is not implemented yet")
