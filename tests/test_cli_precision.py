"""The CLI runs the fast engine by default (--precision auto), records the precision, and stays >= 40 dB against
--precision exact; tiling and streaming compose with it; LivePreview decodes with an optimized copy."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from tinyae import AutoencoderTiny, load_latents
from tinyae.data.metrics import psnr
from tinyae.autoencoder import OptimizedAutoencoderTiny
from tinyae.engine.precision import explain_precision

from conftest import IMAGES, TAEF2
from test_cli import run_cli

MODEL = f"{TAEF2[0]},{TAEF2[1]}"


def _auto(device: str) -> tuple[str, str]:
    """What --precision auto is for MODEL's weights on `device` (int8 where they have a shipped calibration)."""
    return explain_precision(device, AutoencoderTiny.from_pretrained(TAEF2))


def _photo(tmp_path, name="p.png", size=128):
    path = tmp_path / name
    Image.open(IMAGES / "astronaut.png").convert("RGB").crop((100, 60, 100 + size, 60 + size)).save(path)
    return path


def test_default_precision_is_auto_recorded_and_close_to_exact(tmp_path):
    src = _photo(tmp_path)
    auto = run_cli("encode", str(src), "-o", str(tmp_path / "auto"), "--model", MODEL, "--json")
    assert auto.returncode == 0, auto.stderr
    want = _auto("cpu")[0]
    assert json.loads(auto.stdout)["precision"] == want
    assert load_latents(tmp_path / "auto" / "p.safetensors").metadata["precision"] == want
    exact = run_cli("encode", str(src), "-o", str(tmp_path / "exact"), "--model", MODEL, "--precision", "exact",
                    "--json")
    assert exact.returncode == 0, exact.stderr and json.loads(exact.stdout)["precision"] == "exact"
    for latents in ("auto", "exact"):
        for precision in ("auto", "exact"):
            r = run_cli("decode", str(tmp_path / latents / "p.safetensors"), "-o",
                        str(tmp_path / f"{latents}-{precision}.png"), "--model", MODEL, "--precision", precision)
            assert r.returncode == 0, r.stderr
    ref = np.asarray(Image.open(tmp_path / "exact-exact.png"))
    for name in ("auto-auto", "exact-auto", "auto-exact"):
        assert psnr(np.asarray(Image.open(tmp_path / f"{name}.png")), ref) >= 40, name


def test_stream_and_tile_run_on_the_optimized_model(tmp_path):
    src = _photo(tmp_path, size=96)
    for flags, out in ((["--tile"], "t"), ([], "m")):
        r = run_cli("roundtrip", str(src), "-o", str(tmp_path / out), "--model", MODEL, "--json", *flags)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["precision"] == _auto("cpu")[0]
    r = run_cli("encode", str(src), "-o", str(tmp_path / "z"), "--model", MODEL, "--stream")
    assert r.returncode == 0, r.stderr
    r = run_cli("decode", str(tmp_path / "z"), "-o", str(tmp_path / "d"), "--model", MODEL, "--stream")
    assert r.returncode == 0, r.stderr
    assert psnr(np.asarray(Image.open(tmp_path / "d" / "p.png")), np.asarray(Image.open(src))) > 25


def test_dtype_only_with_exact_precision(tmp_path):
    r = run_cli("encode", str(_photo(tmp_path)), "-o", str(tmp_path / "o"), "--model", MODEL, "--dtype", "float16")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "--precision exact" in r.stderr


def test_info_says_what_auto_resolves_to():
    r = run_cli("info", MODEL, "--json")
    assert r.returncode == 0, r.stderr
    cpu = json.loads(r.stdout)["auto_precision"][0]
    assert cpu["device"] == "cpu" and (cpu["precision"], cpu["why"]) == _auto("cpu")
    text = run_cli("info", MODEL).stdout
    assert f"--precision auto {cpu['precision']} on cpu" in text


def test_live_preview_decodes_with_an_optimized_copy(taef2):
    from tinyae.diffusers import LivePreview

    preview = LivePreview(taef2, family="flux2")
    if explain_precision("cpu")[0] != "exact":
        assert isinstance(preview.model, OptimizedAutoencoderTiny) and preview.source_model is taef2
    assert LivePreview(taef2, optimize=False).model is taef2
    from tinyae.data.latents import pack_flux2

    z = pack_flux2(torch.randn(1, 32, 16, 16))  # the pipeline tokens
    frame = preview.decode(z)
    exact = LivePreview(taef2, family="flux2", optimize=False).decode(z)
    assert psnr(np.asarray(frame.image), np.asarray(exact.image)) >= 40
