"""The public contract of AutoencoderTiny beyond parity: outputs, latent scaling, dtypes, config."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyae import AutoencoderTiny, AutoencoderTinyOutput, DecoderOutput, TinyConfig, scale_latents, unscale_latents
from tinyae.nets.variants import variant_config


def test_outputs_index_like_tuples():
    z = torch.zeros(1, 4, 2, 2)
    out = AutoencoderTinyOutput(latents=z)
    assert out[0] is z and out["latents"] is z and out.latents is z and len(out) == 1
    (only,) = out
    assert only is z
    dec = DecoderOutput(sample=z)
    assert dec[0] is z and dec.to_tuple() == (z,)


@given(st.floats(-50, 50, allow_nan=False))
def test_scale_unscale_roundtrip_inside_the_range(v):
    x = torch.tensor([v])
    s = scale_latents(x)
    assert 0 <= float(s) <= 1
    if abs(v) <= 3:
        assert torch.allclose(unscale_latents(s), x, atol=1e-5)


def test_model_scale_latents_match_module_functions():
    m = AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                        num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1))
    x = torch.randn(2, 4, 3, 3) * 4
    assert torch.equal(m.scale_latents(x), scale_latents(x))
    assert torch.equal(m.unscale_latents(x), unscale_latents(x))


@settings(max_examples=20, deadline=None)
@given(c=st.sampled_from([4, 16, 32]), h=st.integers(1, 4), w=st.integers(1, 4), b=st.integers(1, 3))
def test_shapes_for_any_latent_size(c, h, w, b):
    torch.manual_seed(0)
    m = AutoencoderTiny(latent_channels=c, encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                        num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1)).eval()
    with torch.no_grad():
        y = m.decode(torch.randn(b, c, h, w)).sample
        assert y.shape == (b, 3, 4 * h, 4 * w)
        assert m.encode(y.clamp(-1, 1)).latents.shape == (b, c, h, w)


def test_config_json_and_pickle():
    cfg = TinyConfig(latent_channels=16)
    data = json.loads(cfg.to_json_string())
    assert data["latent_channels"] == 16 and data["block_out_channels"] == [64, 64, 64, 64]
    assert TinyConfig.from_dict(data) == cfg
    import pickle

    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert AutoencoderTiny.from_config(data).config == cfg


def test_dtype_device_and_to():
    m = AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                        num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1))
    assert m.dtype == torch.float32 and m.device.type == "cpu"
    m = m.to(torch.bfloat16)
    assert m.dtype == torch.bfloat16
    z = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    assert m.decode(z).sample.dtype == torch.float64  # the caller's dtype comes back


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_the_cpu_runs_channels_last_and_returns_contiguous(dtype):
    """Half precision runs in channels_last on the CPU (PyTorch's NCHW half kernels are a slow fallback where oneDNN
    has none): the same dtype arithmetic as NCHW, whatever the input's strides, returned contiguous."""
    torch.manual_seed(0)
    model = AutoencoderTiny(**variant_config("taesd")).eval().to(dtype)
    hwc = torch.rand(24, 40, 3) * 2 - 1  # a photo as read: HWC, permuted and cropped (a degenerate batch stride)
    x = hwc.permute(2, 0, 1)[None, :, :16, :24].to(dtype)
    with torch.no_grad():
        z = model.encode(x).latents
        y = model.decode(z).sample
        z_nchw = model.encoder(x.add(1).div(2).contiguous())  # the eager network itself, NCHW
    assert z.dtype == y.dtype == dtype and z.is_contiguous() and y.is_contiguous()
    assert (z.float() - z_nchw.float()).abs().max() <= 2e-2 * z_nchw.float().abs().max()
