"""Real TAEF2 / taesana weights against the independent reference implementation, and photo roundtrips."""

from __future__ import annotations

import pytest
import torch

import reference
from conftest import PHOTOS, TAEF2, TAESANA_ENCODER, load_photo, psnr
from tinyae import AutoencoderTiny


def _orig(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_taef2_architecture_inferred_from_tensors(taef2):
    cfg = taef2.config
    assert cfg.latent_channels == 32 and cfg.use_midblock_gn and cfg.encoder_stem_channels == ()
    assert taef2.spatial_scale_factor == 8 and not cfg.diffusers_compatible
    assert sum(p.numel() for p in taef2.encoder.parameters()) == 1_338_528
    assert sum(p.numel() for p in taef2.decoder.parameters()) == 1_338_499


@torch.no_grad()
def test_taef2_equals_reference(taef2, astronaut):
    x = astronaut[..., 128:384, 96:416]  # a non-square crop keeps the test quick
    z = taef2.encode(x).latents
    z_ref = reference.encoder_8x(_orig(TAEF2[0]), (x + 1) / 2)
    assert (z - z_ref).abs().max() <= 1e-5
    y = taef2.decode(z).sample
    y_ref = reference.decoder_8x(_orig(TAEF2[1]), z) * 2 - 1
    assert (y - y_ref).abs().max() <= 1e-5


@torch.no_grad()
def test_taesana_encoder_equals_reference():
    model = AutoencoderTiny.from_pretrained(TAESANA_ENCODER)
    assert model.decoder is None and model.spatial_scale_factor == 32
    assert model.config.encoder_stem_channels == (32, 64) and model.config.latent_channels == 32
    x = load_photo(PHOTOS[0], multiple=32)
    z = model.encode(x).latents
    assert z.shape == (1, 32, x.shape[2] // 32, x.shape[3] // 32)
    z_ref = reference.encoder_32x(_orig(TAESANA_ENCODER), (x + 1) / 2)
    assert (z - z_ref).abs().max() <= 1e-5


@torch.no_grad()
def test_taef2_roundtrips_astronaut_above_30db(taef2, astronaut):
    y = taef2.decode(taef2.encode(astronaut).latents).sample
    assert y.shape == astronaut.shape
    assert psnr(y, astronaut) >= 30.0  # about 31.2 dB


@torch.no_grad()
@pytest.mark.parametrize("photo", PHOTOS[1:], ids=lambda p: p.name)
def test_taef2_roundtrips_other_photos(taef2, photo):
    x = load_photo(photo)
    assert psnr(taef2.decode(taef2.encode(x).latents).sample, x) >= 25.0


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loading(dtype, astronaut):
    model = AutoencoderTiny.from_pretrained(TAEF2, torch_dtype=dtype)
    assert model.dtype == dtype
    x = astronaut[..., :256, :256]
    z = model.encode(x.to(dtype)).latents
    assert z.dtype == dtype
    y = model.decode(z).sample
    assert y.dtype == dtype and torch.isfinite(y).all()
    ref = AutoencoderTiny.from_pretrained(TAEF2)
    assert psnr(y.float(), ref.decode(ref.encode(x).latents).sample) >= 30.0
    # callers passing float32 get float32 back from a half model
    assert model.encode(x).latents.dtype == torch.float32
