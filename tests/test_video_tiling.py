"""Spatial row-band tiling of the video TAEs: parallel and streamed, tiled, equal the independent implementation
(tests/reference_video.py) within 1e-5 for every variant."""

from __future__ import annotations

import pytest
import torch

import reference_video as ref
from test_video import TOL, VARIANTS
from tinyae.video.execute import run_parallel
from tinyae.video.tiling import BandedFrameStream, plan_bands, row_sizes


def _frames(model, t, rows, seed=0):
    f = model.config.encoder_space_factor
    return torch.rand(1, t, 3, rows * f, 2 * f, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", VARIANTS)
def test_tiled_encode_and_decode_equal_the_reference(name, weights, models):
    sd, _ = weights[name]
    m, s = models[name], ref.SPECS[name]
    x = _frames(m, 17 if name == "taeh3" else 5, rows=3)
    z = torch.randn(1, 6 if name == "taeh3" else 3, m.config.latent_channels, 3, 2,
                    generator=torch.Generator().manual_seed(1)) * 2
    want_z, want_x = ref.encode(s, sd, x), ref.decode(s, sd, z)
    try:
        for rows in (1, 2):
            m.enable_tiling(rows)
            with torch.no_grad():
                for parallel in (True, False):
                    torch.testing.assert_close(m.encode_video(x, parallel), want_z, atol=TOL, rtol=0)
                    torch.testing.assert_close(m.decode_video(z, parallel), want_x, atol=TOL, rtol=0)
    finally:
        m.disable_tiling()


def test_tiled_streaming_classes_and_preview(models):
    m = models["taew2_1"]
    x = _frames(m, 9, rows=4) * 2 - 1
    with torch.no_grad():
        z = m.encode(x.transpose(1, 2)).latents
        want = m.decode(z).sample
        cheap = m.preview(time=False).decode(z).sample
        m.enable_tiling(1)
        try:
            assert m.preview(time=False).use_tiling
            torch.testing.assert_close(m.preview(time=False).decode(z).sample, cheap, atol=TOL, rtol=0)
            enc = m.stream_encoder()
            got = torch.cat([enc.push(x[:, k]) for k in range(9)] + [enc.flush()], 2)
            torch.testing.assert_close(got, z, atol=TOL, rtol=0)
            dec = m.stream_decoder()
            got = torch.cat([dec.push(z[:, :, k]) for k in range(z.shape[2])], 2)
            torch.testing.assert_close(got, want, atol=TOL, rtol=0)
        finally:
            m.disable_tiling()


def test_band_plan_covers_the_output_once(models):
    dec = models["taeltx_2"].decoder
    for rows in (1, 2, 5):
        out_rows = row_sizes(dec, rows)[-1]
        for band in (1, 3, 8, 1000):
            bands = plan_bands(dec, rows, band)
            kept = [b.crops[-1] for b in bands]
            assert sum(stop - start for start, stop in kept) == out_rows
            assert all(0 <= b.lo < b.hi <= rows for b in bands)
    z = torch.randn(1, 2, 128, 3, 1)
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([run_parallel(dec, z[..., b.lo:b.hi, :], b.crops)
                                              for b in plan_bands(dec, 3, 7)], -2), run_parallel(dec, z),
                                   atol=TOL, rtol=0)


def test_tiling_refusals(models):
    m = models["taew2_1"]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="latent_rows must be a positive integer"):
            m.enable_tiling(bad)
    with pytest.raises(ValueError, match="band rows must be a positive integer"):
        plan_bands(m.decoder, 4, 0)
    s = BandedFrameStream(m.decoder, 8)
    with torch.no_grad():
        s.push(torch.zeros(1, 16, 2, 2))
        with pytest.raises(ValueError, match="frame height changed from 2 to 3"):
            s.push(torch.zeros(1, 16, 3, 2))
