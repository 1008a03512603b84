"""Every bad input gets one clear exception naming the problem."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from conftest import TAEF2, WEIGHTS
from tinyae import AutoencoderTiny, MissingPartError, WeightsError
from tinyae.nets.model import all_finite
from tinyae.io.layouts import to_original_keys


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return AutoencoderTiny(latent_channels=4, encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)).eval()


# ------------------------------------------------------------------------------------------ tensor inputs
@pytest.mark.parametrize("x, message", [
    (torch.zeros(1, 4, 16, 16), "must have 3 channels, got 4"),
    (torch.zeros(3, 16, 16), "must have 4 dimensions"),
    (torch.zeros(1, 1, 3, 16, 16), "must have 4 dimensions"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "must be a floating-point tensor"),
    # any height and width, and batch 0, run as in diffusers (issue 11, item 10: test_reliability.py::
    # test_d10_any_size_and_batch_zero_as_diffusers); a side of 0 is still an error
    (torch.zeros(1, 3, 0, 16), "empty"),
    (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
    ([[0.0]], "must be a torch.Tensor"),
])
def test_bad_images(small, x, message):
    with pytest.raises(ValueError, match=message):
        small.encode(x)


@pytest.mark.parametrize("z, message", [
    (torch.zeros(1, 16, 4, 4), "must have 4 channels, got 16"),
    (torch.zeros(1, 4, 4), "must have 4 dimensions"),
    (torch.zeros(1, 4, 4, 4, dtype=torch.int64), "must be a floating-point tensor"),
    (torch.tensor([float("nan"), 0.0, float("inf"), 0.0]).reshape(1, 4, 1, 1), "NaN or infinite"),
])
def test_bad_latents(small, z, message):
    with pytest.raises(ValueError, match=message):
        small.decode(z)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
       bad=st.lists(st.tuples(st.integers(0, 299), st.sampled_from([float("nan"), float("inf"), -float("inf")])),
                    max_size=3),
       huge=st.booleans(), seed=st.integers(0, 2**16))
def test_all_finite_is_isfinite(n, dtype, bad, huge, seed):
    """The one-pass check agrees with torch.isfinite, also when the finite values overflow their sum."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    if huge:  # the largest finite values: their sum overflows
        x = x.sign() * torch.finfo(dtype).max
    x = x.to(dtype)
    for i, v in bad:
        x[i % n] = v
    assert all_finite(x) == bool(torch.isfinite(x).all())


def test_latent_size_is_free(small):
    """Latents of any size decode (odd sizes included); only images must be multiples of the scale factor."""
    assert small.decode(torch.zeros(1, 4, 7, 5)).sample.shape == (1, 3, 14, 10)


