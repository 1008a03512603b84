"""diffusers.AutoencoderTiny is the oracle for the configurations it can express."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderTiny as DiffusersTiny

from tinyae import AutoencoderTiny

CONFIGS = {
    "default": {},
    "16ch": {"latent_channels": 16},
    "small": {"encoder_block_out_channels": (32, 32), "decoder_block_out_channels": (32, 32),
              "num_encoder_blocks": (1, 1), "num_decoder_blocks": (1, 1)},
}


def _pair(cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    ours = AutoencoderTiny(**cfg).eval()
    # scale the weights up a bit so that every layer matters (random init makes a near-constant decoder)
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(1.5)
    theirs = DiffusersTiny(**cfg).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def _image(cfg: dict, size: int = 64, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(batch, 3, size, size + 16, generator=g) * 2 - 1


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_encode_decode_forward_match_diffusers(name):
    cfg = CONFIGS[name]
    ours, theirs = _pair(cfg)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    x = _image(cfg)
    z, z_d = ours.encode(x).latents, theirs.encode(x).latents
    assert z.shape == z_d.shape and (z - z_d).abs().max() <= 1e-5
    y, y_d = ours.decode(z).sample, theirs.decode(z).sample
    assert y.shape == y_d.shape and (y - y_d).abs().max() <= 1e-5
    f, f_d = ours(x).sample, theirs(x).sample
    assert (f - f_d).abs().max() <= 1e-5
    # tuple outputs and slicing match too
    ours.enable_slicing()
    assert (ours.encode(x, return_dict=False)[0] - z).abs().max() <= 1e-6  # per-image batches: same math
    assert (ours.decode(z, return_dict=False)[0] - y).abs().max() <= 1e-6


@pytest.mark.parametrize("name", CONFIGS)
def test_config_matches_diffusers(name):
    ours, theirs = _pair(CONFIGS[name])
    for key, value in theirs.config.items():
        if key.startswith("_"):
            continue
        mine = ours.config[key]
        assert (list(mine) if isinstance(mine, tuple) else mine) == \
               (list(value) if isinstance(value, tuple) else value), key
    assert ours.config.block_out_channels == tuple(theirs.config.block_out_channels)
    json.dumps(ours.config.to_dict())


@pytest.mark.parametrize("name", CONFIGS)
@torch.no_grad()
def test_save_pretrained_both_ways(name, tmp_path):
    ours, theirs = _pair(CONFIGS[name])
    x = _image(CONFIGS[name], batch=1)
    ours.save_pretrained(tmp_path / "ours")
    loaded_d = DiffusersTiny.from_pretrained(tmp_path / "ours")  # diffusers loads strictly by default
    assert torch.equal(loaded_d.decode(ours.encode(x).latents).sample, ours.decode(ours.encode(x).latents).sample)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = AutoencoderTiny.from_pretrained(tmp_path / "theirs")
    assert torch.equal(loaded.encode(x).latents, theirs.encode(x).latents)
    assert torch.equal(loaded.decode(theirs.encode(x).latents).sample, theirs.decode(theirs.encode(x).latents).sample)
    # and the same through the legacy .bin format
    theirs.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert torch.equal(AutoencoderTiny.from_pretrained(tmp_path / "bin").encode(x).latents,
                       theirs.encode(x).latents)


def test_gradient_checkpointing_computes_the_same_function():
    ours, theirs = _pair(CONFIGS["small"])
    x = _image(CONFIGS["small"], batch=1)
    plain = ours(x).sample
    ours.enable_gradient_checkpointing()
    assert ours.is_gradient_checkpointing
    xg = x.clone().requires_grad_(True)
    ckpt = ours.decode(ours.encode(xg).latents).sample
    ref = ours.decode(ours.encode(x).latents).sample
    assert (ckpt - ref).abs().max() <= 1e-6
    ckpt.sum().backward()
    xr = x.clone().requires_grad_(True)
    ours.disable_gradient_checkpointing()
    ours.decode(ours.encode(xr).latents).sample.sum().backward()
    assert torch.allclose(xg.grad, xr.grad, atol=1e-6)
    assert plain.shape == x.shape


def test_diffusers_gradient_checkpointing_differs():
    """Why ours is different: diffusers' checkpointed encoder skips the [-1, 1] -> [0, 1] input rescale."""
    ours, theirs = _pair(CONFIGS["small"])
    x = _image(CONFIGS["small"], batch=1)
    theirs.enable_gradient_checkpointing()
    theirs.train()
    with torch.enable_grad():
        z_ckpt = theirs.encode(x.requires_grad_(True)).latents
    with torch.no_grad():
        z = theirs.encode(x).latents
    assert (z_ckpt - z).abs().max() > 1e-3
