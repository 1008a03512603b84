"""The layer declarations (tinyae.layers) and the executors that read them compose: optimize() with tiling in
either order, streamed PNG decode/encode on the fast kernels, the declared geometry against the real layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tinyae import AutoencoderTiny
from tinyae.engine import fast_stream
from tinyae.nets.blocks import Block
from tinyae.nets.layers import geometry
from tinyae.engine.kernels import FastBlock, FastConv, FastStem, FastUpsampleConv
from tinyae.engine.tiling import decode_to_png, encode_png, to_uint8

PRECISIONS = ["fp32"] + (["bf16"] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else [])


def _model(gn: bool, stem: bool, seed: int) -> AutoencoderTiny:
    torch.manual_seed(seed)
    kw = dict(encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
              latent_channels=4, use_midblock_gn=gn)
    if stem:  # taesana-like: stride-2 stem, 32x
        kw.update(encoder_stem_channels=(8, 16), decoder_block_out_channels=(16, 16, 16, 16, 16, 16),
                  num_decoder_blocks=(1, 1, 1, 1, 1, 1))
    m = AutoencoderTiny(**kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.5)  # livelier activations than the default init
    return m


def _rows_read(fn, x: torch.Tensor, out_row: int) -> set[int]:
    """Input rows whose perturbation changes output row `out_row` of fn(x)."""
    base = fn(x)
    rows = set()
    for r in range(x.shape[2]):
        y = x.clone()
        y[:, :, r] += 1.0
        if not torch.allclose(fn(y)[:, :, out_row], base[:, :, out_row], atol=0, rtol=0):
            rows.add(r)
    return rows


@settings(max_examples=30, deadline=None)
@given(k=st.sampled_from([1, 3, 5]), s=st.sampled_from([1, 2]), data=st.data())
def test_conv_geometry_is_what_the_convolution_does(k, s, data):
    p = data.draw(st.integers(0, k // 2))
    conv = nn.Conv2d(2, 2, k, stride=s, padding=p, bias=False)
    g = geometry(conv)
    n = data.draw(st.integers(k, 12))
    x = torch.randn(1, 2, n, 6, dtype=torch.float64)
    conv = conv.double()
    with torch.no_grad():
        out = conv(x)
        assert g.out_rows(n) == out.shape[2]
        r = data.draw(st.integers(0, out.shape[2] - 1))
        lo, hi = g.needed(r, r)
        assert _rows_read(conv, x, r) <= set(range(lo, hi + 1))


@pytest.mark.parametrize("fused", [False, True])
def test_fast_op_geometry_covers_what_the_op_reads(fused):
    torch.manual_seed(0)
    dtype = torch.float64 if not fused else torch.float32
    conv = nn.Conv2d(16, 16, 3, padding=1)
    block = Block(16, 16)
    stem_conv = nn.Conv2d(2, 16, 3, padding=1)
    ops = [FastConv.of(conv, True, dtype, fused), FastBlock(block, dtype, fused),
           FastUpsampleConv(conv, True, dtype, fused), FastStem(stem_conv, block, dtype, fused)]
    for op in ops:
        g = geometry(op)
        c = 2 if isinstance(op, FastStem) else 16
        x = torch.randn(1, c, 14, 9, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            for r in (0, 5, g.out_rows(14) - 1):
                lo, hi = g.needed(r, r)
                assert _rows_read(op, x, r) <= set(range(lo, hi + 1)), type(op).__name__


@settings(max_examples=12, deadline=None)
@given(gn=st.booleans(), stem=st.booleans(), seed=st.integers(0, 99), band=st.integers(1, 5),
       h=st.integers(1, 5), w=st.integers(1, 3), tiny_chunks=st.booleans(), precision=st.sampled_from(PRECISIONS),
       tiling_first=st.booleans())
def test_optimize_and_tiling_compose(gn, stem, seed, band, h, w, tiny_chunks, precision, tiling_first):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast_stream, "SEGMENTS", "op" if seed % 2 else "level")  # rows carried per op, or per level
        mp.setattr(fast_stream, "MIN_CHUNK_ROWS", 1 if tiny_chunks else 32)
        mp.setattr(fast_stream, "CHUNK_BYTES", 1 if tiny_chunks else 16 << 20)
        mp.setattr(fast_stream, "STAGE_BYTES", 0 if tiny_chunks else 32 << 20)  # GroupNorm replayed, or whole
        _check_composition(gn, stem, seed, band, h, w, precision, tiling_first)


def _check_composition(gn, stem, seed, band, h, w, precision, tiling_first):
    m = _model(gn, stem, seed)
    f = m.spatial_scale_factor
    x = torch.rand(1, 3, h * f, w * f) * 2 - 1
    z = torch.randn(1, 4, h, w)
    fast = m.optimize(precision)
    want_enc, want_dec = fast.encode(x).latents, fast.decode(z).sample
    if tiling_first:
        m.enable_tiling(band_rows=band)
        tiled = m.optimize(precision)
        m.disable_tiling()
    else:
        tiled = m.optimize(precision)
        tiled.enable_tiling(band_rows=band)
    got_enc, got_dec = tiled.encode(x).latents, tiled.decode(z).sample
    if precision == "fp32":
        eager_enc, eager_dec = m.encode(x).latents, m.decode(z).sample
        for got, want in ((got_enc, eager_enc), (got_dec, eager_dec)):
            assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())
    else:  # the same function as in-memory optimized, within bf16 rounding
        for got, want in ((got_enc, want_enc), (got_dec, want_dec)):
            err = (got - want).abs().max().item()
            assert err <= 0.05 * max(1.0, want.abs().max().item()), err


@pytest.mark.parametrize("precision", PRECISIONS)
def test_streamed_png_runs_the_fast_kernels(taef2, astronaut, tmp_path, precision):
    fast = taef2.optimize(precision)
    x = astronaut[:, :, :128, :192]
    z = fast.encode(x).latents
    want = to_uint8(fast.decode(z).sample)[0].numpy()
    decode_to_png(fast, z, tmp_path / "d.png", band_rows=3)
    got = np.asarray(Image.open(tmp_path / "d.png"))
    diff = np.abs(got.astype(int) - want.astype(int))
    if precision == "fp32":
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    else:  # bf16 outputs are rounded to 8 bits of mantissa: pixels flip by a level or two, PSNR stays high
        assert 10 * np.log10(255 ** 2 / np.mean(diff.astype(float) ** 2)) >= 45
    Image.fromarray(to_uint8(x)[0].numpy()).save(tmp_path / "x.png")
    zs = encode_png(fast, tmp_path / "x.png", band_rows=2)
    ref = fast.encode(torch.from_numpy(np.array(Image.open(tmp_path / "x.png"))).permute(2, 0, 1)[None].float()
                      / 127.5 - 1).latents
    assert (zs - ref).abs().max() <= (1e-5 if precision == "fp32" else 0.1)


def test_fast_stream_groupnorm_statistics_match_the_whole_image(taef2, astronaut):
    fast = taef2.optimize("fp32")
    x = astronaut[:, :, :256, :256]
    z = fast.encode(x).latents
    fast.enable_tiling(band_rows=1)
    assert (fast.decode(z).sample - taef2.decode(z).sample).abs().max() <= 1e-5
    assert (fast.encode(x).latents - taef2.encode(x).latents).abs().max() <= 1e-5


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 3), groups=st.sampled_from([1, 2, 4]), per=st.integers(1, 4), h=st.integers(2, 5),
       w=st.integers(2, 5), offset=st.floats(-3, 3), seed=st.integers(0, 99), precision=st.sampled_from(PRECISIONS))
def test_group_norm_with_given_statistics_is_group_norm(batch, groups, per, h, w, offset, seed, precision):
    """FastBlock.group_norm_with (the streamed pass's GroupNorm, from whole-image statistics) applied with g's own
    per-sample statistics equals F.group_norm of g, per sample, keeping g's dtype and channels_last."""
    torch.manual_seed(seed)
    c = groups * per
    gn = nn.GroupNorm(groups, c)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 2), gn.bias.uniform_(-1, 1)
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    block = FastBlock(Block(4, 4, use_midblock_gn=True), dtype, True)
    block.gn_weight = nn.Parameter(gn.weight.detach().clone(), requires_grad=False)  # float32, as optimize() keeps
    block.gn_bias = nn.Parameter(gn.bias.detach().clone(), requires_grad=False)
    block.gn_groups, block.gn_eps = groups, gn.eps
    g = (torch.randn(batch, c, h, w) * 2 + offset).to(dtype).contiguous(memory_format=torch.channels_last)
    parts = g.double().reshape(batch, groups, -1)
    mean, var = parts.mean(-1), parts.var(-1, unbiased=False)
    got = block.group_norm_with(g, mean, torch.rsqrt(var + gn.eps))
    want = F.group_norm(g.float(), groups, gn.weight, gn.bias, gn.eps)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    tol = 1e-5 if precision == "fp32" else 0.02
    assert (got.float() - want).abs().max().item() <= tol * max(1.0, want.abs().max().item())


