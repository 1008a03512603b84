"""tinyae.video: parity with an independent implementation (tests/reference_video.py) for every variant, streaming
equal to parallel, frame counts, inferred architecture, strict loading and every weight format."""

from __future__ import annotations

import pytest
import torch

import reference_video as ref
from tinyae import AutoencoderTinyVideo, WeightsError
from tinyae.nets.model import MissingPartError
from tinyae.video import VIDEO_VARIANTS, StreamingDecoder, StreamingEncoder, VideoConfig
from tinyae.video.execute import FrameStream
from tinyae.video.weights import infer_config

torch.set_num_threads(1)
TOL = 1e-5
VARIANTS = list(VIDEO_VARIANTS)


def _video(model, frames: int, seed: int = 0) -> torch.Tensor:
    f = model.config.encoder_space_factor
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, frames, 3, 2 * f, f, generator=g)


@pytest.mark.parametrize("name", VARIANTS)
def test_encode_parity(name, weights, models):
    sd, _ = weights[name]
    m, s = models[name], ref.SPECS[name]
    for frames in (1, 5, 9) if name != "taeh3" else (1, 17, 21):
        x = _video(m, frames, seed=frames)
        want = ref.encode(s, sd, x)
        with torch.no_grad():
            par = m.encode_video(x)
            seq = m.encode_video(x, parallel=False)
        assert par.shape == want.shape, (frames, par.shape, want.shape)
        torch.testing.assert_close(par, want, atol=TOL, rtol=0)
        torch.testing.assert_close(seq, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_decode_parity_and_frame_counts(name, weights, models):
    sd, _ = weights[name]
    m, s = models[name], ref.SPECS[name]
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 13, m.config.latent_channels, 1, 1, generator=g) * 2
    for t in range(1, 14):
        want = ref.decode(s, sd, z[:, :t])
        with torch.no_grad():
            par = m.decode_video(z[:, :t])
            seq = m.decode_video(z[:, :t], parallel=False)
        assert par.shape == want.shape == seq.shape, (t, par.shape, want.shape, seq.shape)
        assert par.shape[1] == m.decoded_frames(t)
        torch.testing.assert_close(par, want, atol=TOL, rtol=0)
        torch.testing.assert_close(seq, want, atol=TOL, rtol=0)


def test_frame_rules(models):
    assert [models["taew2_1"].decoded_frames(t) for t in (1, 2, 21)] == [1, 5, 81]
    assert [models["taeltx_2"].decoded_frames(t) for t in (1, 2, 3)] == [1, 9, 17]
    assert [models["taecvx"].decoded_frames(t) for t in (1, 2, 3, 4)] == [1, 8, 9, 16]
    # taeh3: MiniMax H3's grid, 17c - 12 frames <-> 5c - 3 latents (H3's 124 frames are 37 latents)
    assert [models["taeh3"].decoded_frames(t) for t in (1, 2, 5, 6, 7, 10, 37)] == [1, 5, 5, 18, 22, 22, 124]


def test_taeh3_grid_and_the_original_black_frames(weights, models):
    """Encode pads to H3's grid (5 -> 2 latents, 6 -> 7, 124 -> 37); decoding the grid gives it back. For
    T = 5k + 1 latents the original ends with 4 black padding frames, which tinyae leaves out."""
    sd, _ = weights["taeh3"]
    m, s = models["taeh3"], ref.SPECS["taeh3"]
    with torch.no_grad():
        for frames, latents in ((1, 2), (5, 2), (6, 7), (22, 7), (23, 12)):
            z = m.encode_video(_video(m, frames, seed=frames))
            assert z.shape[1] == latents and m.decoded_frames(latents) == 17 * (latents + 3) // 5 - 12
        z = torch.randn(1, 6, m.config.latent_channels, 1, 1, generator=torch.Generator().manual_seed(2))
        ours, original = m.decode_video(z), ref.decode(s, sd, z, h3_black=True)
        assert ours.shape[1] == 18 and original.shape[1] == 22
        torch.testing.assert_close(original[:, :18], ours, atol=TOL, rtol=0)
        assert original[:, 18:].abs().max() == 0
    from tinyae.video.frames import grid_frames

    assert [grid_frames(m.config, n) for n in (1, 5, 6, 22, 23, 124)] == [5, 5, 22, 22, 39, 124]


def test_two_flag_time_upscale_is_the_originals_short_form():
    from tinyae.video import VideoConfig

    assert VideoConfig(decoder_time_upscale=(False, False)).decoder_time_upscale == (False, False, False)
    assert VideoConfig(decoder_time_upscale=(True, True)).time_factor == 4


@pytest.mark.parametrize("name", VARIANTS)
def test_inferred_architecture(name, weights):
    cfg, enc, dec = infer_config(weights[name][0])
    v = VIDEO_VARIANTS[name]
    assert enc and dec
    assert (cfg.latent_channels, cfg.patch_size, cfg.decoder) == (v.latent_channels, v.patch_size, v.decoder)
    assert cfg.encoder_time_downscale == v.encoder_time_downscale
    assert cfg.decoder_time_upscale == v.decoder_time_upscale


