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

from tinyae import cli
from tinyae.engine import tiling
from tinyae.data.images import EncodedImage, decode_latents, encode_images

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
    from tinyae.data.latents import pack_tokens

    m = _small(latent_channels=64)
    z = torch.randn(1, 64, 3, 2)
    preview = LivePreview(m, family="qwenimage21", height=48, width=32, mode="xt")
    assert torch.equal(preview.to_tae_latents(pack_tokens(z)), z)
    square = LivePreview(m, family="qwenimage21", mode="xt")
    assert torch.equal(square.to_tae_latents(pack_tokens(z[..., :2, :2])), z[..., :2, :2])
    with pytest.raises(ValueError, match="6 Qwen-Image 2.1 tokens do not form a square grid"):
        square.to_tae_latents(pack_tokens(z))


class _TinyProcessor:
    """Stands in for Qwen3VLProcessor, which transformers cannot build without torchvision (its video processor
    requires it): what QwenImage21Pipeline.__init__ uses, a tokenizer and apply_chat_template returning a batch."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def apply_chat_template(self, messages, **kw):
        return [self.tokenizer.apply_chat_template(messages, **kw)]


def _tiny_qwen_image_21_pipeline():
    """QwenImage21Pipeline with tiny random components, built offline: a word-level tokenizer made here, a one-layer
    transformer; no VAE or text encoder (prompt embeddings are passed directly; set_vae puts the TAE in)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImage21Pipeline, QwenImage21Transformer2DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate([*specials, "[UNK]", *"abcdefghijklmnopqrstuvwxyz.\n "])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="<|endoftext|>",
                                  additional_special_tokens=specials)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                         "{{ c['text'] }}{% endfor %}<|im_end|>\n{% endfor %}")
    torch.manual_seed(0)
    transformer = QwenImage21Transformer2DModel(in_channels=64, out_channels=64, num_layers=1, attention_head_dim=16,
                                                num_attention_heads=2, context_in_dim=16, axes_dims_rope=(4, 6, 6))
    return QwenImage21Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                               processor=_TinyProcessor(tok), transformer=transformer)


def test_set_vae_and_live_preview_in_the_qwen_image_21_pipeline():
    from tiny_pipelines import random_tae

    from tinyae.diffusers import LivePreview, set_vae
    from tinyae.data.latents import unpack_tokens

    pipe = _tiny_qwen_image_21_pipeline()
    with pytest.raises(ValueError, match="has 16 latent channels but QwenImage21Pipeline needs 64 .*taeqi2_1"):
        set_vae(pipe, random_tae("flux"))
    m = _small(latent_channels=64)
    vae = set_vae(pipe, m)
    assert pipe.vae is vae
    preview = LivePreview(m, pipe=pipe, height=64, width=32)
    emb = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))
    out = pipe(prompt_embeds=emb, prompt_embeds_mask=torch.ones(1, 5, dtype=torch.long), height=64, width=32,
               num_inference_steps=2, output_type="latent", callback_on_step_end=preview)
    assert out.images.shape == (1, 8, 64)  # tokens: (64/16) * (32/16) latent pixels of 64 channels
    assert [(f.step, f.kind) for f in preview.frames] == [(0, "xt"), (1, "x0")]
    z = unpack_tokens(out.images, 4, 2)
    last = preview.frames[-1]
    torch.testing.assert_close(last.latents, z)  # the schedule ends at noise 0: x0 is the final latents
    (want,) = decode_latents(m, EncodedImage(z[0]))
    assert last.image.mode == "RGBA" and last.image.size == (32, 64)
    diff = np.abs(np.asarray(last.image).astype(int) - np.asarray(want).astype(int))
    assert diff.max() <= 1
