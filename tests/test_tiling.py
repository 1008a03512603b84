"""Exact tiling (tinyae.tiling): tiled == untiled for every variant and size, receptive field, GroupNorm,
streaming to and from PNG, option checks."""

from __future__ import annotations

import numpy as np
import png
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import IMAGES, PHOTOS, TAESANA_ENCODER, load_photo
from tinyae import AutoencoderTiny
from tinyae.nets.blocks import Block
from tinyae.engine.tiling import (DEFAULT_BAND_PIXELS, decode_bands, decode_to_png, encode_bands, encode_png,
                           receptive_field, to_uint8)
from tinyae.nets.variants import variant_config

REAL_TOL = 1e-4  # float32, real weights
RANDOM_TOL = 1e-5  # float32, small random-weight models


def _random_model(seed: int = 0, **config) -> AutoencoderTiny:
    torch.manual_seed(seed)
    model = AutoencoderTiny(**config).eval()
    with torch.no_grad():  # larger biases than the default init: fewer dead ReLUs, so every path carries signal
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.2, 0.3)
    return model


def _without_dead_units(model: AutoencoderTiny) -> AutoencoderTiny:
    """For measuring the field: the Blocks' final ReLU becomes the identity (with silu activations no unit is then
    dead) and conv weights are tripled (gain about 1 per layer instead of decaying), so every row inside the field
    measurably influences the output. The geometry is unchanged."""
    for module in model.modules():
        if isinstance(module, Block):
            module.fuse = torch.nn.Identity()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4:
                p.mul_(3)
    return model


def _both(model: AutoencoderTiny, fn, **options):
    """(untiled, tiled) results of fn(model)."""
    model.disable_tiling()
    with torch.no_grad():
        plain = fn(model)
        model.enable_tiling(**options)
        tiled = fn(model)
    model.disable_tiling()
    return plain, tiled


def _read_png(path) -> np.ndarray:
    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    return np.vstack([np.frombuffer(bytes(r), np.uint8) for r in rows]).reshape(height, width, info["planes"])


# ---------------------------------------------------------------------------------------------- property test
@st.composite
def _configs(draw):
    stages = draw(st.integers(2, 4))
    ch = st.sampled_from([4, 8])
    return {
        "latent_channels": draw(st.sampled_from([1, 4, 16])),
        "encoder_block_out_channels": tuple(draw(ch) for _ in range(stages)),
        "decoder_block_out_channels": tuple(draw(ch) for _ in range(stages)),
        "num_encoder_blocks": tuple(draw(st.integers(0, 2)) for _ in range(stages)),
        "num_decoder_blocks": tuple(draw(st.integers(0, 2)) for _ in range(stages)),
        "act_fn": draw(st.sampled_from(["relu", "silu", "gelu"])),
        "upsample_fn": draw(st.sampled_from(["nearest", "nearest-exact", "bilinear", "bicubic"])),
        "upsampling_scaling_factor": draw(st.sampled_from([2, 2, 3])),
        "use_midblock_gn": draw(st.booleans()),
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=_configs(), stem=st.booleans(), h=st.integers(1, 9), w=st.integers(1, 6),
       batch=st.integers(1, 3), band_rows=st.one_of(st.none(), st.integers(1, 6)),
       band_pixels=st.integers(1, 5000), seed=st.integers(0, 2 ** 16))
def test_property_tiled_equals_untiled(config, stem, h, w, batch, band_rows, band_pixels, seed):
    if stem:  # taesana-like 32x encoder: stride-2 stem in front of the first stage
        config["encoder_stem_channels"] = (4, config["encoder_block_out_channels"][0])
    model = _random_model(seed, **config)
    options = {"band_rows": band_rows, "band_pixels": band_pixels}
    z = torch.randn(batch, config["latent_channels"], h, w)
    plain, tiled = _both(model, lambda m: m.decode(z).sample, **options)
    assert tiled.shape == plain.shape
    assert (tiled - plain).abs().max() <= RANDOM_TOL
    f = model.spatial_scale_factor
    x = torch.rand(batch, 3, h * f, w * f) * 2 - 1
    plain, tiled = _both(model, lambda m: m.encode(x).latents, **options)
    assert tiled.shape == plain.shape
    assert (tiled - plain).abs().max() <= RANDOM_TOL


