"""tinyae.images and tinyae.codec: images of any size and kind, latent files (safetensors and 8-bit PNG)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import tinyae
from tinyae.data.codec import GRID, STACK, LatentFileError, latents_to_png, png_layout, png_to_latents, read_metadata
from tinyae.data.images import ImageError, pad_to_multiple, read_image, to_source
from tinyae.data.metrics import psnr, ssim

from conftest import IMAGES
from test_cli import one_thread  # noqa: F401  (one torch thread: a loaded 2-core machine spin-waits with 2)


def small_model(latent_channels: int = 4) -> tinyae.AutoencoderTiny:
    """A random, narrow model (fast): the API's geometry and bookkeeping do not depend on the weights."""
    torch.manual_seed(0)
    return tinyae.AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                  latent_channels=latent_channels).eval()


SMALL = small_model()


@settings(max_examples=25, deadline=None)
@given(w=st.integers(1, 40), h=st.integers(1, 40), kind=st.sampled_from(["RGB", "L", "RGBA", "LA", "I;16", "P"]))
def test_any_size_and_kind_roundtrips_to_the_source_size_and_kind(w, h, kind):
    rng = np.random.default_rng(w * 100 + h)
    if kind == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").convert(kind)
    enc = tinyae.encode_images(SMALL, im)[0]
    assert enc.size == (w, h)
    assert tuple(enc.latents.shape) == (4, -(-h // 8), -(-w // 8))
    out = tinyae.decode_latents(SMALL, enc)[0]
    assert out.size == (w, h)
    expected = {"RGB": "RGB", "P": "RGB", "L": "L", "I;16": "L", "RGBA": "RGBA", "LA": "LA"}[kind]
    assert out.mode == expected
    if "A" in kind:  # alpha is kept aside and restored exactly
        assert np.array_equal(np.asarray(out)[..., -1], np.asarray(im)[..., -1])


def test_padding_is_reflection_and_decoding_crops_back(taef2):
    """A photo cropped to 509x301 is padded to 512x304 by reflection and decodes to 509x301."""
    im = Image.open(IMAGES / "astronaut.png").convert("RGB").crop((0, 0, 509, 301))
    padded = pad_to_multiple(np.asarray(im), 8)
    assert padded.shape == (304, 512, 3)
    assert np.array_equal(padded[301:, :509], np.asarray(im)[299:296:-1])  # mirrored, edge row not repeated
    enc = tinyae.encode_images(taef2, im)[0]
    out = tinyae.decode_latents(taef2, enc)[0]
    assert out.size == (509, 301)
    assert psnr(im, out) >= 29


def test_inputs_numpy_tensor_and_path_agree():
    im = Image.open(IMAGES / "chelsea.png").convert("RGB").crop((0, 0, 48, 40))
    a = np.asarray(im)
    as_float = a.astype(np.float32) / 255
    as_u16 = a.astype(np.uint16) * 257
    as_tensor = torch.from_numpy(as_float).permute(2, 0, 1) * 2 - 1
    z = [tinyae.encode_images(SMALL, x)[0].latents for x in (im, a, as_float, as_u16, as_tensor)]
    for other in z[1:]:
        torch.testing.assert_close(other, z[0], atol=1e-5, rtol=0)
    batch = tinyae.encode_images(SMALL, torch.stack([as_tensor, as_tensor]))
    assert len(batch) == 2
    arrays = tinyae.decode_latents(SMALL, torch.stack([z[0], z[0]]), output="numpy")
    assert arrays[0].shape == (40, 48, 3) and arrays[0].dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path):
    im = Image.fromarray(np.zeros((24, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif)
    assert read_image(path).size == (24, 40)
    assert tinyae.encode_images(SMALL, path)[0].size == (24, 40)


def test_sixteen_bit_is_read_at_full_precision(tmp_path):
    a = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16
    Image.fromarray(a).save(tmp_path / "deep.png")
    src = to_source(read_image(tmp_path / "deep.png"))
    assert src.grayscale
    np.testing.assert_allclose(src.rgb[..., 0], a / 65535, atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4, 5), np.uint8), "expected an"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (np.zeros((4, 4, 3), np.int64), "unsupported dtype"),
    (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    ("not-there.png", "no such file"),
    (3.0, "unsupported type"),
])
def test_bad_images_raise_one_clear_error(bad, message):
    with pytest.raises(ImageError, match=message):
        tinyae.encode_images(SMALL, bad)


def test_non_image_file(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        read_image(tmp_path / "notes.png")


def test_wrong_channel_latents_name_the_mismatch():
    z = torch.zeros(16, 4, 4)
    with pytest.raises(ValueError, match="16 channels .*made by taef1.* expects 4"):
        tinyae.decode_latents(SMALL, tinyae.EncodedImage(z, metadata={"variant": "taef1"}))


@settings(max_examples=30, deadline=None)
@given(c=st.sampled_from([1, 3, 4, 5, 16, 32, 64]), h=st.integers(1, 9), w=st.integers(1, 9),
       layout=st.sampled_from([STACK, GRID]))
def test_png_layout_holds_every_channel_at_8_bits(c, h, w, layout):
    z = torch.randn(c, h, w, generator=torch.Generator().manual_seed(c * h * w)) * 2
    image = latents_to_png(z, layout=layout)
    rows, cols = png_layout(c, layout)
    assert image.size == (cols * w, rows * h) and image.mode == "RGBA"
    back = png_to_latents(image, c, layout=layout)
    inside = z.abs() <= 3  # beyond +-magnitude the 8-bit mapping clamps
    assert (back - z)[inside].abs().max() <= 6 / 255 / 2 + 1e-6
    assert torch.equal(back, png_to_latents(latents_to_png(back, layout=layout), c, layout=layout))  # idempotent


def test_png_layout_of_the_released_channel_counts():
    assert png_layout(4) == png_layout(4, GRID) == (1, 1)
    assert png_layout(16, GRID) == (2, 2)  # tinyae's earlier grid
    assert png_layout(32, GRID) == (2, 4)
    assert png_layout(16) == (4, 1) and png_layout(64) == (16, 1)  # the original's vertical stack
    with pytest.raises(ValueError, match="unknown latent PNG layout 'diagonal'"):
        png_layout(16, "diagonal")


def test_latent_files_keep_latents_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA")
    enc = tinyae.encode_images(SMALL, rgba)[0]
    for name in ("x.safetensors", "x.latent.png"):
        path = tinyae.save_latents(tmp_path / name, enc, variant="tiny", source="x.png")
        back = tinyae.load_latents(path)
        assert back.size == (30, 20) and back.metadata["variant"] == "tiny"
        assert back.metadata["tinyae_version"] == tinyae.__version__
        assert back.metadata["latent_shape"] == [4, 3, 4]
        assert np.array_equal(back.alpha, np.asarray(rgba)[..., 3])
        assert read_metadata(path)["source"] == "x.png"
        atol = 0 if name.endswith("safetensors") else 3 / 255 + 1e-6
        torch.testing.assert_close(back.latents, enc.latents, atol=atol, rtol=0)
        assert np.array_equal(np.asarray(tinyae.decode_latents(SMALL, back)[0])[..., 3], np.asarray(rgba)[..., 3])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_foreign_files_are_not_latent_files(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    for name, message in (("plain.png", "ordinary image"), ("junk.safetensors", "not a latent file"),
                          ("missing.safetensors", "no such file")):
        with pytest.raises(LatentFileError, match=message):
            tinyae.load_latents(tmp_path / name)


def test_metrics():
    a = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    b = a.copy()
    b[0, 0, 0] ^= 16  # one value off by 16 levels
    assert psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 * a.size / 16 ** 2))
    assert ssim(a, 255 - a) < 0 < ssim(a, b) < 1  # anti-correlated structure scores below zero
    # flat images: the contrast/structure term is 1, SSIM = (2 x y + C1) / (x^2 + y^2 + C1)
    x, y, c1 = 0.2, 0.6, 0.01 ** 2
    flat = np.full((16, 16, 3), x, np.float32), np.full((16, 16, 3), y, np.float32)
    assert ssim(*flat) == pytest.approx((2 * x * y + c1) / (x * x + y * y + c1), rel=1e-6)


def test_eight_bit_latent_png_of_astronaut_is_within_half_a_db(taef2, tmp_path):
    im = Image.open(IMAGES / "astronaut.png")
    enc = tinyae.encode_images(taef2, im)[0]
    tinyae.save_latents(tmp_path / "a.latent.png", enc)
    float_out, png_out = tinyae.decode_latents(taef2, [enc, tinyae.load_latents(tmp_path / "a.latent.png")])
    assert psnr(im, png_out) >= psnr(im, float_out) - 0.5
    assert psnr(im, float_out) >= 30
