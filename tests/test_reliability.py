"""Regression tests of issue 11: nothing lost, nothing poisoned, nothing chosen by a file (see docs/reliability.md).

Each test names the defect it proves fixed (D1..D10). Tiny random models and images: the file runs in seconds.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import png
import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

import tinyae
import tinyae.data.images
import tinyae.data.metrics
import tinyae.io.load
from tinyae import AutoencoderTiny, WeightsError, cli
from tinyae.data.codec import LatentFileError, load_latents, save_latents
from tinyae.data.images import decode_latents, read_image, to_source

from hubserver import point_hub
from reliability_helpers import saved_model, tiny_images, tiny_model
from test_hub import assert_cache_trustworthy, diffusers_files, hub, offline, same_weights  # noqa: F401


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def model(model_dir):
    return AutoencoderTiny.from_pretrained(model_dir)


# ---------------------------------------------------------------------------------------------- D1
def test_d1_batched_latent_file_decodes_each_latent_to_its_own_name(tmp_path, model_dir, model, capsys):
    torch.manual_seed(1)
    za, zb = torch.randn(2, 4, 3, 3), torch.randn(4, 3, 3)
    lat = tmp_path / "lat"
    save_latents(lat / "a.safetensors", za)
    save_latents(lat / "b.safetensors", zb)
    out = tmp_path / "out"
    # --precision exact: byte-equal to decode_latents on the eager model (the default, auto, may round otherwise)
    assert cli.main(["decode", str(lat), "-o", str(out), "--model", str(model_dir), "--precision", "exact"]) == 0
    assert "3 done, 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["a_0.png", "a_1.png", "b.png"]
    expect = decode_latents(model, [za[0], za[1], zb])
    for name, im in zip(["a_0.png", "a_1.png", "b.png"], expect):
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(im)), name
    # one file holding a batch cannot go to one image file
    assert cli.main(["decode", str(lat / "a.safetensors"), "-o", str(tmp_path / "x.png"), "--model",
                     str(model_dir)]) == 1
    assert "holds 2 latents" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------- D2
def test_d2_roundtrip_checks_every_output_it_writes(tmp_path, model_dir, capsys):
    (src,) = tiny_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "im00.decoded.png").write_bytes(b"mine")  # only the decoded image exists
    assert cli.main(["roundtrip", str(src), "-o", str(out), "--model", str(model_dir)]) == 1
    assert "already exist" in capsys.readouterr().err
    assert (out / "im00.decoded.png").read_bytes() == b"mine" and not (out / "im00.compare.png").exists()


def test_d2_roundtrip_into_its_input_folder_never_overwrites_an_input(tmp_path, model_dir, capsys):
    folder = tmp_path / "in"
    tiny_images(folder, 1)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(folder / "im00.decoded.png")  # an input of that name
    before = (folder / "im00.decoded.png").read_bytes()
    for extra in ([], ["--force"]):
        assert cli.main(["roundtrip", str(folder), "-o", str(folder), "--model", str(model_dir), *extra]) == 1
        assert "is one of the inputs" in capsys.readouterr().err
        assert (folder / "im00.decoded.png").read_bytes() == before


def test_d2_decode_never_overwrites_its_own_input(tmp_path, model_dir, capsys):
    path = tmp_path / "x.latent.png"
    save_latents(path, torch.zeros(4, 3, 3))
    before = path.read_bytes()
    assert cli.main(["decode", str(path), "-o", str(path), "--force", "--model", str(model_dir)]) == 1
    assert "is one of the inputs" in capsys.readouterr().err and path.read_bytes() == before


def test_d2_convert_never_overwrites_its_source(tmp_path, model_dir, capsys):
    assert cli.main(["convert", str(model_dir), str(tmp_path / "m.safetensors"), "--to", "safetensors"]) == 0
    before = (tmp_path / "m.safetensors").read_bytes()
    assert cli.main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "m.safetensors"), "--to",
                     "safetensors", "--force"]) == 1
    assert "is the source" in capsys.readouterr().err and (tmp_path / "m.safetensors").read_bytes() == before


# ---------------------------------------------------------------------------------------------- D3
def test_d3_hub_config_corrupted_in_flight_is_evicted_and_downloaded_again(hub, tmp_path, monkeypatch):
    m = tiny_model()
    hub.add_repo("someone/tiny-vae", diffusers_files(m, tmp_path / "m"))
    hub.fault("someone/tiny-vae", "config.json", "corrupt")
    with pytest.raises(WeightsError, match=r"config.json: .*removed from the cache"):
        AutoencoderTiny.from_pretrained("someone/tiny-vae")
    assert_cache_trustworthy(hub.cache, hub.repos["someone/tiny-vae"].files)
    hub.heal()
    assert same_weights(AutoencoderTiny.from_pretrained("someone/tiny-vae"), m)
    with monkeypatch.context() as mp:
        offline(mp)
        assert same_weights(AutoencoderTiny.from_pretrained("someone/tiny-vae"), m)


def test_d3_same_length_edit_of_a_cached_config_is_caught_by_its_git_sha1(hub, tmp_path, monkeypatch):
    m = tiny_model()
    hub.add_repo("someone/tiny-vae", diffusers_files(m, tmp_path / "m"))
    AutoencoderTiny.from_pretrained("someone/tiny-vae")
    for online in (False, True):
        (blob,) = [p for p in hub.cache.rglob("blobs/*") if b'"act_fn"' in p.read_bytes()]
        blob.write_bytes(blob.read_bytes().replace(b'"relu"', b'"gelu"'))  # still valid: another network
        with monkeypatch.context() as mp:
            if not online:
                offline(mp)
            with pytest.raises(WeightsError, match=r"config.json: git sha1 mismatch.*removed from the cache"):
                AutoencoderTiny.from_pretrained("someone/tiny-vae")
        assert not blob.exists()
        loaded = AutoencoderTiny.from_pretrained("someone/tiny-vae")  # downloaded again from the healthy hub
        assert loaded.config.act_fn == "relu" and same_weights(loaded, m)


def test_d3_hub_config_that_does_not_validate_is_evicted(hub, tmp_path):
    files = diffusers_files(tiny_model(), tmp_path / "m")
    cfg = json.loads(files["config.json"])
    hub.add_repo("someone/bad-cfg", {**files, "config.json": json.dumps({**cfg, "act_fn": "tanhh"}).encode()})
    with pytest.raises(WeightsError, match=r"someone/bad-cfg/config.json: bad config.*act_fn.*removed"):
        AutoencoderTiny.from_pretrained("someone/bad-cfg")
    assert not list(hub.cache.rglob("snapshots/*/config.json"))


# ---------------------------------------------------------------------------------------------- D4
@pytest.mark.parametrize("recorded", ["attacker/evil-tae", "LOCAL"])
def test_d4_latent_metadata_cannot_choose_the_model(tmp_path, model_dir, monkeypatch, capsys, recorded):
    monkeypatch.delenv(cli.MODEL_ENV, raising=False)
    point_hub(monkeypatch, offline=True)
    recorded = str(model_dir) if recorded == "LOCAL" else recorded
    save_latents(tmp_path / "x.safetensors", torch.zeros(4, 3, 3), variant=recorded)
    out = tmp_path / "out"
    assert cli.main(["decode", str(tmp_path / "x.safetensors"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not a built-in variant" in err and "--model" in err
    assert not (out / "x.png").exists()
    assert cli.main(["decode", str(tmp_path / "x.safetensors"), "-o", str(out), "--model", str(model_dir)]) == 0


# ---------------------------------------------------------------------------------------------- D5
def _weights_case(kind: str, folder, model) -> "os.PathLike":
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    path = folder / {"empty-pth": "e.pth", "fp8": "w.safetensors", "sparse": "w.pth", "bad-key": "w.safetensors",
                     "missing-last": "w.safetensors", "extra-last": "w.safetensors"}.get(kind, "w.safetensors")
    if kind == "empty-pth":
        path.write_bytes(b"")
    elif kind == "empty-safetensors":
        path.write_bytes(b"")
    elif kind == "fp8":
        save_file({k: v.to(torch.float8_e4m3fn) for k, v in sd.items()}, str(path))
    elif kind == "sparse":
        torch.save({k: (v.to_sparse() if v.dim() == 4 else v) for k, v in sd.items()}, str(path))
    elif kind == "bad-key":
        save_file({**sd, "encoder.layers.foo": torch.zeros(1)}, str(path))
    elif kind == "missing-last":
        last = max(int(k.split(".")[2]) for k in sd if k.startswith("encoder."))
        save_file({k: v for k, v in sd.items() if not k.startswith(f"encoder.layers.{last}.")}, str(path))
    elif kind == "extra-last":
        last = max(int(k.split(".")[2]) for k in sd if k.startswith("decoder."))
        save_file({**sd, f"decoder.layers.{last + 1}.weight": torch.zeros(3, 3, 3, 3)}, str(path))
    elif kind == "config-type":
        model.save_pretrained(folder)
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "latent_channels": "4"}))
        return folder
    return path


@pytest.mark.parametrize("kind", ["empty-pth", "empty-safetensors", "fp8", "sparse", "bad-key", "missing-last",
                                  "extra-last", "config-type"])
def test_d5_every_weight_problem_is_one_weights_error_naming_the_file(tmp_path, model, kind):
    source = _weights_case(kind, tmp_path, model)
    with pytest.raises(WeightsError) as info:
        AutoencoderTiny.from_pretrained(source)
    text = str(info.value)
    named = str(source / "config.json") if kind == "config-type" else str(source)
    assert named in text, text
    assert "\n" not in text


def test_d5_cli_one_line_for_an_empty_weights_file(tmp_path, capsys):
    (tmp_path / "e.pth").write_bytes(b"")
    (src,) = tiny_images(tmp_path / "in", 1)
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "e.pth")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tinyae: error: {tmp_path / 'e.pth'}: cannot read weights") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- D6
@pytest.mark.parametrize("key, value", [("latent_shift", float("nan")), ("latent_shift", float("inf")),
                                        ("latent_magnitude", float("inf")), ("shift_factor", float("nan")),
                                        ("scaling_factor", float("inf"))])
def test_d6_config_values_are_validated_at_load_time(tmp_path, model, key, value):
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, key: value}))  # NaN / Infinity in the JSON
    with pytest.raises(WeightsError, match=f"config.json.*{key}"):
        AutoencoderTiny.from_pretrained(tmp_path)


def test_d6_info_says_which_config_values_no_tensor_confirms(model_dir, capsys):
    assert cli.main(["info", str(model_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config_from"] == "config.json"
    assert {"upsampling_scaling_factor", "act_fn", "latent_shift"} <= set(doc["not_checked_against_tensors"])
    assert cli.main(["info", str(model_dir)]) == 0
    assert "upsampling_scaling_factor=2" in capsys.readouterr().out


@pytest.mark.parametrize("x", [torch.full((1, 3, 16, 16), 1e30), torch.full((1, 3, 16, 16), 1e300,
                                                                                dtype=torch.float64)])
def test_d6_huge_finite_images_never_give_non_finite_latents(loud, x):
    with pytest.raises(ValueError, match="NaN or infinite latents"):
        loud.encode(x)


def test_d6_decoder_overflow_never_gives_non_finite_images(model):
    """The decoder clamps its input (tanh), so only weights that overflow can do it: the output is checked."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1e6)
    with pytest.raises(ValueError, match="NaN or infinite images"):
        m.decode(torch.ones(1, 4, 2, 2))