def test_bands_convert_band_by_band_and_read_again():
    x = torch.randn(1, 4, 7, 5)
    bands = fast_stream.Bands(x, 3, torch.bfloat16)
    for _ in range(2):  # a streamed run reads it once per GroupNorm, then once more
        parts = list(bands)
        assert [p.shape[2] for p in parts] == [3, 3, 1] and all(p.dtype == torch.bfloat16 for p in parts)
        assert torch.equal(torch.cat(parts, dim=2), x.to(torch.bfloat16))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 99), band=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 3),
       tiny_chunks=st.booleans(), precision=st.sampled_from(PRECISIONS))
def test_groupnorm_replay_equals_keeping_the_stage_input(seed, band, h, w, tiny_chunks, precision):
    """The decoder's GroupNorm statistics from passes that re-read the input (Bands: nothing kept) and from the kept
    lowest-resolution stage (a one-shot iterator) give the same image, that of the in-memory optimized decoder."""
    fast = _model(True, False, seed).optimize(precision)
    net = fast._part("decoder")
    z = (torch.randn(1, 4, h, w) * 2).to(fast.dtype)
    want = net(z).float()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast_stream, "MIN_CHUNK_ROWS", 1 if tiny_chunks else 32)
        mp.setattr(fast_stream, "CHUNK_BYTES", 1 if tiny_chunks else 8 << 20)
        mp.setattr(fast_stream, "STAGE_BYTES", 0)  # as for a stage too large to run whole
        replayed = torch.cat([b.float() for b in fast_stream.stream_apply(
            net, fast_stream.Bands(z, band, z.dtype), h, w, band)], dim=2)
        kept = torch.cat([b.float() for b in fast_stream.stream_apply(
            net, iter(list(z.split(band, dim=2))), h, w, band)], dim=2)
    tol = 1e-5 if precision == "fp32" else 0.05
    for got in (replayed, kept):
        assert (got - want).abs().max().item() <= tol * max(1.0, want.abs().max().item())


