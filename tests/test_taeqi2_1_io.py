"""taeqi2_1 around the model: RGBA PNG streaming (--stream), `tinyae info`, and the diffusers family checks."""

from __future__ import annotations

import json

import numpy as np
import png
import pytest
import torch
from PIL import Image
from reference import random_f16
from test_taeqi2_1 import _small

from tinyae import cli, tiling
from tinyae.images import EncodedImage, decode_latents, encode_images

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _write_png(path, a: np.ndarray) -> None:
    png.from_array(a.reshape(a.shape[0], -1), MODES[a.shape[2]]).save(str(path))


def _pixels(h=48, w=32, c=4, seed=3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _as_input(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1


# ---------------------------------------------------------------------------------------------- --stream
@pytest.mark.parametrize("band", [1, 2])
def test_rgba_png_streams_equal_the_in_memory_path(tmp_path, band):
    m, tiled = _small(), _small()
    tiled.enable_tiling(band_rows=band)
    a = _pixels()
    _write_png(tmp_path / "in.png", a)
    z = tiling.encode_png(m, tmp_path / "in.png", band_rows=band)
    with torch.no_grad():
        assert torch.equal(z, tiled.encode(_as_input(a)).latents)
        assert (z - m.encode(_as_input(a)).latents).abs().max() <= 1e-5
    (e,) = encode_images(m, Image.fromarray(a, "RGBA"))  # the API's path: alpha through the model too
    assert (z[0] - e.latents).abs().max() <= 1e-5
    tiling.decode_to_png(m, z, tmp_path / "out.png", band_rows=band)
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == "RGBA" and im.size == (32, 48)
        got = np.asarray(im)
    with torch.no_grad():
        assert np.array_equal(got, tiling.to_uint8(tiled.decode(z).sample)[0].numpy())
    (api,) = decode_latents(m, EncodedImage(z[0]))
    diff = np.abs(got.astype(int) - np.asarray(api).astype(int))
    assert api.mode == "RGBA" and diff.max() <= 1 and (diff > 0).mean() < 1e-3  # rounding ties only


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_pngs_without_alpha_stream_into_an_rgba_model_with_alpha_1(tmp_path, channels):
    m = _small()
    a = _pixels(32, 16, channels, seed=channels)
    _write_png(tmp_path / "in.png", a)
    colour = a[..., :3] if channels >= 3 else np.repeat(a[..., :1], 3, axis=2)
    alpha = a[..., -1:] if channels == 2 else np.full((32, 16, 1), 255, np.uint8)
    z = tiling.encode_png(m, tmp_path / "in.png", band_rows=1)
    with torch.no_grad():
        want = m.encode(_as_input(np.concatenate([colour, alpha], axis=2))).latents
    assert (z - want).abs().max() <= 1e-5
    (e,) = encode_images(m, tmp_path / "in.png")
    assert (z[0] - e.latents).abs().max() <= 1e-5


def test_cli_stream_rgba_equals_the_in_memory_cli(tmp_path, capsys):
    _small().save_original(tmp_path / "model", "taeqi2_1")
    _write_png(tmp_path / "in.png", _pixels())
    model = ["--model", str(tmp_path / "model"), "--precision", "exact"]
    for d, extra in (("mem", []), ("stream", ["--stream"])):
        assert cli.main(["encode", str(tmp_path / "in.png"), "-o", str(tmp_path / d), *model, *extra]) == 0
        assert cli.main(["decode", str(tmp_path / d / "in.safetensors"), "-o", str(tmp_path / d / "out.png"),
                         *model, *extra]) == 0
    assert "48 RGBA, streamed" in capsys.readouterr().out
    from tinyae import load_latents

    zm, zs = (load_latents(tmp_path / d / "in.safetensors").latents for d in ("mem", "stream"))
    assert (zm - zs).abs().max() <= 1e-5
    with Image.open(tmp_path / "mem" / "out.png") as a, Image.open(tmp_path / "stream" / "out.png") as b:
        assert a.mode == b.mode == "RGBA"
        diff = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


# ---------------------------------------------------------------------------------------------- tinyae info
def test_info_on_original_layout_weights(tmp_path, capsys):
    enc, dec = random_f16(64, 4, seed=1)
    torch.save(enc, tmp_path / "taeqi2_1_encoder.pth")
    torch.save(dec, tmp_path / "taeqi2_1_decoder.pth")
    assert cli.main(["info", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    for line in ("variant          taeqi2_1", "latent channels  64", "scale factor     16 ",
                 "image channels   4 (RGBA, straight alpha)", "saves to         diffusers (tinyae only), original"):
        assert line in text, text
    assert cli.main(["info", str(tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["variant"], doc["latent_channels"], doc["scale_factor"], doc["image_channels"]) == (
        "taeqi2_1", 64, 16, 4)
    assert doc["diffusers_compatible"] is False and doc["same_architecture_as"] == ["taeqi2_1"]


# ---------------------------------------------------------------------------------------------- diffusers checks
def test_wrong_family_is_refused():
    from diffusers import QwenImage21Pipeline
    from tiny_pipelines import build, random_tae

    from tinyae.diffusers import LivePreview, check_vae, pipeline_family, set_vae

    qwen = _small(latent_channels=64)
    assert check_vae(qwen, family="qwenimage21").name == "qwenimage21"
    with pytest.raises(ValueError, match="has 64 latent channels but family 'flux' needs 16 .*taef1"):
        check_vae(qwen, family="flux")
    with pytest.raises(ValueError, match="has 16 latent channels but family 'qwenimage21' needs 64 .*taeqi2_1"):
        check_vae(random_tae("flux"), family="qwenimage21")
    eight = _small(latent_channels=64, patch_size=1)  # 64 channels at 1/8: not Qwen-Image 2.1's 1/16
    with pytest.raises(ValueError, match="1/8 scale but family 'qwenimage21' needs 1/16"):
        check_vae(eight, family="qwenimage21")
    pipe, _ = build("flux", random_tae("flux"))
    with pytest.raises(ValueError, match="has 64 latent channels but FluxPipeline needs 16 .*taef1"):
        set_vae(pipe, qwen)
    with pytest.raises(ValueError, match="has 64 latent channels but FluxPipeline needs 16"):
        LivePreview(qwen, pipe=pipe)
    assert pipe.vae is not qwen
    bare = object.__new__(QwenImage21Pipeline)  # the class decides the family (no components needed)
    assert pipeline_family(bare).name == "qwenimage21"
    with pytest.raises(ValueError, match="has 16 latent channels but QwenImage21Pipeline needs 64 .*taeqi2_1"):
        check_vae(random_tae("flux"), bare)
    assert check_vae(qwen, bare).name == "qwenimage21"


def test_live_preview_unpacks_qwen_image_tokens():
    from tinyae.diffusers import LivePreview
    from tinyae.latents import pack_tokens

    m = _small(latent_channels=64)
    z = torch.randn(1, 64, 3, 2)
    preview = LivePreview(m, family="qwenimage21", height=48, width=32, mode="xt")
    assert torch.equal(preview.to_tae_latents(pack_tokens(z)), z)
    square = LivePreview(m, family="qwenimage21", mode="xt")
    assert torch.equal(square.to_tae_latents(pack_tokens(z[..., :2, :2])), z[..., :2, :2])
    with pytest.raises(ValueError, match="6 Qwen-Image 2.1 tokens do not form a square grid"):
        square.to_tae_latents(pack_tokens(z))
