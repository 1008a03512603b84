"""The OpenVINO backend (benchmark contestant): tinyae's ONNX export compiled by OpenVINO, same API and checks."""

from __future__ import annotations

import pytest
import torch

from tinyae import AutoencoderTiny
from tinyae.engine.backends import load_backend
from tinyae.engine.openvino import bf16_available
from tinyae.nets.variants import variant_config


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return AutoencoderTiny(**{**variant_config("taesd"), "encoder_block_out_channels": (16,) * 4,
                              "decoder_block_out_channels": (16,) * 4}).eval()


def test_openvino_fp32_equals_torch(small):
    ov = load_backend(small, "openvino", precision="fp32", threads=1)
    x = torch.rand(1, 3, 64, 48) * 2 - 1
    z = small.encode(x).latents
    assert (ov.encode(x).latents - z).abs().max() < 1e-4
    assert (ov.decode(z).sample - small.decode(z).sample).abs().max() < 1e-4
    assert ov.precision == "fp32" and "OpenVinoAutoencoder" in repr(ov)


def test_openvino_checks_inputs_and_precision(small):
    with pytest.raises(ValueError, match="precision must be one of"):
        load_backend(small, "openvino", precision="int4")
    if bf16_available():
        assert load_backend(small, "openvino", precision="bf16", threads=1).precision == "bf16"
    else:  # OpenVINO itself would fall back to f32 silently, and a benchmark would misname what it measured
        with pytest.raises(ValueError, match="OpenVINO computes bf16 only on CPUs with AVX512-BF16 or AMX"):
            load_backend(small, "openvino", precision="bf16", threads=1)
    ov = load_backend(small, "openvino", precision="fp32", threads=1)
    with pytest.raises(ValueError, match="multiples of 8"):
        ov.encode(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match="NaN"):
        ov.decode(torch.full((1, 4, 4, 4), float("nan")))
