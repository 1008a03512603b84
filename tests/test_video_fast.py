"""optimize() for the video TAEs: fused CPU layers equal the eager model (itself equal to the reference) in fp32,
parallel, streamed and tiled; bf16 close; the source model untouched."""

from __future__ import annotations

import pytest
import torch

from conftest import NARROW
from test_video import TOL
from tinyae.video.fast import FusedMemBlock, OptimizedAutoencoderTinyVideo, optimize_video

FAST_VARIANTS = ["taew2_1", "taehv1_5_super", "taeltx_2", "taeh3", "taecvx"]


def _video(m, frames, rows=2, seed=0):
    f = m.config.encoder_space_factor
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, rows * f, 2 * f, generator=g) * 2 - 1


@pytest.mark.parametrize("name", FAST_VARIANTS)
def test_optimized_fp32_equals_eager(name, models):
    m = models[name]
    fast = m.optimize("fp32")
    assert isinstance(fast, OptimizedAutoencoderTinyVideo) and fast.precision == "fp32"
    assert any(isinstance(layer, FusedMemBlock) for layer in fast.encoder)
    x = _video(m, 17 if name == "taeh3" else 9)
    with torch.no_grad():
        z = m.encode(x).latents
        y = m.decode(z).sample
        torch.testing.assert_close(fast.encode(x).latents, z, atol=TOL, rtol=0)
        torch.testing.assert_close(fast.decode(z).sample, y, atol=TOL, rtol=0)
        torch.testing.assert_close(fast.decode(z, parallel=False).sample, y, atol=TOL, rtol=0)
        enc = fast.stream_encoder()
        streamed = torch.cat([enc.push(x[:, :, k]) for k in range(x.shape[2])] + [enc.flush()], 2)
        torch.testing.assert_close(streamed, z, atol=TOL, rtol=0)
        fast.enable_tiling(1)
        torch.testing.assert_close(fast.decode(z).sample, y, atol=TOL, rtol=0)
        torch.testing.assert_close(fast.encode(x, parallel=False).latents, z, atol=TOL, rtol=0)
        torch.testing.assert_close(fast.preview(time=False).decode(z).sample, m.preview(time=False).decode(z).sample,
                                   atol=TOL, rtol=0)
    assert not m.use_tiling and type(m.encoder[0]).__name__ == "Conv2d"  # the source is unchanged


def test_bf16_is_close_and_returns_the_callers_dtype(models):
    m = models["taew2_1"]
    fast = optimize_video(m, NARROW)
    assert fast.precision == NARROW and fast.dtype == torch.float32
    x = _video(m, 5)
    with torch.no_grad():
        z, zb = m.encode(x).latents, fast.encode(x).latents
        y, yb = m.decode(z).sample, fast.decode(z).sample
    assert zb.dtype == yb.dtype == torch.float32
    assert (zb - z).abs().max() < 0.05 * z.abs().max() and (yb - y).abs().max() < 0.05


def test_optimized_saves_the_source_weights_and_refuses_other_models(models, tmp_path):
    from tinyae.video import AutoencoderTinyVideo

    m = models["taehv"]
    fast = m.optimize("fp32")
    assert fast.optimize("fp32").precision == "fp32"
    fast.save_pretrained(tmp_path / "f")
    again = AutoencoderTinyVideo.from_pretrained(tmp_path / "f")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), m.state_dict().values()))
    with pytest.raises(ValueError, match="expects a tinyae AutoencoderTinyVideo"):
        optimize_video(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="precision"):
        m.optimize("int4")