def test_streamed_decode_keeps_no_whole_image_tensor(monkeypatch, tmp_path):
    """decode_to_png of a GroupNorm decoder on the fast kernels: no whole-image (or whole-stage) tensor is
    collected, and the latents are converted to the model's dtype band by band."""
    fast = _model(True, False, 3).optimize("bf16" if "bf16" in PRECISIONS else "fp32")
    z = torch.randn(1, 4, 6, 5)
    want = to_uint8(fast.decode(z).sample)[0].numpy()

    def no_collect(*args, **kwargs):
        raise AssertionError("a whole tensor was collected")

    monkeypatch.setattr(fast_stream, "_collect", no_collect)
    monkeypatch.setattr(fast_stream, "STAGE_BYTES", 0)  # as for an image whose GroupNorm stage is too large
    converted = []
    monkeypatch.setattr(fast_stream.Bands, "__iter__", lambda self: (converted.append(b.shape[2]) or b.to(self.dtype)
                                                                     for b in self.x.split(self.rows, dim=2)))
    decode_to_png(fast, z, tmp_path / "d.png", band_rows=2)
    assert converted and max(converted) == 2
    got = np.asarray(Image.open(tmp_path / "d.png"))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


def test_tiled_fast_output_is_widened_once():
    """tiled_apply of a bf16 net returns float32 holding the bf16 values (the caller widens anyway); decode keeps
    the caller's dtype."""
    if "bf16" not in PRECISIONS:
        pytest.skip("no bf16 kernels on this CPU")
    fast = _model(True, False, 5).optimize("bf16")
    net = fast._part("decoder")
    z = torch.randn(1, 4, 5, 4).to(torch.bfloat16)
    out = fast_stream.tiled_apply(net, z, 2)
    assert out.dtype == torch.float32 and torch.equal(out, out.to(torch.bfloat16).float())
    fast.enable_tiling(band_rows=2)
    assert fast.decode(z).sample.dtype == torch.bfloat16 and fast.decode(z.float()).sample.dtype == torch.float32


@settings(max_examples=12, deadline=None)
@given(gn=st.booleans(), stem=st.booleans(), seed=st.integers(0, 99), band=st.integers(1, 5),
       h=st.integers(1, 4), w=st.integers(1, 5), tile=st.integers(1, 40), precision=st.sampled_from(PRECISIONS),
       tiling_first=st.booleans())