@pytest.mark.parametrize("variant", ["taesd", "taesdxl", "taesd3", "taef1", "taef2", "taesana"])
def test_every_variant_random_weights(variant):
    model = _random_model(1, **variant_config(variant))
    z = torch.randn(2, model.config.latent_channels, 5, 3)
    plain, tiled = _both(model, lambda m: m.decode(z).sample, band_rows=1)
    assert (tiled - plain).abs().max() <= RANDOM_TOL
    f = model.spatial_scale_factor
    x = torch.rand(1, 3, 3 * f, 2 * f) * 2 - 1
    plain, tiled = _both(model, lambda m: m.encode(x).latents, band_rows=1)
    assert (tiled - plain).abs().max() <= RANDOM_TOL


# ---------------------------------------------------------------------------------------------- real weights
@pytest.fixture(scope="module")
def photo_runs(taef2) -> dict:
    """Per photo: the image, its untiled and tiled (band_rows=3) latents, untiled and tiled (band_rows=5)
    decodes of its latents (all 64 latent rows of the astronaut, the first 24 of the others, for time)."""
    runs = {}
    for photo in PHOTOS:
        x = load_photo(photo)
        lat, lat_tiled = _both(taef2, lambda m: m.encode(x).latents, band_rows=3)
        z = lat if photo.name == "astronaut.png" else lat[:, :, :24]  # full decode once, bands of the others
        dec, dec_tiled = _both(taef2, lambda m: m.decode(z).sample, band_rows=5)
        runs[photo.name] = {"x": x, "lat": lat, "lat_tiled": lat_tiled, "dec": dec, "dec_tiled": dec_tiled}
    return runs


@pytest.mark.parametrize("photo", [p.name for p in PHOTOS])
def test_taef2_real_photos(photo_runs, photo):
    run = photo_runs[photo]
    assert (run["lat_tiled"] - run["lat"]).abs().max() <= REAL_TOL
    assert (run["dec_tiled"] - run["dec"]).abs().max() <= REAL_TOL


def test_taef2_odd_latent_and_batch(taef2):
    torch.manual_seed(0)
    z = torch.randn(1, 32, 73, 97)
    plain, tiled = _both(taef2, lambda m: m.decode(z).sample)  # bare enable_tiling(): the defaults
    assert plain.shape == (1, 3, 584, 776)
    assert (tiled - plain).abs().max() <= REAL_TOL
    x = plain[:, :, 200:328, 300:460].clamp(-1, 1)
    x = torch.cat([x, x.flip(2)])  # a batch of two different images: statistics are per sample
    plain, tiled = _both(taef2, lambda m: m.encode(x).latents, band_rows=7)
    assert (tiled - plain).abs().max() <= REAL_TOL


def test_taesana_real_encoder():
    model = AutoencoderTiny.from_pretrained(TAESANA_ENCODER)
    x = load_photo(IMAGES / "coffee.png", multiple=32)
    plain, tiled = _both(model, lambda m: m.encode(x).latents, band_rows=1)
    assert (tiled - plain).abs().max() <= REAL_TOL


def test_tiny_inputs_smaller_than_a_band(taef2):
    z = torch.randn(2, 32, 1, 2)
    plain, tiled = _both(taef2, lambda m: m.decode(z).sample, band_rows=64)
    assert (tiled - plain).abs().max() <= REAL_TOL


def test_slicing_identical_and_combines_with_tiling(taef2):
    torch.manual_seed(1)
    z = torch.randn(3, 32, 9, 7)
    with torch.no_grad():
        plain = taef2.decode(z).sample
        taef2.enable_slicing()
        try:
            assert (taef2.decode(z).sample - plain).abs().max() <= 1e-5  # batched conv rounds differently
            taef2.enable_tiling(band_rows=2)
            assert (taef2.decode(z).sample - plain).abs().max() <= REAL_TOL
        finally:
            taef2.disable_slicing()
            taef2.disable_tiling()


