"""taeqi2_1 (Qwen-Image 2.1): the F16 architecture against an independent implementation, its architecture read off
the tensors, every executor on it, and the Qwen-Image 2.1 latent conventions against diffusers' own code."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import decoder_16x, encoder_16x, random_f16

from tinyae import AutoencoderTiny
from tinyae.data import latents
from tinyae.engine import fast_stream, tiling
from tinyae.nets.config import TinyConfig
from tinyae.engine.backends import load_backend
from tinyae.engine.onnx import export_onnx
from tinyae.nets.variants import FAMILIES, get_variant, variant_config
from tinyae.io.files import WeightsError
from tinyae.io.layouts import infer_config, to_diffusers_keys
from tinyae.io.save import save_comfyui

# a narrow F16 (same layer list, fewer channels) for the slow executors; the full-width one for parity and formats
SMALL = {"encoder_block_out_channels": (8, 8, 16, 16), "decoder_block_out_channels": (16, 16, 8, 8),
         "latent_channels": 8}


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """Random F16 weights written in the original script's layout (taeqi2_1_encoder.pth / _decoder.pth)."""
    folder = tmp_path_factory.mktemp("taeqi2_1")
    enc, dec = random_f16(64, 4, seed=1)
    torch.save(enc, folder / "taeqi2_1_encoder.pth")
    torch.save(dec, folder / "taeqi2_1_decoder.pth")
    return folder, enc, dec


def _small(image_channels=4, seed=0, **extra):
    torch.manual_seed(seed)
    cfg = {**variant_config("taeqi2_1"), **SMALL, "in_channels": image_channels, "out_channels": image_channels}
    return AutoencoderTiny(**{**cfg, **extra}).eval()


def test_registry_entry():
    v = get_variant("qwen-image-2.1")
    assert v is get_variant("qwenimage21") is get_variant("taeqi2_1")
    assert v.files == ("taeqi2_1_encoder.pth", "taeqi2_1_decoder.pth") and v.layout == "original"
    cfg = TinyConfig(**variant_config("taeqi2_1"))
    assert (cfg.spatial_scale_factor, cfg.image_channels, cfg.latent_channels) == (16, 4, 64)
    assert not cfg.diffusers_compatible
    assert v.family.vae_scale_factor == 16 and v.family.latent_channels == 64