@pytest.mark.parametrize("kwargs, name", [
    ({"latent_channels": 0}, "latent_channels"),
    ({"in_channels": 2.5}, "in_channels"),
    ({"num_encoder_blocks": (1, 3)}, "encoder_block_out_channels"),
    ({"decoder_block_out_channels": (64, 64, 64)}, "decoder_block_out_channels"),
    ({"act_fn": "tanhh"}, "act_fn"),
    ({"upsample_fn": "area"}, "upsample_fn"),
    ({"latent_magnitude": 0}, "latent_magnitude"),
    ({"encoder_stem_channels": (32, 48)}, "encoder_stem_channels"),
    ({"num_decoder_blocks": (3, -1, 3, 1)}, "num_decoder_blocks"),
])
def test_bad_config(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AutoencoderTiny(**kwargs)


def test_config_is_read_only(small):
    with pytest.raises(AttributeError):
        small.config.latent_channels = 16
    with pytest.raises(TypeError):
        small.config["latent_channels"] = 16


# ------------------------------------------------------------------------------------------ weights faults
def _halves(model):
    sd = model.state_dict()
    return to_original_keys(sd, "encoder"), to_original_keys(sd, "decoder")


def test_missing_tensor(small, tmp_path):
    enc, _ = _halves(small)
    del enc["1.conv.2.weight"]
    save_file(enc, tmp_path / "x_encoder.safetensors")
    with pytest.raises(WeightsError, match=r"x_encoder.safetensors.*missing.*1\.conv\.2\.weight|missing"):
        AutoencoderTiny.from_pretrained(tmp_path / "x_encoder.safetensors")


def test_unexpected_tensor(small, tmp_path):
    enc, _ = _halves(small)
    enc["1.extra.weight"] = torch.zeros(3)
    save_file(enc, tmp_path / "x_encoder.safetensors")
    with pytest.raises(WeightsError, match="unexpected"):
        AutoencoderTiny.from_pretrained(tmp_path / "x_encoder.safetensors")


def test_wrong_shape_against_config(small, tmp_path):
    small.save_pretrained(tmp_path)
    cfg = (tmp_path / "config.json").read_text().replace('"latent_channels": 4', '"latent_channels": 16')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(WeightsError, match="wrong shape"):
        AutoencoderTiny.from_pretrained(tmp_path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file(suffix, tmp_path):
    src = TAEF2[0].read_bytes()
    if suffix == ".safetensors":
        path = tmp_path / "full.safetensors"
        save_file(torch.load(TAEF2[0], weights_only=True), path)
        src = path.read_bytes()
    bad = tmp_path / f"taef2_encoder{suffix}"
    bad.write_bytes(src[: len(src) // 2])
    with pytest.raises(WeightsError, match=f"taef2_encoder{suffix}: cannot read weights"):
        AutoencoderTiny.from_pretrained(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "notes_encoder.pth"
    bad.write_text("this is not a weights file")
    with pytest.raises(WeightsError, match="cannot read weights"):
        AutoencoderTiny.from_pretrained(bad)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_never_executes_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil_encoder.pth"
    with open(bad, "wb") as f:
        pickle.dump({"0.weight": _Evil()}, f, protocol=2)
    with pytest.raises(WeightsError, match="evil_encoder.pth: cannot read weights"):
        AutoencoderTiny.from_pretrained(bad)
    assert not (tmp_path / "pwned").exists()


def test_sha256_mismatch():
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        AutoencoderTiny.from_pretrained(TAEF2[0], sha256="0" * 64)
    AutoencoderTiny.from_pretrained(
        TAEF2[0], sha256="10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6")


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        AutoencoderTiny.from_pretrained((tmp_path / "nope_encoder.pth", None))
    with pytest.raises(WeightsError, match="did you mean|Did you mean"):
        AutoencoderTiny.from_pretrained("taef3")
    with pytest.raises(WeightsError, match="no weights found"):
        AutoencoderTiny.from_pretrained(tmp_path)


def test_nan_in_weights(small, tmp_path):
    enc, _ = _halves(small)
    enc["0.weight"][0, 0, 0, 0] = float("nan")
    save_file(enc, tmp_path / "x_encoder.safetensors")
    with pytest.raises(WeightsError, match="NaN"):
        AutoencoderTiny.from_pretrained(tmp_path / "x_encoder.safetensors")


def test_ambiguous_folder():
    with pytest.raises(WeightsError, match="several models"):
        AutoencoderTiny.from_pretrained(WEIGHTS)


def test_mismatched_halves(small, tmp_path):
    enc, _ = _halves(small)
    save_file(enc, tmp_path / "a_encoder.safetensors")
    with pytest.raises(WeightsError, match="disagree"):
        AutoencoderTiny.from_pretrained((tmp_path / "a_encoder.safetensors", TAEF2[1]))


def test_missing_half_is_a_clear_error():
    enc_only = AutoencoderTiny.from_pretrained((TAEF2[0], None))
    with pytest.raises(MissingPartError, match="without a decoder"):
        enc_only.decode(torch.zeros(1, 32, 2, 2))
    dec_only = AutoencoderTiny.from_pretrained((None, TAEF2[1]))
    with pytest.raises(MissingPartError, match="without an encoder"):
        dec_only.encode(torch.zeros(1, 3, 16, 16))