# ---------------------------------------------------------------------------------------------- receptive field
def _halo_tiled_decode(decoder, z: torch.Tensor, halo: int, split: int) -> torch.Tensor:
    """Naive 2-tile decode: each tile with `halo` latent rows of context, cropped. Exact iff halo >= the field."""
    f = receptive_field(decoder).scale
    top = decoder(z[:, :, :split + halo])[:, :, :split * f]
    lo = max(0, split - halo)
    bottom = decoder(z[:, :, lo:])[:, :, (split - lo) * f:]
    return torch.cat([top, bottom], dim=2)


def test_receptive_field_taesd_decoder_is_19_latents():
    rf = receptive_field(_random_model(**variant_config("taesd")).decoder)
    assert (rf.before, rf.after, rf.scale) == (19, 19, 8)


def test_receptive_field_is_exact_and_tight():
    """Context of the computed radius makes naive halo tiling exact; one row less does not (float64: the
    influence of the farthest latent row is real but small)."""
    config = {**variant_config("taesd"), "decoder_block_out_channels": (8,) * 4, "act_fn": "silu"}
    decoder = _without_dead_units(_random_model(2, **config)).decoder.double()
    radius = receptive_field(decoder).radius
    z = torch.randn(1, 4, 2 * radius + 8, 3, dtype=torch.float64)
    with torch.no_grad():
        plain = decoder(z)
        scale = plain.abs().max()
        assert (_halo_tiled_decode(decoder, z, radius, radius + 4) - plain).abs().max() <= 1e-13 * scale
        assert (_halo_tiled_decode(decoder, z, radius - 1, radius + 4) - plain).abs().max() > 1e-10 * scale


