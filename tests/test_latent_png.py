"""The 8-bit latent PNG against the original project's layout, written here from its formula (not tinyae's code):
quantise with scale_latents to bytes, then (C, h, w) -> (4, k*h, w) by
`unflatten(0, (-1, 4)).transpose(0, 1).flatten(1, 2)`; read back with
`unflatten(1, (C // 4, -1)).transpose(0, 1).flatten(0, 1)`. And tinyae's earlier grid layout still reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

import tinyae
from tinyae import cli
from tinyae.data.codec import LatentFileError, load_latents, read_metadata, save_latents

CHANNELS = [4, 16, 32, 64, 128]


def upstream_encode(z: torch.Tensor) -> np.ndarray:
    """Raw latents (C, h, w) -> the original's PNG pixels (k*h, w, 4) uint8 (magnitude 3, shift 0.5)."""
    q = z.div(2 * 3).add(0.5).clamp(0, 1).mul(255).round().byte()
    return q.unflatten(0, (-1, 4)).transpose(0, 1).flatten(1, 2).permute(1, 2, 0).numpy()


def upstream_decode(pixels: np.ndarray, channels: int) -> torch.Tensor:
    """The original's reader: PNG pixels (k*h, w, 4) -> raw latents (C, h, w) (to_tensor, fold, unscale)."""
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(255)
    x = x.unflatten(1, (channels // 4, -1)).transpose(0, 1).flatten(0, 1)
    return x.sub(0.5).mul(2 * 3)


def latents(c: int, h: int = 3, w: int = 5) -> torch.Tensor:
    return torch.randn(c, h, w, generator=torch.Generator().manual_seed(c)) * 2.5  # some beyond +-3: clamped


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        return np.asarray(im).copy()


@pytest.mark.parametrize("c", CHANNELS)
def test_tinyae_writes_the_originals_pixels(tmp_path, c):
    z = latents(c)
    path = save_latents(tmp_path / "z.latent.png", z, variant="x")
    want = upstream_encode(z)
    assert want.shape == (c // 4 * 3, 5, 4)
    assert np.array_equal(pixels(path), want)
    assert read_metadata(path)["layout"] == "rgba-stack"
    torch.testing.assert_close(load_latents(path).latents, upstream_decode(want, c), atol=0, rtol=0)


@pytest.mark.parametrize("c", CHANNELS)
def test_tinyae_reads_the_originals_files(tmp_path, c):
    want = upstream_encode(latents(c))
    path = tmp_path / "photo.png.encoded.png"
    Image.fromarray(want, "RGBA").save(path)  # as the original's script: no metadata
    e = load_latents(path, latent_channels=c)
    assert torch.equal(e.latents, upstream_decode(want, c))
    assert e.metadata["layout"] == "rgba-stack" and e.size is None and e.alpha is None
    again = save_latents(tmp_path / "again.latent.png", e.latents)
    assert np.array_equal(pixels(again), want)  # byte-identical pixels after a tinyae round trip


def test_the_originals_file_needs_a_channel_count(tmp_path):
    path = tmp_path / "z.png"
    Image.fromarray(upstream_encode(latents(16)), "RGBA").save(path)
    with pytest.raises(LatentFileError, match="without tinyae latent metadata.*latent_channels"):
        load_latents(path)
    with pytest.raises(LatentFileError, match="damaged latent PNG.*a 5x12 PNG cannot hold 10x1 tiles of 40 channels"):
        load_latents(path, latent_channels=40)  # 12 rows are not 10 tiles


def grid_png(z: torch.Tensor, rows: int, cols: int) -> np.ndarray:
    """tinyae's earlier layout, by hand: tile g of four channels at grid cell (g // cols, g % cols)."""
    c, h, w = z.shape
    q = z.div(6).add(0.5).clamp(0, 1).mul(255).round().byte()
    out = np.zeros((rows * h, cols * w, 4), np.uint8)
    for g in range(c // 4):
        r, k = divmod(g, cols)
        out[r * h:(r + 1) * h, k * w:(k + 1) * w] = q[4 * g:4 * g + 4].permute(1, 2, 0).numpy()
    return out


@pytest.mark.parametrize("c, rows, cols, layout_key", [(16, 2, 2, True), (32, 2, 4, True), (16, 2, 2, False),
                                                       (32, 2, 4, False)])
def test_earlier_grid_files_still_read(tmp_path, c, rows, cols, layout_key):
    z = latents(c)
    meta = {"format": "tinyae.latents", "tinyae_version": "0.1.0", "latent_shape": [c, 3, 5], "dtype": "uint8",
            "latent_channels": c, "magnitude": 3.0, "shift": 0.5, "original_size": [40, 24], "variant": "taef1"}
    if layout_key:
        meta["layout"] = "rgba-tiles"  # what tinyae wrote before; files without the key read the same
    info = PngImagePlugin.PngInfo()
    info.add_text("tinyae", json.dumps(meta))
    grid = grid_png(z, rows, cols)
    path = tmp_path / "old.latent.png"
    Image.fromarray(grid, "RGBA").save(path, pnginfo=info)
    e = load_latents(path)
    assert e.size == (40, 24)
    want = torch.from_numpy(grid).float().div(255).sub(0.5).mul(6)  # (rows*h, cols*w, 4)
    want = want.reshape(rows, 3, cols, 5, 4).permute(0, 2, 4, 1, 3).reshape(c, 3, 5)
    assert torch.equal(e.latents, want)
    assert np.array_equal(pixels(save_latents(tmp_path / "new.latent.png", e)), upstream_encode(want))


def test_unknown_layout_is_refused(tmp_path):
    path = save_latents(tmp_path / "z.latent.png", latents(16))
    with Image.open(path) as im:
        meta, image = json.loads(im.text["tinyae"]), im.copy()
    info = PngImagePlugin.PngInfo()
    info.add_text("tinyae", json.dumps({**meta, "layout": "diagonal"}))
    image.save(path, pnginfo=info)
    with pytest.raises(LatentFileError, match="bad layout 'diagonal'"):
        load_latents(path)


def test_cli_decodes_the_originals_file_with_the_models_channels(tmp_path, capsys):
    torch.manual_seed(0)
    model = tinyae.AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                   latent_channels=16).eval()
    model.save_pretrained(tmp_path / "model")
    want = upstream_encode(latents(16))
    Image.fromarray(want, "RGBA").save(tmp_path / "z.png.encoded.png")
    rc = cli.main(["decode", str(tmp_path / "z.png.encoded.png"), "-o", str(tmp_path / "out"),
                   "--model", str(tmp_path / "model"), "--precision", "exact"])
    assert rc == 0, capsys.readouterr()
    with Image.open(tmp_path / "out" / "z.png.encoded.png") as im:
        got = np.asarray(im.convert("RGB"))
    direct = tinyae.decode_latents(model, tinyae.EncodedImage(upstream_decode(want, 16)))[0]
    assert got.shape == (24, 40, 3) and np.array_equal(got, np.asarray(direct))
