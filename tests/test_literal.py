"""The literal layer lists in docs/variants.md are generated from the network definitions and match them."""

from __future__ import annotations

import re

import pytest
import torch.nn as nn

from tinyae import AutoencoderTiny
from tinyae.nets.literal import BEGIN, END, literal, variants_section
from tinyae.nets.variants import VARIANTS, variant_config

from conftest import ROOT


def test_docs_hold_the_generated_lists():
    text = (ROOT / "docs" / "variants.md").read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "run python -m tinyae.literal --write docs/variants.md"
    assert text[text.index(BEGIN): text.index(END) + len(END)] == variants_section(), \
        "docs/variants.md is stale: run python -m tinyae.literal --write docs/variants.md"


# An independent reading of the original script's vocabulary (not tinyae.blocks).
class _Block(nn.Module):
    def __init__(self, n_in, n_out, use_midblock_gn=False):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(n_in, n_out, 3, padding=1), nn.ReLU(), nn.Conv2d(n_out, n_out, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(n_out, n_out, 3, padding=1))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        if use_midblock_gn:
            self.pool = nn.Sequential(nn.Conv2d(n_in, 4 * n_in, 1, bias=False), nn.GroupNorm(4, 4 * n_in), nn.ReLU(),
                                      nn.Conv2d(4 * n_in, n_in, 1, bias=False))


def _conv(n_in, n_out, **kw):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


def _read(items: list[str]) -> list[nn.Module]:
    vocabulary = {"conv": _conv, "Block": _Block, "Clamp": nn.Identity, "nn": nn}
    return [eval(item, {"__builtins__": {}}, vocabulary) for item in items]  # noqa: S307 (our own generated text)


def _shapes(modules) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for m in modules for p in m.parameters()]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_literal_lists_build_the_same_networks(name):
    model = AutoencoderTiny(**variant_config(name))
    for part in ("encoder", "decoder"):
        net = getattr(model, part)
        items = literal(net)
        assert all(re.fullmatch(r"[\w.]+\(.*\)", item) for item in items)
        built = _read(items)
        assert _shapes(built) == _shapes(([net.clamp] if part == "decoder" else []) + list(net.layers)), part
