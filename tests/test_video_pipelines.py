"""Video TAEs as `pipe.vae` in real diffusers video pipelines (tiny random components, embeddings passed directly),
and live previews of video generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyae.diffusers import LivePreview, set_vae
from tinyae.video.pipelines import PipelineVideoVAE, video_pipeline_family
from tinyae.video.preview import VideoLivePreview

from tiny_pipelines import build as build_image, random_tae
from tiny_video_pipelines import CONDITIONED, PIPELINES, build, random_video_tae


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def to_tae(name, latents, pipe, side):
    """The pipeline's latents as the TAE's (B, C, T, h, w), written out here independently of tinyae."""
    if name == "cogvideox":
        return latents.permute(0, 2, 1, 3, 4)
    if name == "ltx2":
        h = side // 32
        b, s, c = latents.shape
        return latents.reshape(b, s // (h * h), h, h, c).permute(0, 4, 1, 2, 3)
    return latents


@pytest.mark.parametrize("name", list(PIPELINES))
def test_text_to_video_decodes_the_denoised_latents_with_the_tae(name):
    variant, frames, side = PIPELINES[name]
    tae = random_video_tae(variant)
    pipe, kw = build(name, None)
    vae = set_vae(pipe, tae)
    assert pipe.vae is vae and isinstance(vae, PipelineVideoVAE) and video_pipeline_family(pipe) is vae_family(vae)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(vae.parameters(), tae.parameters()))
    seen, final = [], {}
    inner = vae.decode
    vae.decode = lambda z, *a, **k: (seen.append(z.clone()), inner(z, *a, **k))[1]

    def keep(p, i, t, kwargs):
        final["latents"] = kwargs["latents"].clone()
        return kwargs

    out = pipe(**kw, output_type="pt", callback_on_step_end=keep) if name != "hunyuanvideo1.5" else \
        pipe(**kw, output_type="pt")
    video = out.frames
    assert video.shape == (1, frames, 3, side, side)
    assert torch.isfinite(video).all() and video.min() >= 0 and video.max() <= 1
    assert len(seen) == 1 and seen[0].shape[1] == tae.config.latent_channels
    if final:  # the pipeline's de-normalisation is the identity: the TAE gets the denoiser's latents
        torch.testing.assert_close(seen[0], to_tae(name, final["latents"], pipe, side), rtol=0, atol=0)
    expected = (tae.decode(seen[0]).sample.transpose(1, 2) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(video, expected, rtol=0, atol=1e-6)


# frames out: the pipeline's own count (HunyuanVideo I2V's latent_concat drops the first 4 decoded frames)
CONDITIONED_FRAMES = {"wan-i2v": 5, "wan-v2v": 5, "hunyuanvideo-i2v": 5, "cogvideox-i2v": 9, "cogvideox-v2v": 9,
                      "ltx2-i2v": 9, "hunyuanvideo1.5-i2v": 5}


@pytest.mark.parametrize("name", list(CONDITIONED))
def test_image_and_video_to_video_encode_with_the_tae(name):
    """These pipelines also encode (the image, or the source video) with the VAE: `retrieve_latents` reads
    `.latents`, the pipelines' normalisation of the encoded latents is the identity, the video has their size."""
    variant, frames, side = CONDITIONED[name]
    tae = random_video_tae(variant)
    pipe, kw = build(name, None)
    vae = set_vae(pipe, tae)
    encoded, decoded = [], []
    enc, dec = vae.encode, vae.decode
    vae.encode = lambda x, *a, **k: (encoded.append((x.clone(), out := enc(x, *a, **k))), out)[1]
    vae.decode = lambda z, *a, **k: (decoded.append(z.clone()), dec(z, *a, **k))[1]
    if name.endswith("-v2v"):
        del kw["num_frames"]  # the source video's length
    video = pipe(**kw, output_type="pt").frames
    assert video.shape == (1, CONDITIONED_FRAMES[name], 3, side, side) and torch.isfinite(video).all()
    assert encoded and len(decoded) == 1
    for x, out in encoded:
        assert x.ndim == 5 and x.shape[1] == 3 and x.min() >= -1 and x.max() <= 1
        n = x.shape[2] if name.endswith("-v2v") or name == "wan-i2v" else 1
        f, t = vae.spatial_compression_ratio, vae.temporal_compression_ratio
        assert x.shape[2] == n  # an image is encoded as a 1-frame video: one latent, as the pipelines' VAEs give
        assert out.latents.shape == (1, tae.config.latent_channels, -(-n // t), x.shape[3] // f, x.shape[4] // f)
        torch.testing.assert_close(out.latents, tae.encode(x).latents, rtol=0, atol=0)
    expected = (tae.decode(decoded[0]).sample.transpose(1, 2) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(video, expected[:, expected.shape[1] - video.shape[1]:], rtol=0, atol=1e-6)


def test_video_to_video_pipeline_built_with_the_pipeline_vae():
    vae = PipelineVideoVAE.from_model(random_video_tae("taew2_1"))
    assert vae.temperal_downsample == [False, True, True]  # WanVideoToVideoPipeline: 2**sum = 4, 2**len = 8
    assert PipelineVideoVAE("taew2_2", encoder=False).temperal_downsample == [False, False, True, True]
    pipe, kw = build("wan-v2v", vae)
    del kw["num_frames"]
    assert pipe.vae_scale_factor_temporal == 4 and pipe.vae_scale_factor_spatial == 8
    assert pipe(**kw, output_type="pt").frames.shape == (1, 5, 3, 16, 16)


def vae_family(vae):
    from tinyae.video.variants import VIDEO_VARIANTS

    return VIDEO_VARIANTS[vae.config.variant].family


def test_pipeline_built_with_the_pipeline_vae_directly():
    vae = PipelineVideoVAE.from_model(random_video_tae("taew2_1"))
    pipe, kw = build("wan", vae)
    assert pipe.vae_scale_factor_temporal == 4 and pipe.vae_scale_factor_spatial == 8
    assert pipe(**kw, output_type="pt").frames.shape == (1, 5, 3, 16, 16)
    assert vae.config.latents_mean == [0.0] * 16 and vae.config.z_dim == 16 and vae.config.scaling_factor == 1.0
    assert torch.equal(vae.latents_std, torch.ones(16))


@pytest.mark.parametrize("pipeline,model,match", [
    ("hunyuanvideo", "taew2_1", "taew2_1 is for wan2.1 latents, but HunyuanVideoPipeline denoises .*taehv"),
    ("wan", "taehv", "taehv is for hunyuanvideo latents, but WanPipeline .*taew2_1"),
    ("ltx2", "taew2_1", "16 latent channels but LTX2Pipeline needs 128 .*taeltx_2"),
    ("cogvideox", "taehv1_5", "32 latent channels but CogVideoXPipeline needs 16 .*taecvx"),
    ("wan", "image", "WanPipeline is a video pipeline .* needs a video TAE .*taew2_1"),
])
def test_wrong_family_fails_at_once(pipeline, model, match):
    pipe, _ = build(pipeline, None)
    before = pipe.vae
    tae = random_tae("sd3") if model == "image" else random_video_tae(model)
    with pytest.raises(ValueError, match=match):
        set_vae(pipe, tae)
    with pytest.raises(ValueError, match=match):
        LivePreview(tae, pipe=pipe)
    assert pipe.vae is before


def test_video_tae_refused_by_image_pipelines_and_preview_networks_refused():
    pipe, _ = build_image("sd3", random_tae("sd3"))
    with pytest.raises(ValueError, match="StableDiffusion3Pipeline is not a video pipeline"):
        set_vae(pipe, random_video_tae("taew2_1"))
    with pytest.raises(ValueError, match="not a video pipeline"):
        LivePreview(random_video_tae("taew2_1"), pipe=pipe)
    wan, _ = build("wan", None)
    with pytest.raises(ValueError, match="skips temporal or spatial upscaling"):
        set_vae(wan, random_video_tae("taew2_1").preview(time=False))


def test_live_preview_x0_strips_and_last_step_is_the_output():
    tae = random_video_tae("taew2_1")
    pipe, kw = build("wan", None)
    set_vae(pipe, tae)
    preview = LivePreview(tae, pipe=pipe)
    assert type(preview) is VideoLivePreview
    first = LivePreview(tae, pipe=pipe, frames="first")
    both = lambda p, i, t, k: first(p, i, t, preview(p, i, t, k))  # noqa: E731
    kw["num_inference_steps"] = 3
    out = pipe(**kw, output_type="np", callback_on_step_end=both).frames  # (1, T, H, W, 3) in [0, 1]
    assert [f.kind for f in preview.frames] == ["xt", "x0", "x0"]
    assert [im.size for im in preview.images] == [(4 * 16, 16)] * 3  # 4 of the 5 frames side by side
    assert len(preview.frames[-1].video) == 5 and first.images[-1].size == (16, 16)
    final = (out[0] * 255).round().astype(np.uint8)
    for k, im in enumerate(preview.frames[-1].video):  # the last x0 is the final latents: the output itself
        assert np.abs(np.asarray(im).astype(int) - final[k]).max() <= 1
    assert np.abs(np.asarray(first.images[-1]).astype(int) - final[0]).max() <= 1  # first latent -> first frame


def test_live_preview_ltx2_tokens_cogvideox_layout_and_cheap_previews():
    tae = random_video_tae("taeltx_2")
    pipe, kw = build("ltx2", None)
    set_vae(pipe, tae)
    preview = LivePreview(tae, pipe=pipe, height=64, width=64, time=False, strip=2)
    pipe(**kw, output_type="pt", callback_on_step_end=preview)
    assert [f.latents.shape for f in preview.frames] == [(1, 128, 2, 2, 2)] * 2
    assert len(preview.frames[-1].video) == 2 and preview.images[-1].size == (2 * 64, 64)  # one frame per latent
    no_size = LivePreview(tae, pipe=pipe, strict=True)
    with pytest.raises(ValueError, match="pass height= and width="):
        pipe(**kw, output_type="pt", callback_on_step_end=no_size)

    cvx = random_video_tae("taecvx")
    pipe, kw = build("cogvideox", None)
    set_vae(pipe, cvx)
    preview = LivePreview(cvx, pipe=pipe, space=False)
    pipe(**kw, output_type="pt", callback_on_step_end=preview)
    assert [f.kind for f in preview.frames] == ["xt", "xt"]  # CogVideoXDDIMScheduler: no x0 estimate here
    assert preview.frames[0].latents.shape == (1, 16, 3, 2, 2)
    assert preview.images[0].size == (4 * 2, 2)  # frames at 1/8 size


def test_video_preview_arguments():
    tae = random_video_tae("taew2_1")
    with pytest.raises(ValueError, match="frames must be"):
        LivePreview(tae, frames="all")
    with pytest.raises(ValueError, match="strip must be"):
        LivePreview(tae, strip=0)
    with pytest.raises(ValueError, match="pass pipe=, not family="):
        LivePreview(tae, family="wan2.1")
    assert isinstance(LivePreview(random_tae("sd")), LivePreview)
    assert not isinstance(LivePreview(random_tae("sd")), VideoLivePreview)


@pytest.mark.parametrize("name", ["cogvideox", "cogvideox-i2v"])
def test_pipeline_save_pretrained_and_from_pretrained_keep_the_tae(name, tmp_path):
    """`pipe.save_pretrained` writes the TAE as the pipeline's vae/ folder; `DiffusionPipeline.from_pretrained`
    loads it back (model_index.json: ["tinyae.video.pipelines", "PipelineVideoVAE"]) and makes the same video."""
    import diffusers

    from tinyae import AutoencoderTinyVideo

    variant = CONDITIONED.get(name, PIPELINES.get(name))[0]
    pipe, kw = build(name, None)
    set_vae(pipe, random_video_tae(variant))
    pipe.save_pretrained(tmp_path)
    assert pipe.config.vae == ("tinyae.video.pipelines", "PipelineVideoVAE")
    nones = {k: None for k in ("text_encoder", "tokenizer")}
    again = diffusers.DiffusionPipeline.from_pretrained(tmp_path, **nones)
    assert type(again) is type(pipe) and type(again.vae) is PipelineVideoVAE and again.vae.config.variant == variant
    assert all(torch.equal(a, b) for a, b in zip(again.vae.state_dict().values(), pipe.vae.state_dict().values()))
    assert again.vae_scale_factor_spatial == 8 and again.vae_scaling_factor_image == 1.0
    kw2 = dict(kw, generator=torch.Generator().manual_seed(0))
    kw["generator"] = torch.Generator().manual_seed(0)
    again.set_progress_bar_config(disable=True)
    torch.testing.assert_close(again(**kw2, output_type="pt").frames, pipe(**kw, output_type="pt").frames,
                               rtol=0, atol=1e-6)  # float rounding of the reloaded transformer
    plain = AutoencoderTinyVideo.from_pretrained(tmp_path / "vae")  # the folder is an ordinary tinyae folder
    assert plain.config.variant == variant


@pytest.mark.slow  # a second Python process importing diffusers
def test_saved_pipeline_loads_in_a_fresh_process(tmp_path):
    """diffusers imports no module a model_index.json names: loading before tinyae.video.pipelines is imported fails
    with diffusers' own error naming it; after the import it loads."""
    import subprocess
    import sys

    pipe, _ = build("cogvideox", None)
    set_vae(pipe, random_video_tae("taecvx"))
    pipe.save_pretrained(tmp_path)
    code = """if True:
        import sys, diffusers
        load = lambda: diffusers.DiffusionPipeline.from_pretrained(sys.argv[1], text_encoder=None, tokenizer=None)
        try:
            load()
        except ValueError as e:
            print("REFUSED", "import tinyae.video.pipelines before" in str(e))
        import tinyae.video.pipelines
        p = load()
        print("LOADED", type(p.vae).__name__, p.vae.config.variant)"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-5:] == ["REFUSED", "True", "LOADED", "PipelineVideoVAE", "taecvx"]