def test_variant_told_apart_by_name_argument_or_file_name(weights, tmp_path):
    sd, _ = weights["taew2_1"]
    torch.save(sd, tmp_path / "my_taecvx_copy.pth")
    assert AutoencoderTinyVideo.from_pretrained(tmp_path / "my_taecvx_copy.pth").config.variant == "taecvx"
    m = AutoencoderTinyVideo.from_pretrained(tmp_path / "my_taecvx_copy.pth", variant="taehv")
    assert m.config.variant == "taehv" and not m.config.frames.keep_all_for_even_latents
    torch.save(sd, tmp_path / "weights.pth")
    assert AutoencoderTinyVideo.from_pretrained(tmp_path / "weights.pth").config.variant is None


def test_tgrow_stored_with_more_channels(tmp_path):
    s = ref.SPECS["taew2_1"]
    sd = ref.random_weights(s, seed=5, tgrow_extra=True)
    assert sd["decoder.7.conv.weight"].shape[0] == 512
    torch.save(sd, tmp_path / "taew2_1.pth")
    m = AutoencoderTinyVideo.from_pretrained(tmp_path / "taew2_1.pth")
    assert m.config.decoder_time_upscale == (False, True, True)
    z = torch.randn(1, 3, 16, 2, 1)
    with torch.no_grad():
        torch.testing.assert_close(m.decode_video(z), ref.decode(s, sd, z), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["taew2_1", "taeltx_2"])
def test_previews_skip_upscaling(name, weights, models):
    sd, _ = weights[name]
    m, s = models[name], ref.SPECS[name]
    z = torch.randn(1, 3, m.config.latent_channels, 2, 1)
    for time, space in ((False, True), (True, False), (False, False)):
        p = m.preview(time=time, space=space)
        tu = tuple(t and time for t in m.config.decoder_time_upscale)
        su = (space,) * 3
        with torch.no_grad():
            got, seq = p.decode_video(z), p.decode_video(z, parallel=False)
        want = ref.decode(s, sd, z, time_up=tu, space_up=su)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)
        torch.testing.assert_close(seq, want, atol=TOL, rtol=0)
    assert m.preview(time=False).decode_video(z).shape[1] == 3


def test_super_decoder_cannot_skip_space(models):
    with pytest.raises(ValueError, match="pixel shuffle"):
        models["taew2_2_super"].preview(space=False)


def test_diffusers_conventions(models):
    m = models["taew2_1"]
    x = _video(m, 5).transpose(1, 2) * 2 - 1  # NCTHW in [-1, 1]
    with torch.no_grad():
        z = m.encode(x).latents
        y = m.decode(z).sample
        assert z.shape == (1, 16, 2, 2, 1)
        assert y.shape == (1, 3, 5, 16, 8) and y.min() >= -1 and y.max() <= 1
        torch.testing.assert_close(z, m.encode_video((x.transpose(1, 2) + 1) / 2).transpose(1, 2))
        torch.testing.assert_close(y, m.decode_video(z.transpose(1, 2)).transpose(1, 2) * 2 - 1)
        assert m.encode(x, return_dict=False)[0].shape == z.shape
    assert m.config.latent_channels == m.config["latent_channels"] == 16
    assert m.temporal_compression_ratio == 4 and m.spatial_compression_ratio == 8


@pytest.mark.parametrize("name", ["taew2_2", "taeh3", "taecvx"])
def test_streaming_classes_equal_parallel(name, models):
    m = models[name]
    x = _video(m, 23, seed=3).transpose(1, 2) * 2 - 1
    with torch.no_grad():
        z = m.encode(x).latents
        y = m.decode(z).sample
    enc = StreamingEncoder(m)
    parts = [enc.push(x[:, :, i]) for i in range(5)] + [enc.push(x[:, :, 5:11]), enc.push(x[:, :, 11:])]
    zs = torch.cat(parts + [enc.flush()], 2)
    torch.testing.assert_close(zs, z, atol=TOL, rtol=0)
    dec = StreamingDecoder(m, num_latents=z.shape[2])
    ys = torch.cat([dec.push(z[:, :, :1]), dec.push(z[:, :, 1:4]), dec.push(z[:, :, 4])], 2) \
        if z.shape[2] > 4 else dec.push(z)
    if z.shape[2] > 5:
        ys = torch.cat([ys, dec.push(z[:, :, 5:])], 2)
    torch.testing.assert_close(ys, y, atol=TOL, rtol=0)
    frames = list(StreamingDecoder(m, num_latents=z.shape[2]).frames(z.unbind(2)))
    torch.testing.assert_close(torch.stack(frames, 2), y, atol=TOL, rtol=0)


