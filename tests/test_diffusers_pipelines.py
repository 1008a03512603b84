"""tinyae's AutoencoderTiny as `pipe.vae` in real diffusers pipelines, built from tiny random components (no hub)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image

import tinyae
from tinyae.diffusers import AutoencoderTiny, LivePreview, check_vae, pipeline_family, set_vae
from tinyae.data.latents import patchify_flux2, unpack_flux2

from tiny_pipelines import FAMILIES, SIZE, build, random_tae, uses_image_argument

NONE_COMPONENTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3",
                   "safety_checker", "feature_extractor", "image_encoder")


@pytest.fixture(scope="module")
def taef2_vae(taef2):
    return AutoencoderTiny.from_model(taef2)


def vae_for(family, taef2_vae):
    """Random weights of the right variant; the real TAEF2 for the FLUX.2 pipelines."""
    return taef2_vae if family.startswith("flux2") else random_tae(family)


def photo(size=SIZE) -> Image.Image:
    from conftest import IMAGES

    return Image.open(IMAGES / "astronaut.png").convert("RGB").resize((size, size))


@pytest.mark.parametrize("family", FAMILIES)
def test_text_to_image_decodes_with_the_tae(family, taef2_vae):
    vae = vae_for(family, taef2_vae)
    pipe, kw = build(family, vae)
    assert pipe.vae is vae and pipe.vae_scale_factor == 8
    assert pipeline_family(pipe).name == family.split("-")[0]
    calls = []
    hook = vae.decoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    try:
        image = pipe(**kw, output_type="pt").images
    finally:
        hook.remove()
    assert image.shape == (1, 3, SIZE, SIZE)
    assert calls == [(1, vae.config.latent_channels, SIZE // 8, SIZE // 8)]
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_img2img_runs_the_encoder(family, taef2_vae):
    vae = vae_for(family, taef2_vae)
    pipe, kw = build(family, vae, img2img=True)
    seen = []
    hook = vae.encoder.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        if uses_image_argument(family):  # FLUX.2 encodes a reference image
            image = pipe(**kw, image=photo(), output_type="pt").images
        else:
            kw.update(num_inference_steps=4)
            image = pipe(**kw, image=photo(), strength=0.5, output_type="pt").images
    finally:
        hook.remove()
    assert seen == [(1, vae.config.latent_channels, SIZE // 8, SIZE // 8)]
    assert image.shape == (1, 3, SIZE, SIZE)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_round_trips_with_tinyae_vae(family, taef2_vae, tmp_path):
    vae = vae_for(family, taef2_vae)
    pipe, kw = build(family, vae)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["vae"] == ["tinyae.diffusers", "AutoencoderTiny"]
    passed = {name: None for name in NONE_COMPONENTS if name in index}
    if family == "sd":
        passed["requires_safety_checker"] = False
    again = type(pipe).from_pretrained(tmp_path, **passed)
    assert type(again.vae) is AutoencoderTiny
    assert again.vae.config.to_dict() == vae.config.to_dict()
    saved = again.vae.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in vae.state_dict().items())
    again.set_progress_bar_config(disable=True)
    kw2 = dict(kw, generator=torch.Generator().manual_seed(0))
    kw["generator"] = torch.Generator().manual_seed(0)
    torch.testing.assert_close(again(**kw2, output_type="pt").images, pipe(**kw, output_type="pt").images)


def test_flux2_batch_norm_is_the_identity_both_ways(taef2_vae):
    """The FLUX.2 pipeline normalises encoded latents and de-normalises before decoding with vae.bn and
    config.batch_norm_eps: with tinyae's VAE both are exactly the identity, so TAEF2 gets its own latent space."""
    pipe, kw = build("flux2", taef2_vae)
    bn = pipe.vae.bn
    assert torch.equal(bn.running_mean, torch.zeros(128)) and torch.equal(bn.running_var, torch.ones(128))
    assert pipe.vae.config.batch_norm_eps == 0.0
    image = pipe.image_processor.preprocess(photo(), height=SIZE, width=SIZE)
    with torch.no_grad():
        encoded = pipe._encode_vae_image(image, generator=None)
        assert torch.equal(encoded, patchify_flux2(pipe.vae.encode(image).latents))
    final = {}

    def keep(p, i, t, kwargs):
        final["latents"] = kwargs["latents"]
        return kwargs

    latents = pipe(**kw, output_type="latent", callback_on_step_end=keep).images
    assert torch.equal(latents, unpack_flux2(final["latents"], SIZE // 8, SIZE // 8))
    assert "batch_norm_eps" not in pipe.vae.config.to_dict()  # not saved: diffusers' AutoencoderTiny would reject it
    assert copy.deepcopy(pipe.vae).config.batch_norm_eps == 0.0


def test_plain_tinyae_model_works_for_inference_and_set_vae_converts_it():
    plain = tinyae.AutoencoderTiny(**{**random_tae("sd").config.init_kwargs()})
    pipe, kw = build("sd", random_tae("sd"))
    pipe.vae = plain  # the headline use: assignment is enough to generate with SD/SDXL/SD3/FLUX pipelines
    assert pipe(**kw, output_type="pt").images.shape == (1, 3, SIZE, SIZE)
    vae = set_vae(pipe, plain)
    assert pipe.vae is vae and isinstance(vae, AutoencoderTiny) and isinstance(vae, tinyae.AutoencoderTiny)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(vae.parameters(), plain.parameters()))


def test_set_vae_accepts_diffusers_own_autoencoder_tiny():
    import diffusers

    theirs = diffusers.AutoencoderTiny(latent_channels=16, encoder_block_out_channels=(8,) * 4,
                                       decoder_block_out_channels=(8,) * 4)
    pipe, kw = build("sd3", random_tae("sd3"))
    assert set_vae(pipe, theirs) is theirs and pipe.vae is theirs
    assert pipe(**kw, output_type="pt").images.shape == (1, 3, SIZE, SIZE)
    flux2, _ = build("flux2", random_tae("flux2"))
    with pytest.raises(ValueError, match="FLUX.2 pipelines need tinyae"):
        set_vae(flux2, diffusers.AutoencoderTiny(latent_channels=32, encoder_block_out_channels=(8,) * 4,
                                                 decoder_block_out_channels=(8,) * 4))


def test_pipeline_reads_dtype_device_and_toggles():
    pipe, kw = build("sd", random_tae("sd"))
    pipe.to(torch.float64)
    assert pipe.vae.dtype == torch.float64 and pipe.vae.device == torch.device("cpu")
    pipe.to(torch.float32)
    kw["generator"] = torch.Generator().manual_seed(0)
    single = pipe(**kw, num_images_per_prompt=2, output_type="pt").images
    pipe.vae.enable_slicing()
    kw["generator"] = torch.Generator().manual_seed(0)
    sliced = pipe(**kw, num_images_per_prompt=2, output_type="pt").images
    torch.testing.assert_close(sliced, single)


@pytest.mark.parametrize("family,wrong,match", [
    ("flux", "sd", "has 4 latent channels but FluxPipeline needs 16 .*taef1"),
    ("sd", "sd3", "has 16 latent channels but StableDiffusionPipeline needs 4 .*taesd"),
    ("flux2", "flux", "has 16 latent channels but Flux2KleinPipeline needs 32 .*taef2"),
    ("sd3", "flux2", "has 32 latent channels"),
])
def test_wrong_family_fails_at_once(family, wrong, match):
    pipe, _ = build(family, random_tae(family))
    model = random_tae(wrong)
    with pytest.raises(ValueError, match=match):
        set_vae(pipe, model)
    with pytest.raises(ValueError, match=match):
        LivePreview(model, pipe=pipe)
    assert pipe.vae is not model


def test_wrong_scale_scaling_or_denoiser_is_refused():
    pipe, _ = build("flux2", random_tae("flux2"))
    sana_like = AutoencoderTiny(latent_channels=32, encoder_stem_channels=(8, 8),
                                encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8,) * 6,
                                num_decoder_blocks=(1, 1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="1/32 scale"):
        set_vae(pipe, sana_like)
    scaled = AutoencoderTiny(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                             encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4)
    with pytest.raises(ValueError, match="scaling_factor=1.0 and shift_factor=0.0"):
        check_vae(scaled, family="flux")
    with pytest.raises(ValueError, match="does not match"):
        check_vae(random_tae("flux"), pipe, family="flux")
    with pytest.raises(ValueError, match="not a pipeline tinyae knows"):
        pipeline_family(object())


def test_loader_keywords():
    vae = random_tae("sd")
    assert vae.config.scaling_factor == 1.0 and vae.config.shift_factor == 0.0
    with pytest.raises(ValueError, match="variant"):
        AutoencoderTiny.from_pretrained("unused", variant="fp16")
    with pytest.raises(ValueError, match="one device"):
        AutoencoderTiny.from_pretrained("unused", device_map={"": "cpu"})


def test_from_pretrained_accepts_what_the_pipeline_loader_passes(tmp_path):
    vae = random_tae("sd3")
    vae.save_pretrained(tmp_path)
    again = AutoencoderTiny.from_pretrained(tmp_path, torch_dtype=torch.float16, device_map="cpu", max_memory=None,
                                            offload_folder=None, offload_state_dict=None, variant=None,
                                            use_safetensors=None, use_flashpack=False, low_cpu_mem_usage=True,
                                            disable_mmap=False)
    assert type(again) is AutoencoderTiny and again.dtype == torch.float16
    saved = again.state_dict()
    assert all(torch.equal(saved[k], v.half()) for k, v in vae.state_dict().items())