def test_column_tiles_compose(gn, stem, seed, band, h, w, tile, precision, tiling_first):
    """Chunks cut into column tiles (as at very wide images) give the same results as whole rows."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast_stream, "SEGMENTS", "op" if seed % 2 else "level")
        mp.setattr(fast_stream, "MIN_CHUNK_ROWS", 1)
        mp.setattr(fast_stream, "CHUNK_BYTES", 1)
        mp.setattr(fast_stream, "MIN_TILE_COLUMNS", tile)
        _check_composition(gn, stem, seed, band, h, w, precision, tiling_first)


def test_wide_chunks_run_in_column_tiles(taef2):
    """At 16384 columns the widest level's chunks are 1024-column tiles of 64 rows (8 MiB of bf16 activations),
    the rows of a 2048-wide image's chunks: the same rows recomputed, the same cache footprint."""
    net = taef2.optimize("bf16" if "bf16" in PRECISIONS else "fp32")._part("decoder")
    chain = fast_stream._Chain(fast_stream.ops_of(net), 2048, {}, 2048)
    top = chain.streams[-1]
    elt = 2 if "bf16" in PRECISIONS else 4
    assert fast_stream.MIN_CHUNK_ROWS == 64
    assert top.min_rows == max(64, (8 << 20) // (16384 * 64 * elt)) and top.tile == (8 << 20) // (64 * 64 * elt)
    narrow = fast_stream._Chain(fast_stream.ops_of(net), 256, {}, 256).streams[-1]  # 2048 wide
    assert narrow.min_rows == 64 and (narrow.tile or 2048) * 64 * 64 * elt <= 8 << 20  # tiles only beyond 8 MiB


def test_column_tiles_on_taef2_equal_eager(taef2, astronaut, monkeypatch):
    """The real taef2 (GroupNorm included), every level cut into 64-column tiles of 8-row chunks: fp32 equals eager."""
    monkeypatch.setattr(fast_stream, "MIN_CHUNK_ROWS", 8)
    monkeypatch.setattr(fast_stream, "CHUNK_BYTES", 1)
    monkeypatch.setattr(fast_stream, "MIN_TILE_COLUMNS", 64)
    fast = taef2.optimize("fp32")
    x = astronaut[:, :, :192, :320]
    z = taef2.encode(x).latents
    fast.enable_tiling(band_rows=2)
    assert (fast.decode(z).sample - taef2.decode(z).sample).abs().max() <= 1e-5
    assert (fast.encode(x).latents - taef2.encode(x).latents).abs().max() <= 1e-5


@pytest.mark.parametrize("fast", [False, True])
def test_tiled_encode_prepares_the_image_band_by_band(fast, monkeypatch):
    """With tiling, encode's [-1, 1] -> [0, 1] conversion runs per band (no whole converted copy of the image);
    the latents equal the untiled ones and a NaN in the last band is still caught."""
    m = _model(True, False, 4)
    m = m.optimize(PRECISIONS[-1]) if fast else m
    x = torch.rand(1, 3, 48, 40) * 2 - 1
    want = m.encode(x).latents
    m.enable_tiling(band_rows=1)
    seen, real = [], type(m)._tiled

    def spy(self, net, inp, prepare=None):
        seen.append(inp)
        counted = lambda band: (seen.append(band.shape[2]), prepare(band))[1]  # noqa: E731
        return real(self, net, inp, counted)

    monkeypatch.setattr(type(m), "_tiled", spy)
    got = m.encode(x).latents
    assert seen[0] is x and max(seen[1:]) == 8  # the caller's tensor as it is, then 8-row bands
    assert torch.allclose(got, want, atol=1e-5 if not fast else 2e-2, rtol=0)
    x[..., -1, 0] = float("nan")
    with pytest.raises(ValueError, match="images contain NaN"):
        m.encode(x)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_small_groupnorm_stage_runs_whole_without_statistics_passes(taef2, astronaut, monkeypatch, precision):
    """A GroupNorm stage of at most STAGE_BYTES runs whole (no statistics pass recomputes it); the tiled result is
    the in-memory optimized one: within 1e-5 of eager in fp32, within rounding in bf16."""
    fast = taef2.optimize(precision)
    x = astronaut[:, :, :128, :192]
    z = fast.encode(x).latents
    want_dec, want_enc = fast.decode(z).sample, z
    monkeypatch.setattr(fast_stream, "_gn_stats", lambda *a, **k: pytest.fail("a statistics pass ran"))
    fast.enable_tiling(band_rows=1)
    got_dec, got_enc = fast.decode(z).sample, fast.encode(x).latents
    tol = 1e-5 if precision == "fp32" else 0.05
    for got, want in ((got_dec, want_dec), (got_enc, want_enc)):
        assert (got - want).abs().max().item() <= tol * max(1.0, want.abs().max().item())
    if precision == "fp32":
        assert (got_dec - taef2.decode(z).sample).abs().max() <= 1e-5