def test_cogvideox_stream_needs_the_count(models):
    with pytest.raises(ValueError, match="num_latents"):
        StreamingDecoder(models["taecvx"])


def test_streaming_state_does_not_grow(models):
    m = models["taew2_1"]
    s = FrameStream(m.decoder)
    z = torch.randn(1, 16, 1, 1)

    def held() -> int:
        return sum(t.numel() for t in s._past.values()) + sum(t.numel() for g in s._gathered.values() for t in g)

    for _ in range(3):
        s.push(z)
    after3 = held()
    for _ in range(20):
        s.push(z)
    assert held() == after3


# ----------------------------------------------------------------------------------------- formats, strictness
def test_formats_roundtrip(models, tmp_path):
    m = models["taehv1_5"]
    z = torch.randn(1, 2, 32, 1, 1)
    with torch.no_grad():
        want = m.decode_video(z)
    m.save_pretrained(tmp_path / "folder")
    m.save_original(tmp_path / "taehv1_5.safetensors")
    m.save_original(tmp_path / "x.pth")
    for src in (tmp_path / "folder", tmp_path / "taehv1_5.safetensors", tmp_path / "x.pth"):
        got = AutoencoderTinyVideo.from_pretrained(src, variant=None if src.name != "x.pth" else "taehv1_5")
        assert got.config.variant == "taehv1_5"
        with torch.no_grad():
            torch.testing.assert_close(got.decode_video(z), want, atol=0, rtol=0)
    assert VideoConfig.from_dict(m.config.to_dict()) == m.config


def test_strict_loading(weights, tmp_path):
    sd, _ = weights["taew2_1"]
    for name, bad in {
        "missing": {k: v for k, v in sd.items() if k != "decoder.3.conv.2.bias"},
        "unexpected": {**sd, "decoder.99.weight": torch.zeros(1)},
        "shape": {**sd, "decoder.3.conv.2.bias": torch.zeros(7)},
    }.items():
        torch.save(bad, tmp_path / f"{name}.pth")
        with pytest.raises(WeightsError, match=name if name != "shape" else "wrong shapes"):
            AutoencoderTinyVideo.from_pretrained(tmp_path / f"{name}.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "foo.pth")
    with pytest.raises(WeightsError, match="not a video TAE"):
        AutoencoderTinyVideo.from_pretrained(tmp_path / "foo.pth")
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="latent_channels=16"):
        AutoencoderTinyVideo.from_pretrained(tmp_path / "w.pth", variant="taew2_2")
    with pytest.raises(WeightsError, match="more upscaling"):
        AutoencoderTinyVideo.from_pretrained(tmp_path / "w.pth", decoder_time_upscale=(True, True, True))
    with pytest.raises(KeyError, match="did you mean"):
        AutoencoderTinyVideo.from_pretrained(tmp_path / "w.pth", variant="taew2_11")


def test_one_half_only(weights, tmp_path):
    sd, _ = weights["taew2_1"]
    torch.save({k: v for k, v in sd.items() if k.startswith("decoder.")}, tmp_path / "dec.pth")
    m = AutoencoderTinyVideo.from_pretrained(tmp_path / "dec.pth", variant="taew2_1")
    assert m.encoder is None
    with pytest.raises(MissingPartError, match="no encoder"):
        m.encode(torch.zeros(1, 3, 1, 8, 8))
    assert m.decode(torch.zeros(1, 16, 1, 1, 1)).sample.shape == (1, 3, 1, 8, 8)


def test_bad_inputs(models):
    m = models["taew2_1"]
    with pytest.raises(ValueError, match="multiples of 8"):
        m.encode(torch.zeros(1, 3, 1, 12, 8))
    with pytest.raises(ValueError, match="16, h, w"):
        m.decode(torch.zeros(1, 4, 1, 2, 2))
    with pytest.raises(ValueError, match="N, 3, T, H, W"):
        m.encode(torch.zeros(3, 8, 8))


# ----------------------------------------------------------------------------------------- property
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(["taew2_1", "taeltx_2", "taeh3", "taecvx"]), t=st.integers(1, 12),
       cuts=st.lists(st.integers(1, 4), min_size=1, max_size=6))
def test_streamed_in_any_pieces_equals_parallel(models, name, t, cuts):
    """Latents pushed in arbitrary pieces give the parallel frames; frame counts follow decoded_frames."""
    m = models[name]
    z = torch.randn(1, m.config.latent_channels, t, 1, 1, generator=torch.Generator().manual_seed(t))
    with torch.no_grad():
        want = m.decode(z).sample
    assert want.shape[2] == m.decoded_frames(t)
    dec, pieces, i = StreamingDecoder(m, num_latents=t), [], 0
    for c in cuts * t:
        if i >= t:
            break
        pieces.append(dec.push(z[:, :, i:i + c]))
        i += c
    if i < t:
        pieces.append(dec.push(z[:, :, i:]))
    torch.testing.assert_close(torch.cat(pieces, 2), want, atol=TOL, rtol=0)