@pytest.fixture(scope="module")
def loud(model):
    """Weights 10x the tiny model's: every layer amplifies, so huge finite inputs overflow float32."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(10)
    return m


@pytest.mark.parametrize("planes", [3, 4])
def test_d6_16bit_colour_png_is_read_at_full_precision(tmp_path, planes):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 65536, (5, 7, planes), dtype=np.uint16)
    path = tmp_path / "deep.png"
    with open(path, "wb") as f:
        png.Writer(7, 5, greyscale=False, alpha=planes == 4, bitdepth=16).write(f, a.reshape(5, -1).tolist())
    s = to_source(path)
    assert np.array_equal(s.rgb, a[..., :3].astype(np.float32) / 65535)
    if planes == 4:
        assert np.array_equal(s.alpha, np.round(a[..., 3] / 65535 * 255).astype(np.uint8))


def _latent_png(path, **edit):
    save_latents(path, torch.zeros(4, 3, 3))
    with Image.open(path) as im:
        meta, image = json.loads(im.text["tinyae"]), im.copy()
    info = PngImagePlugin.PngInfo()
    info.add_text("tinyae", json.dumps({**meta, **edit}))
    image.save(path, pnginfo=info)


@pytest.mark.parametrize("edit, field", [({"magnitude": 0}, "magnitude"), ({"magnitude": -3}, "magnitude"),
                                         ({"magnitude": 1e30}, "magnitude"), ({"shift": 100}, "shift"),
                                         ({"latent_channels": 0}, "latent_channels"),
                                         ({"latent_channels": -4}, "latent_channels"),
                                         ({"latent_channels": "4"}, "latent_channels"),
                                         ({"grayscale": "no"}, "grayscale"), ({"magnitude": None}, "magnitude")])
def test_d6_latent_png_metadata_is_range_checked(tmp_path, edit, field):
    path = tmp_path / "x.latent.png"
    _latent_png(path, **edit)
    with pytest.raises(LatentFileError, match=f"{re.escape(str(path))}: bad {field}"):
        load_latents(path)


def test_d6_safetensors_grayscale_must_be_a_bool(tmp_path):
    path = tmp_path / "x.safetensors"
    save_latents(path, torch.zeros(4, 3, 3))
    save_file({"latents": torch.zeros(4, 3, 3)}, str(path), metadata={"format": "tinyae.latents",
                                                                        "grayscale": "no"})
    with pytest.raises(LatentFileError, match="bad grayscale 'no'"):
        load_latents(path)


def test_d6_roundtrip_mean_is_never_inf(tmp_path, model_dir, monkeypatch, capsys):
    folder = tmp_path / "in"
    tiny_images(folder, 2)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    real = tinyae.data.metrics.psnr
    calls = iter([float("inf"), float("inf"), 20.0, 21.0])  # the first image comes back exactly
    monkeypatch.setattr(tinyae.data.metrics, "psnr", lambda a, b: next(calls, real(a, b)))
    assert cli.main(["roundtrip", str(folder), "--model", str(model_dir), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)  # valid JSON: no Infinity
    assert doc["mean"]["psnr"] == 20.0 and doc["mean"]["exact"] == 1
    assert doc["files"][1]["psnr"] is None and doc["files"][1]["psnr_exact"] is True
    assert all(v is None or math.isfinite(v) for v in doc["mean"].values())


# ---------------------------------------------------------------------------------------------- D7
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp_of(output, pid: int):
    from tinyae.io.files import _owner_tag

    host = _owner_tag().rsplit("-", 1)[0]
    return output.parent / f".{output.name}.{host}-{pid}.abc123.tmp"


def test_d7_cleanup_keeps_a_live_runs_temporary_file_and_removes_a_dead_ones(tmp_path, model_dir):
    (src,) = tiny_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    live, dead = _temp_of(out / "im00.safetensors", os.getpid()), _temp_of(out / "im00.safetensors", _dead_pid())
    foreign = out / ".im00.safetensors.x7Kq2.tmp"  # the old naming, of unknown owner: never removed
    for p in (live, dead, foreign):
        p.write_bytes(b"partial")
    assert cli.main(["encode", str(src), "-o", str(out), "--model", str(model_dir)]) == 0
    assert live.exists() and foreign.exists() and not dead.exists()


def test_d7_an_invalid_model_changes_nothing_on_disk(tmp_path, capsys):
    (src,) = tiny_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    dead = _temp_of(out / "im00.safetensors", _dead_pid())
    dead.write_bytes(b"partial")
    assert cli.main(["encode", str(src), "-o", str(out), "--model", str(tmp_path / "nope.pth")]) == 1
    assert dead.exists()


def test_d7_temporary_files_are_owned_and_fsynced_before_the_rename(tmp_path, monkeypatch):
    from tinyae.io.files import atomic_write

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", os.path.basename(a))) or
                        real_replace(a, b))
    atomic_write(tmp_path / "f.bin", lambda p: open(p, "wb").write(b"x"))
    assert events[0] == "fsync" and events[1][0] == "replace"
    assert re.fullmatch(rf"\.f\.bin\.[A-Za-z0-9-]+-{os.getpid()}\.[^.]+\.tmp", events[1][1])


def test_d7_resume_never_trusts_an_output_of_another_model(tmp_path, capsys):
    (src,) = tiny_images(tmp_path / "in", 1)
    a, b = saved_model(tmp_path / "a", seed=1), saved_model(tmp_path / "b", seed=2)
    out = tmp_path / "out"
    for fmt, name in (("safetensors", "im00.safetensors"), ("png", "im00.latent.png")):
        assert cli.main(["encode", str(src), "-o", str(out), "--model", str(a), "--format", fmt]) == 0
        before = (out / name).read_bytes()
        assert cli.main(["encode", str(src), "-o", str(out), "--model", str(b), "--format", fmt, "--resume"]) == 1
        assert "written by another model" in capsys.readouterr().err and (out / name).read_bytes() == before
        assert cli.main(["encode", str(src), "-o", str(out), "--model", str(a), "--format", fmt, "--resume"]) == 0
    save_latents(tmp_path / "lat" / "z.safetensors", torch.zeros(4, 3, 3))
    for fmt in ("png", "webp"):
        dec = tmp_path / f"dec-{fmt}"
        assert cli.main(["decode", str(tmp_path / "lat"), "-o", str(dec), "--model", str(a), "--format", fmt]) == 0
        assert cli.main(["decode", str(tmp_path / "lat"), "-o", str(dec), "--model", str(a), "--format", fmt,
                         "--resume"]) == 0
        if fmt == "png":
            assert cli.main(["decode", str(tmp_path / "lat"), "-o", str(dec), "--model", str(b), "--resume"]) == 1
    # another format under the expected name
    Image.new("RGB", (24, 24)).save(tmp_path / "dec-webp" / "z.webp", format="PNG")
    assert cli.main(["decode", str(tmp_path / "lat"), "-o", str(tmp_path / "dec-webp"), "--model", str(a),
                     "--format", "webp", "--resume"]) == 1
    assert "a PNG file, not WEBP" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- D8
def test_d8_config_asking_for_more_channels_than_the_tensors_is_refused_before_building(tmp_path, model,
                                                                                       monkeypatch):
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "encoder_block_out_channels": [100000] * 4,
                                                      "decoder_block_out_channels": [100000] * 4}))

    def never(*a, **k):
        raise AssertionError("a network was built before the config was checked against the tensors")

    monkeypatch.setattr(tinyae.AutoencoderTiny, "__init__", never)
    with pytest.raises(WeightsError, match=r"the config does not match the tensors.*encoder_block_out_channels"):
        tinyae.io.load.load(tmp_path, model_class=tinyae.AutoencoderTiny)


def test_d8_max_pixels_is_checked_before_reading(tmp_path, model_dir, capsys):
    (src,) = tiny_images(tmp_path / "in", 1, size=40)
    with pytest.raises(tinyae.data.images.ImageError, match="above the limit of 1,000 pixels"):
        read_image(src, max_pixels=1000)
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "o"), "--model", str(model_dir),
                     "--max-pixels", "1000"]) == 1
    err = capsys.readouterr().err
    assert "40x40" in err and "--stream" in err
    save_latents(tmp_path / "z.safetensors", torch.zeros(4, 5, 5))
    assert cli.main(["decode", str(tmp_path / "z.safetensors"), "-o", str(tmp_path / "d"), "--model",
                     str(model_dir), "--max-pixels", "1000"]) == 1
    assert "40x40" in capsys.readouterr().err
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "o2"), "--model", str(model_dir)]) == 0


def test_d8_a_stalled_hub_download_ends_with_a_clear_message(hub, tmp_path, monkeypatch):
    hub.add_repo("someone/slow", diffusers_files(tiny_model(), tmp_path / "m"))
    hub.fault("someone/slow", "diffusion_pytorch_model.safetensors", "stall")
    monkeypatch.setenv("TINYAE_DOWNLOAD_TIMEOUT", "1.5")
    started = time.monotonic()
    with pytest.raises(WeightsError, match=r"diffusion_pytorch_model.safetensors: the download did not finish "
                                           r"within 1.5 s.*TINYAE_DOWNLOAD_TIMEOUT"):
        AutoencoderTiny.from_pretrained("someone/slow")
    assert time.monotonic() - started < 30
    assert not list(hub.cache.rglob("snapshots/*/diffusion_pytorch_model.safetensors"))


# ---------------------------------------------------------------------------------------------- D9
class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_d9_refused_pickle_says_what_and_how_to_convert_safely(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"0.weight": torch.zeros(1), "x": _Evil()}, str(path))
    with pytest.raises(WeightsError) as info:
        AutoencoderTiny.from_pretrained(path)
    text = str(info.value)
    assert "contains code or Python objects" in text and "safetensors" in text
    assert "weights_only=False" not in text


def test_d9_hub_error_with_a_cold_cache_says_what_the_hub_answered(hub, tmp_path):
    hub.add_repo("someone/failing", diffusers_files(tiny_model(), tmp_path / "m"))
    hub.fault("someone/failing", "config.json", "error")
    with pytest.raises(WeightsError, match=r"the hub answered HTTP 500") as info:
        AutoencoderTiny.from_pretrained("someone/failing")
    assert "cannot be reached" not in str(info.value)


# ---------------------------------------------------------------------------------------------- D10
@pytest.mark.parametrize("shape", [(1, 3, 60, 60), (2, 3, 61, 37), (0, 3, 64, 64)])
def test_d10_any_size_and_batch_zero_as_diffusers(model, shape):
    from diffusers import AutoencoderTiny as DiffusersTiny

    ref = DiffusersTiny(**model.config.diffusers_kwargs()).eval()
    ref.load_state_dict(model.state_dict())
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours, theirs = model.encode(x).latents, ref.encode(x).latents
        assert ours.shape == theirs.shape
        assert torch.allclose(ours, theirs, atol=1e-5)
        z = theirs
        assert model.decode(z).sample.shape == ref.decode(z).sample.shape
        assert torch.allclose(model.decode(z).sample, ref.decode(z).sample, atol=1e-5)
    if shape[2] == 60:
        assert ours.shape[-2:] == (8, 8)