@pytest.mark.parametrize("part", ["decoder", "encoder"])
def test_receptive_field_matches_gradient_measurement(part):
    """The gradient of one output row reaches exactly as far as the computed field (maximised over phases)."""
    config = {**variant_config("taesd"), "encoder_block_out_channels": (8,) * 4,
              "decoder_block_out_channels": (8,) * 4, "act_fn": "silu"}
    net = getattr(_without_dead_units(_random_model(3, **config)), part).double()
    rf = receptive_field(net)
    n_in = 48 if part == "decoder" else 64 * 8
    x = torch.randn(1, 4 if part == "decoder" else 3, n_in, 3, dtype=torch.float64, requires_grad=True)
    out = net(x)
    before = after = 0
    first = out.shape[2] // 2 // 8 * 8 if rf.upsamples else out.shape[2] // 2
    for row in range(first, first + (8 if rf.upsamples else 1)):  # every phase of one cell
        (grad,) = torch.autograd.grad(out[:, :, row].sum(), x, retain_graph=True)
        hit = grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
        cell = (row // 8, row // 8) if rf.upsamples else (row * 8, row * 8 + 7)
        before, after = max(before, cell[0] - int(hit.min())), max(after, int(hit.max()) - cell[1])
    assert (before, after) == (rf.before, rf.after)


# ---------------------------------------------------------------------------------------------- GroupNorm
def test_per_tile_groupnorm_would_be_wrong(taef2, photo_runs):
    """Halo tiling with the full receptive field is exact without GroupNorm, but not for taef2: its GroupNorm
    statistics would be per tile. The engine's whole-image statistics are exact."""
    run = photo_runs["astronaut.png"]
    radius = receptive_field(taef2.decoder).radius
    with torch.no_grad():
        naive = _halo_tiled_decode(taef2.decoder, run["lat"], radius, 24).mul(2).sub(1)
    assert (naive - run["dec"]).abs().max() > 1e-2
    assert (run["dec_tiled"] - run["dec"]).abs().max() <= REAL_TOL


# ---------------------------------------------------------------------------------------------- streaming
def test_decode_to_png_equals_in_memory(taef2, tmp_path):
    torch.manual_seed(4)
    z = torch.randn(1, 32, 37, 21)
    path = tmp_path / "out.png"
    decode_to_png(taef2, z, path, band_rows=4)
    pixels = _read_png(path)
    plain, tiled = _both(taef2, lambda m: m.decode(z).sample, band_rows=4)
    assert np.array_equal(pixels, to_uint8(tiled)[0].numpy())
    diff = np.abs(pixels.astype(int) - to_uint8(plain)[0].numpy().astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # untiled: equal but for rounding ties


def test_decode_bands_concatenate_to_decode(taef2):
    z = torch.randn(1, 32, 40, 3)  # taller than the field (19 latent rows): output comes while input is read
    bands = list(decode_bands(taef2, z, band_rows=2))
    assert len(bands) > 2 and torch.is_grad_enabled()
    _, tiled = _both(taef2, lambda m: m.decode(z).sample, band_rows=2)
    assert torch.equal(torch.cat(bands, dim=2), tiled)


def test_encode_png_equals_in_memory(taef2, photo_runs, tmp_path):
    run = photo_runs["chelsea.png"]  # 451x300, cropped to multiples of 8 by load_photo: save the crop
    cropped = tmp_path / "crop.png"
    pixels = ((run["x"][0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    png.from_array(pixels.reshape(pixels.shape[0], -1), "RGB").save(str(cropped))
    latents = encode_png(taef2, cropped, band_rows=3)
    assert torch.equal(latents, run["lat_tiled"])
    assert (latents - run["lat"]).abs().max() <= REAL_TOL


def test_encode_bands_any_band_heights(taef2):
    x = load_photo(IMAGES / "coffee.png")[:, :, 100:300, 200:320]
    latents = encode_bands(taef2, x.split([1, 7, 64, 128], dim=2), 200, 120)
    plain, _ = _both(taef2, lambda m: m.encode(x).latents)
    assert (latents - plain).abs().max() <= REAL_TOL
    with pytest.raises(ValueError, match="hold 200 rows, expected height=208"):
        encode_bands(taef2, x.split(50, dim=2), 208, 120)


def test_streaming_never_clobbers_existing_file(taef2, tmp_path):
    path = tmp_path / "keep.png"
    path.write_bytes(b"precious")
    with pytest.raises(ValueError, match="channels"):
        decode_to_png(taef2, torch.randn(1, 4, 8, 8), path)
    with pytest.raises(ValueError, match="batch size 1"):
        decode_to_png(taef2, torch.randn(2, 32, 8, 8), path)
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_encode_png_bad_inputs(taef2, tmp_path):
    odd = tmp_path / "odd.png"
    png.from_array(np.zeros((10, 12 * 3), np.uint8), "RGB").save(str(odd))
    with pytest.raises(ValueError, match="multiple of 8"):
        encode_png(taef2, odd)
    with pytest.raises(ValueError, match="no such file"):
        encode_png(taef2, tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="PNG"):
        encode_png(taef2, bad)


# ---------------------------------------------------------------------------------------------- options
def test_bare_enable_tiling_defaults(taef2):
    taef2.enable_tiling()
    try:
        assert taef2.use_tiling and taef2.tiling_options == {"band_rows": None, "band_pixels": DEFAULT_BAND_PIXELS}
    finally:
        taef2.disable_tiling()


@pytest.mark.parametrize("options, message", [
    ({"band_rows": 0}, "band_rows"), ({"band_rows": -3}, "band_rows"), ({"band_rows": 2.5}, "band_rows"),
    ({"band_rows": True}, "band_rows"), ({"band_pixels": 0}, "band_pixels"), ({"band_pixels": "1"}, "band_pixels"),
    ({"tile_size": 64}, "unknown tiling option"),
])
def test_bad_options(taef2, options, message):
    with pytest.raises(ValueError, match=message):
        taef2.enable_tiling(**options)
    assert not taef2.use_tiling
    with pytest.raises(ValueError, match=message):
        decode_bands(taef2, torch.randn(1, 32, 2, 2), **options)


def test_unsupported_layer_is_a_clear_error():
    model = _random_model(**variant_config("taesd"))
    model.decoder.layers[1] = torch.nn.Dropout()
    with pytest.raises(ValueError, match="does not support the layer Dropout"):
        model.enable_tiling()