def test_parity_with_the_independent_implementation(original):
    folder, enc, dec = original
    model = AutoencoderTiny.from_pretrained(folder)
    assert model.config.init_kwargs() == TinyConfig(**variant_config("taeqi2_1")).init_kwargs()
    x01 = torch.rand(2, 4, 64, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z = model.encode(x01 * 2 - 1).latents
        want_z = encoder_16x(enc, x01)
        assert z.shape == (2, 64, 4, 3)
        assert (z - want_z).abs().max() <= 1e-5 * max(1.0, want_z.abs().max().item())
        img = model.decode(want_z).sample
        want = decoder_16x(dec, want_z) * 2 - 1
        assert img.shape == x01.shape
        assert (img - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("image_channels", [3, 4])
def test_architecture_inferred_from_the_tensors(image_channels):
    enc, dec = random_f16(16, image_channels, seed=3)
    p = infer_config({**to_diffusers_keys(enc, "encoder"), **to_diffusers_keys(dec, "decoder")})
    assert (p["in_channels"], p["out_channels"], p["patch_size"], p["latent_channels"]) == (
        image_channels, image_channels, 2, 16)
    assert p["encoder_block_out_channels"] == (64, 64, 128, 256) and p["num_encoder_blocks"] == (1, 3, 3, 3)
    assert p["decoder_block_out_channels"] == (256, 128, 64, 64) and p["num_decoder_blocks"] == (3, 3, 3, 1)
    for half in (enc, dec):  # one half alone still gives the image channels of both sides
        q = infer_config(to_diffusers_keys(half, "encoder" if half is enc else "decoder"))
        assert (q["in_channels"], q["out_channels"], q["patch_size"]) == (image_channels, image_channels, 2)


def test_bad_f16_tensors_are_clear_errors(tmp_path):
    enc, dec = random_f16(16, 4, seed=3)
    dec["19.weight"] = dec["19.weight"][:12]  # decoder of RGB patches, encoder of RGBA patches
    dec["19.bias"] = dec["19.bias"][:12]
    torch.save(enc, tmp_path / "x_encoder.pth")
    torch.save(dec, tmp_path / "x_decoder.pth")
    with pytest.raises(WeightsError, match="disagree"):
        AutoencoderTiny.from_pretrained(tmp_path)
    enc["1.weight"] = enc["1.weight"][:, :10]
    with pytest.raises(WeightsError, match="10 channels"):
        infer_config(to_diffusers_keys(enc, "encoder"))


@pytest.mark.parametrize("params, message", [
    ({"in_channels": 5, "out_channels": 5}, "image channels"),
    ({"in_channels": 4}, "must agree"),
    ({"patch_size": 0}, "patch_size"),
    ({"patch_size": 2, "encoder_stem_channels": (32, 64)}, "exclude"),
])
def test_config_validation(params, message):
    with pytest.raises(ValueError, match=message):
        TinyConfig(**params)


def test_odd_image_sizes_are_a_clear_error():
    with pytest.raises(ValueError, match="multiples of 2"):
        _small().encode(torch.zeros(1, 4, 33, 32))


@settings(max_examples=6, deadline=None)
@given(h=st.integers(1, 4), w=st.integers(1, 3), band=st.integers(1, 3), image_channels=st.sampled_from([3, 4]))
def test_tiled_and_streamed_equal_untiled(h, w, band, image_channels):
    m = _small(image_channels)
    x = torch.rand(1, image_channels, 16 * h, 16 * w) * 2 - 1
    z = torch.randn(1, 8, h, w)
    with torch.no_grad():
        want_z, want = m.encode(x).latents, m.decode(z).sample
        m.enable_tiling(band_rows=band)
        got_z, got = m.encode(x).latents, m.decode(z).sample
    assert (got_z - want_z).abs().max() <= 1e-5 and (got - want).abs().max() <= 1e-5
    assert tiling.receptive_field(m.decoder).scale == 16


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("tiny_chunks", [False, True])
def test_optimize_and_fast_streaming(precision, tiny_chunks, monkeypatch):
    if tiny_chunks:
        monkeypatch.setattr(fast_stream, "MIN_CHUNK_ROWS", 1)
        monkeypatch.setattr(fast_stream, "CHUNK_BYTES", 1)
    m = _small()
    x = torch.rand(1, 4, 48, 32) * 2 - 1
    z = torch.randn(1, 8, 3, 2)
    try:
        fast = m.optimize(precision)
    except ValueError as e:  # bf16 needs AVX512 on this CPU: the clear refusal is the behaviour then
        assert "needs a CPU" in str(e)
        return
    tol = 1e-5 if precision == "fp32" else 0.1
    with torch.no_grad():
        want_z, want = m.encode(x).latents, m.decode(z).sample
        assert (fast.encode(x).latents - want_z).abs().max() <= tol
        assert (fast.decode(z).sample - want).abs().max() <= tol
        in_memory = fast.decode(z).sample
        fast.enable_tiling(band_rows=1)
        streamed = fast.decode(z).sample
        assert (streamed - in_memory).abs().max() <= (1e-5 if precision == "fp32" else 2e-2)
        assert (fast.encode(x).latents - want_z).abs().max() <= tol


def test_onnx_export_in_onnxruntime(tmp_path):
    m = _small()
    export_onnx(m, tmp_path / "onnx")
    ort = load_backend(tmp_path / "onnx", "onnxruntime")
    x = torch.rand(1, 4, 32, 48) * 2 - 1
    with torch.no_grad():
        z = m.encode(x).latents
        assert (ort.encode(x).latents - z).abs().max() <= 1e-4
        assert (ort.decode(z).sample - m.decode(z).sample).abs().max() <= 1e-4


def test_save_load_every_format(tmp_path):
    m = _small(seed=4)
    x = torch.rand(1, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        want = m.decode(m.encode(x).latents).sample
    m.save_pretrained(tmp_path / "diffusers")
    note = (tmp_path / "diffusers" / "config.json").read_text()
    assert "_tinyae_note" in note and '"patch_size": 2' in note  # diffusers cannot load it; tinyae can
    m.save_original(tmp_path / "orig", "taeqi2_1")
    m.save_original(tmp_path / "pth", "taeqi2_1", format="pth")
    save_comfyui(m, tmp_path / "comfy.safetensors")
    for src in (tmp_path / "diffusers", tmp_path / "orig", tmp_path / "pth", tmp_path / "comfy.safetensors"):
        again = AutoencoderTiny.from_pretrained(src)
        assert again.config.init_kwargs() == m.config.init_kwargs(), src
        with torch.no_grad():
            assert torch.equal(again.decode(again.encode(x).latents).sample, want), src


# ---------------------------------------------------------------------------------------------- conventions
def test_latent_conventions_match_diffusers():
    from diffusers import AutoencoderKLQwenImage21
    from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import QwenImage21Pipeline

    import inspect

    defaults = inspect.signature(AutoencoderKLQwenImage21.__init__).parameters
    fam = FAMILIES["qwenimage21"]
    assert list(fam.latents_mean) == defaults["latents_mean"].default
    assert list(fam.latents_std) == defaults["latents_std"].default
    assert fam.latent_channels == defaults["z_dim"].default == 64
    assert fam.vae_scale_factor == defaults["scale_factor_spatial"].default == 16
    # the pipeline's own steps: vae latents (B, C, 1, h, w) -> (z - mean) / std, packed as plain tokens
    vae = torch.randn(2, 64, 1, 4, 6)  # the pipeline's images are multiples of 32
    mean = torch.tensor(defaults["latents_mean"].default).view(1, 64, 1, 1, 1)
    std = torch.tensor(defaults["latents_std"].default).view(1, 64, 1, 1, 1)
    theirs = (vae - mean) / std
    ours = latents.from_vae_latents(vae[:, :, 0], "taeqi2_1")
    assert torch.allclose(ours, theirs[:, :, 0], atol=1e-6)
    assert torch.allclose(latents.to_vae_latents(ours, "qwenimage21"), vae[:, :, 0], atol=1e-5)
    tokens = QwenImage21Pipeline._pack_latents(theirs[:, :, 0], 2, 64, 4, 6)
    assert torch.equal(latents.pack_tokens(theirs[:, :, 0]), tokens)
    unpacked = QwenImage21Pipeline._unpack_latents(tokens, 4 * 16, 6 * 16, 16)
    assert torch.equal(latents.unpack_tokens(tokens, 4, 6), unpacked[:, :, 0])
    with pytest.raises(ValueError, match="do not fit"):
        latents.unpack_tokens(tokens, 5, 5)


# ---------------------------------------------------------------------------------------------- RGBA
def _rgba_image(w=40, h=24):
    import numpy as np
    from PIL import Image

    a = np.random.default_rng(0).integers(0, 256, (h, w, 4), dtype=np.uint8)
    return Image.fromarray(a, "RGBA")


def test_rgba_models_encode_alpha_and_accept_rgb():
    from tinyae.data.images import decode_latents, encode_images

    m = _small()
    rgba, rgb = _rgba_image(), _rgba_image().convert("RGB")
    e_rgba, e_rgb = encode_images(m, [rgba, rgb])
    assert e_rgba.alpha is None and e_rgba.latents.shape == (8, 2, 3)  # alpha went through the model
    x = torch.from_numpy(__import__("numpy").array(rgb)).permute(2, 0, 1).float() / 255
    ones = torch.cat([x, torch.ones(1, 24, 40)])[None]
    padded = torch.nn.functional.pad(ones, (0, 8, 0, 8), mode="reflect")
    with torch.no_grad():
        assert torch.allclose(e_rgb.latents, m.encode(padded * 2 - 1).latents[0], atol=1e-5)  # RGB = alpha 1
    out = decode_latents(m, [e_rgba, e_rgb])
    assert [im.mode for im in out] == ["RGBA", "RGBA"] and out[0].size == (40, 24)


def test_rgb_models_keep_alpha_aside():
    from tinyae.data.images import decode_latents, encode_images

    m = _small(3)
    im = _rgba_image()
    (e,) = encode_images(m, im)
    assert e.alpha is not None
    (out,) = decode_latents(m, e)
    assert out.mode == "RGBA" and out.getchannel("A").tobytes() == im.getchannel("A").tobytes()


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_cli_rgba_roundtrip(tmp_path, fmt):
    from PIL import Image

    from tinyae import cli

    m = _small()
    m.save_original(tmp_path / "model", "taeqi2_1")
    _rgba_image().save(tmp_path / "in.png")
    assert cli.main(["encode", str(tmp_path / "in.png"), "-o", str(tmp_path / "lat"), "--model",
                     str(tmp_path / "model")]) == 0
    (latent,) = (tmp_path / "lat").iterdir()
    out = tmp_path / f"out.{fmt}"
    assert cli.main(["decode", str(latent), "-o", str(out), "--model", str(tmp_path / "model")]) == 0
    with Image.open(out) as im:
        assert im.mode == "RGBA" and im.size == (40, 24)
