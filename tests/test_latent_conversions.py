"""tinyae.latents: full-VAE <-> TAE latent conversions and FLUX packing, checked against diffusers' own code."""

from __future__ import annotations

import diffusers
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyae.data.latents import (from_vae_latents, pack_flux, pack_flux2, patchify_flux2, to_vae_latents, unpack_flux,
                            unpack_flux2, unpatchify_flux2)
from tinyae.nets.variants import FAMILIES

Flux = diffusers.FluxPipeline
Flux2 = diffusers.Flux2KleinPipeline

sides = st.integers(1, 5).map(lambda n: 2 * n)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), c=st.sampled_from([4, 16]), h=sides, w=sides)
def test_flux_pack_unpack_match_diffusers(b, c, h, w):
    z = torch.randn(b, c, h, w)
    tokens = pack_flux(z)
    assert torch.equal(tokens, Flux._pack_latents(z, b, c, h, w))
    assert torch.equal(unpack_flux(tokens, h, w), Flux._unpack_latents(tokens, h * 8, w * 8, 8))
    assert torch.equal(unpack_flux(tokens, h, w), z)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), c=st.sampled_from([8, 32]), h=sides, w=sides)
def test_flux2_patchify_pack_match_diffusers(b, c, h, w):
    z = torch.randn(b, c, h, w)
    p = patchify_flux2(z)
    assert torch.equal(p, Flux2._patchify_latents(z))
    assert torch.equal(unpatchify_flux2(p), Flux2._unpatchify_latents(p))
    assert torch.equal(unpatchify_flux2(p), z)
    tokens = pack_flux2(z)
    assert torch.equal(tokens, Flux2._pack_latents(p))
    ids = Flux2._prepare_latent_ids(p)
    ref = Flux2._unpatchify_latents(Flux2._unpack_latents_with_ids(tokens, ids, h // 2, w // 2))
    assert torch.equal(unpack_flux2(tokens, h, w), ref)


def test_square_grid_is_the_default_and_other_grids_need_sizes():
    z = torch.randn(1, 16, 4, 8)
    assert unpack_flux(pack_flux(torch.randn(1, 16, 6, 6))).shape == (1, 16, 6, 6)
    with pytest.raises(ValueError, match="square"):
        unpack_flux(pack_flux(z))
    with pytest.raises(ValueError, match="do not fit"):
        unpack_flux(pack_flux(z), 8, 8)
    with pytest.raises(ValueError, match="both"):
        unpack_flux2(pack_flux2(torch.randn(1, 32, 4, 4)), 4, None)
    with pytest.raises(ValueError, match="even"):
        pack_flux(torch.randn(1, 16, 3, 4))
    with pytest.raises(ValueError, match="3-D"):
        unpack_flux(torch.randn(1, 16, 4, 4))


@pytest.mark.parametrize("family,scale,shift", [("sd", 0.18215, 0.0), ("sdxl", 0.13025, 0.0),
                                                ("sd3", 1.5305, 0.0609), ("flux", 0.3611, 0.1159),
                                                ("sana", 0.41407, 0.0)])
def test_scaled_families_use_the_registry_constants(family, scale, shift):
    fam = FAMILIES[family]
    assert (fam.scaling_factor, fam.shift_factor) == (scale, shift)
    z = torch.randn(2, fam.latent_channels, 4, 6) * 3
    tae = from_vae_latents(z, family)
    torch.testing.assert_close(tae, (z - shift) * scale)
    torch.testing.assert_close(to_vae_latents(tae, family), z)


@settings(max_examples=20, deadline=None)
@given(family=st.sampled_from(["sd", "sdxl", "sd3", "flux", "taef1", "SD15"]), h=sides, w=sides,
       seed=st.integers(0, 2**16))
def test_round_trip_any_family(family, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    c = 4 if family.lower() in ("sd", "sdxl", "sd15") else 16
    z = torch.randn(1, c, h, w, generator=g) * 4
    torch.testing.assert_close(to_vae_latents(from_vae_latents(z, family), family), z, rtol=1e-5, atol=1e-5)


def test_flux2_conversion_is_diffusers_batch_norm_on_patchified_latents():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(128, eps=1e-4, affine=False, track_running_stats=True).eval()
    bn.running_mean.normal_(0, 0.5)
    bn.running_var.uniform_(0.5, 3.0)
    z = torch.randn(2, 32, 6, 8) * 2
    stats = dict(bn_mean=bn.running_mean, bn_var=bn.running_var, bn_eps=bn.eps)
    tae = from_vae_latents(z, "flux2", **stats)
    torch.testing.assert_close(tae, Flux2._unpatchify_latents(bn(Flux2._patchify_latents(z))))
    # to_vae_latents is what the FLUX.2 pipeline does before vae.decode: x * sqrt(var + eps) + mean, unpatchified
    p = Flux2._patchify_latents(tae)
    ref = Flux2._unpatchify_latents(p * torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
                                    + bn.running_mean.view(1, -1, 1, 1))
    torch.testing.assert_close(to_vae_latents(tae, "flux2", **stats), ref)
    torch.testing.assert_close(to_vae_latents(tae, "flux2", **stats), z, rtol=1e-5, atol=1e-5)


def test_flux2_needs_statistics_of_the_right_size():
    z = torch.randn(1, 32, 4, 4)
    with pytest.raises(ValueError, match="batch-norm statistics"):
        from_vae_latents(z, "flux2")
    with pytest.raises(ValueError, match="128 values"):
        from_vae_latents(z, "flux2", bn_mean=torch.zeros(32), bn_var=torch.ones(32))
    with pytest.raises(ValueError, match="non-negative"):
        to_vae_latents(z, "flux2", bn_mean=torch.zeros(128), bn_var=-torch.ones(128))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="unknown family"):
        from_vae_latents(torch.randn(1, 4, 4, 4), "sd9")
    with pytest.raises(ValueError, match="16 channels, got 4"):
        from_vae_latents(torch.randn(1, 4, 4, 4), "flux")
    with pytest.raises(ValueError, match="4-D"):
        to_vae_latents(torch.randn(4, 4, 4), "sd")
    with pytest.raises(ValueError, match="floating point"):
        from_vae_latents(torch.ones(1, 4, 4, 4, dtype=torch.int64), "sd")
    with pytest.raises(ValueError, match="family name"):
        from_vae_latents(torch.randn(1, 4, 4, 4), 3)


def test_taef2_encoder_speaks_the_normalised_flux2_space(taef2, astronaut):
    """TAEF2 consumes FLUX.2's batch-normalised latents: its encoder's output on a photo is about unit-scale and
    centred (raw FLUX.2 VAE latents are not normalised)."""
    with torch.no_grad():
        z = taef2.encode(astronaut).latents
    assert z.shape == (1, 32, 64, 64)
    assert abs(float(z.mean())) < 0.3 and 0.5 < float(z.std()) < 1.3
