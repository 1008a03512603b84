"""The `tinyae` command line, end to end on the real TAEF2 weights and photos (subprocess), and its error cases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tinyae
from tinyae import cli
from tinyae.data.metrics import psnr
from tinyae.io.files import read_tensors

from conftest import IMAGES, PHOTOS, ROOT, TAEF2

MODEL = f"{TAEF2[0]},{TAEF2[1]}"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread here and in the children: 2 threads on a loaded 2-core machine spin-wait badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    """`python -m tinyae ARGS` in a child process, with this worktree's tinyae and no hub access."""
    return subprocess.run([sys.executable, "-m", "tinyae", *args], capture_output=True, text=True, cwd=cwd,
                          env=child_env(env), timeout=300)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop(cli.MODEL_ENV, None)
    return {**env, **(extra or {})}


def leftovers(folder: Path) -> list[str]:
    """Temporary or hidden files left in a folder (there must be none)."""
    return sorted(p.name for p in folder.rglob(".*")) if folder.exists() else []


def small_photo(tmp_path: Path, name: str = "small.png", size: int = 64) -> Path:
    path = tmp_path / name
    Image.open(IMAGES / "chelsea.png").convert("RGB").crop((100, 50, 100 + size, 50 + size)).save(path)
    return path


# ---------------------------------------------------------------------------------------------- end to end
def test_encode_decode_and_roundtrip_the_photos(tmp_path):
    enc = run_cli("encode", str(IMAGES), "-o", str(tmp_path / "lat"), "--model", MODEL, "--json")
    assert enc.returncode == 0, enc.stderr
    report = json.loads(enc.stdout)
    assert report["ok"] == len(PHOTOS) and report["failed"] == 0 and report["variant"] == "taef2"
    dec = run_cli("decode", str(tmp_path / "lat"), "-o", str(tmp_path / "dec"), "--model", MODEL)
    assert dec.returncode == 0, dec.stderr
    assert f"decode: {len(PHOTOS)} done" in dec.stdout
    for photo in PHOTOS:
        assert (tmp_path / "lat" / f"{photo.stem}.safetensors").is_file()
        source, decoded = Image.open(photo), Image.open(tmp_path / "dec" / f"{photo.stem}.png")
        assert decoded.size == source.size  # 600x400 and 451x300 (not multiples of 8) come back whole
        assert psnr(source, decoded) >= 29, photo.name
    assert leftovers(tmp_path) == []

    # roundtrip reports the PSNR computed here from the files encode + decode wrote
    photo = IMAGES / "chelsea.png"
    out = run_cli("roundtrip", str(photo), "-o", str(tmp_path / "rt"), "--model", MODEL, "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)["files"][0]
    source = Image.open(photo)
    assert row["psnr"] == pytest.approx(psnr(source, Image.open(tmp_path / "dec" / "chelsea.png")), abs=1e-3)
    assert row["psnr"] == pytest.approx(psnr(source, Image.open(tmp_path / "rt" / "chelsea.decoded.png")), abs=1e-3)
    assert row["psnr_8bit"] >= row["psnr"] - 0.5
    assert 0.8 < row["ssim"] < 1
    assert row["bits_per_pixel"] == pytest.approx(8 * row["latent_png_bytes"] / (451 * 300), abs=1e-3)
    assert Image.open(tmp_path / "rt" / "chelsea.compare.png").size == (902, 300)


def test_convert_original_to_diffusers_to_original_is_byte_identical(tmp_path):
    first = run_cli("convert", MODEL, str(tmp_path / "diffusers"), "--to", "diffusers")
    assert first.returncode == 0, first.stderr
    second = run_cli("convert", str(tmp_path / "diffusers"), str(tmp_path / "original"), "--to", "original")
    assert second.returncode == 0, second.stderr
    for src in TAEF2:
        want = read_tensors(src)
        got = read_tensors(tmp_path / "original" / (src.stem + ".safetensors"))
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype == torch.float16
            assert got[k].numpy().tobytes() == want[k].numpy().tobytes(), k


def test_convert_comfyui_and_safetensors_load_back(tmp_path, capsys):
    for to, dst in (("comfyui", tmp_path / "comfy.safetensors"), ("safetensors", tmp_path)):
        assert cli.main(["convert", MODEL, str(dst), "--to", to]) == 0
    single = tmp_path / "taef2.safetensors"
    for path in (tmp_path / "comfy.safetensors", single):
        model = tinyae.AutoencoderTiny.from_pretrained(path)
        assert model.config.latent_channels == 32 and model.config.use_midblock_gn
    assert cli.main(["convert", MODEL, str(tmp_path), "--to", "safetensors"]) == 1  # exists: no overwrite
    assert "already exists; pass --force" in capsys.readouterr().err


def test_info(capsys):
    assert cli.main(["info", MODEL, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["variant"] == "taef2" and doc["latent_channels"] == 32 and doc["scale_factor"] == 8
    assert doc["parameters"] == {"encoder": 1338528, "decoder": 1338499, "total": 2677027}
    assert doc["dtype"] == "float16"
    assert [f["known_as"] for f in doc["files"]] == ["taef2_encoder.pth", "taef2_decoder.pth"]
    assert doc["files"][0]["sha256"] == "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6"
    assert doc["formats"] == ["diffusers (tinyae only)", "original", "comfyui", "safetensors"]


def test_latent_png_format_and_info_on_a_latent_file(tmp_path, capsys):
    photo = small_photo(tmp_path)
    assert cli.main(["encode", str(photo), "-o", str(tmp_path / "out"), "--model", MODEL, "--format", "png"]) == 0
    capsys.readouterr()
    latent = tmp_path / "out" / "small.latent.png"
    assert cli.main(["info", str(latent), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "latents" and doc["latent_shape"] == [32, 8, 8] and doc["original_size"] == [64, 64]
    assert cli.main(["decode", str(latent), "-o", str(tmp_path / "small.webp"), "--model", MODEL,
                     "--format", "webp"]) == 0
    assert Image.open(tmp_path / "small.webp").size == (64, 64)


# ---------------------------------------------------------------------------------------------- errors
def test_non_image_input_fails_alone(tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    good = small_photo(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["encode", str(tmp_path / "notes.png"), str(good), "-o", str(out), "--model", MODEL]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tinyae: failed: {tmp_path / 'notes.png'}: not an image (Pillow cannot identify it)"]
    assert sorted(p.name for p in out.iterdir()) == ["small.safetensors"]


def test_latents_of_another_variant(tmp_path, capsys):
    tinyae.save_latents(tmp_path / "f1.safetensors", torch.zeros(16, 8, 8), variant="taef1")
    assert cli.main(["decode", str(tmp_path / "f1.safetensors"), "-o", str(tmp_path / "out"), "--model", MODEL]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"tinyae: failed: {tmp_path / 'f1.safetensors'}: latents have 16 channels (made by taef1) but the "
                   "model expects 32; decode them with the variant that encoded them (--model)")
    assert list((tmp_path / "out").iterdir()) == []


def test_unknown_model_name_suggests_the_closest(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["encode", str(small_photo(tmp_path)), "-o", str(out), "--model", "taef3"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinyae: error: 'taef3': not a known variant") and "Did you mean taef2" in err
    assert "\n" not in err and list(out.iterdir()) == []


def test_missing_weights_offline_says_how_to_provide_them(tmp_path):
    res = run_cli("encode", str(small_photo(tmp_path)), "-o", str(tmp_path / "out"), "--model", "taesd",
                  env={"HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "tinyae: error: taesd: weights not on this machine and the hub cannot be reached. Download them once with "
        "network access (huggingface-cli download madebyollin/taesd), or pass local weights: --model FOLDER, "
        "--model FILE, or --model ENCODER_FILE,DECODER_FILE (or set $TINYAE_MODEL)"]
    assert "Traceback" not in res.stderr and list((tmp_path / "out").iterdir()) == []


def test_ambiguous_weights_folder_names_the_pair_syntax(tmp_path, capsys):
    assert cli.main(["info", str(TAEF2[0].parent)]) == 1
    err = capsys.readouterr().err
    assert "weights of several models (taef2, taesana)" in err and "--model ENCODER_FILE,DECODER_FILE" in err


def test_output_folder_that_cannot_be_written(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    target = tmp_path / "a_file" / "out"
    assert cli.main(["encode", str(small_photo(tmp_path)), "-o", str(target), "--model", MODEL]) == 1
    assert capsys.readouterr().err.strip() == \
        f"tinyae: error: {target}: cannot write to the output folder (Not a directory)"


def test_existing_outputs_need_resume_or_force(tmp_path, capsys):
    photo, out = small_photo(tmp_path), tmp_path / "out"
    assert cli.main(["encode", str(photo), "-o", str(out), "--model", MODEL]) == 0
    before = tinyae.load_latents(out / "small.safetensors")
    assert cli.main(["encode", str(photo), "-o", str(out), "--model", MODEL]) == 1
    assert "1 output(s) already exist" in capsys.readouterr().err
    assert cli.main(["encode", str(photo), "-o", str(out), "--model", MODEL, "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
    assert cli.main(["encode", str(photo), "-o", str(out), "--model", MODEL, "--force"]) == 0
    after = tinyae.load_latents(out / "small.safetensors")  # rewritten, same content
    assert torch.equal(after.latents, before.latents) and after.metadata == before.metadata


def test_tiling_not_available_is_one_line(tmp_path, capsys, monkeypatch):
    def refuse(self, **options):
        raise NotImplementedError("exact tiling is not implemented yet")

    monkeypatch.setattr(tinyae.AutoencoderTiny, "enable_tiling", refuse)
    assert cli.main(["encode", str(small_photo(tmp_path)), "-o", str(tmp_path / "o"), "--model", MODEL,
                     "--tile"]) == 1
    assert capsys.readouterr().err == "tinyae: error: --tile: exact tiling is not implemented yet\n"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(tinyae.WeightsError):
        cli.main(["info", "taef3", "--debug"])


# ---------------------------------------------------------------------------------------------- other modules
def test_bench_and_export_onnx_forward_their_argv(monkeypatch, capsys):
    seen = {}
    monkeypatch.setitem(sys.modules, "tinyae.cli.bench", types.SimpleNamespace(main=lambda argv: seen.setdefault(
        "bench", argv) and 0))
    monkeypatch.setitem(sys.modules, "tinyae.cli.export_onnx", types.SimpleNamespace(
        main=lambda argv: seen.setdefault("onnx", argv) and 3))
    assert cli.main(["bench", "--quick", "x"]) == 0
    assert cli.main(["export-onnx", "--help"]) == 3
    assert seen == {"bench": ["--quick", "x"], "onnx": ["--help"]}
    monkeypatch.setitem(cli.FORWARDED, "bench", ("tinyae.no_such_module", "main"))
    assert cli.main(["bench"]) == 1
    assert capsys.readouterr().err == \
        "tinyae: error: `tinyae bench` needs tinyae.no_such_module, which this installation lacks\n"


def test_onnxruntime_backend_is_used_when_asked(tmp_path, monkeypatch, capsys):
    calls = []

    def load_backend(model, name):
        calls.append(name)
        return model  # same encode/decode API

    monkeypatch.setitem(sys.modules, "tinyae.engine.backends", types.SimpleNamespace(load_backend=load_backend))
    assert cli.main(["encode", str(small_photo(tmp_path)), "-o", str(tmp_path / "o"), "--model", MODEL,
                     "--backend", "onnxruntime"]) == 0
    assert calls == ["onnxruntime"]
    monkeypatch.setitem(sys.modules, "tinyae.engine.backends", None)  # import fails
    assert cli.main(["encode", str(small_photo(tmp_path)), "-o", str(tmp_path / "p"), "--model", MODEL,
                     "--backend", "onnxruntime"]) == 1
    assert capsys.readouterr().err.startswith("tinyae: error: --backend onnxruntime: ")


# ---------------------------------------------------------------------------------------------- interruption
def test_killed_batch_leaves_complete_files_and_the_rerun_completes(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(6):
        small_photo(inputs, f"p{i}.png", size=256)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "tinyae", "encode", str(inputs), "-o", str(out), "--model", MODEL,
            "--batch-size", "1"]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen(args + ["--resume"], env=child_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        done_before = len(list(out.glob("*.safetensors"))) if out.exists() else 0
        deadline = time.monotonic() + 120
        while (not out.exists() or len(list(out.glob("*.safetensors"))) <= done_before) \
                and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert proc.returncode == (130 if sig == signal.SIGTERM else -signal.SIGKILL), proc.stderr.read()
        written = sorted(out.glob("*.safetensors"))
        assert 0 < len(written) < 6
        for path in written:  # every visible output is complete
            assert tinyae.load_latents(path).latents.shape == (32, 32, 32)
        if sig == signal.SIGTERM:
            assert leftovers(out) == []  # the temporary file was removed on the way out
    rerun = run_cli("encode", str(inputs), "-o", str(out), "--model", MODEL, "--resume", "--json")
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["ok"] + report["skipped"] == 6 and report["skipped"] >= 2
    assert len(list(out.glob("*.safetensors"))) == 6 and leftovers(out) == []


def test_help_has_examples():
    for command in ("encode", "decode", "roundtrip", "convert", "info"):
        text = cli.build_parser()._subparsers._group_actions[0].choices[command].format_help()
        assert "examples:" in text and f"tinyae {command}" in text


# ---------------------------------------------------------------------------------------------- --stream
def test_stream_decode_and_encode_equal_the_tiled_in_memory_runs(tmp_path):
    """--stream writes/reads PNGs band by band; the result equals --tile in memory (same bands, same math)."""
    src = tmp_path / "in"
    src.mkdir()
    # 100x72: not a multiple of 8 in width, so the streamed PNG must be cropped back to the source size
    Image.open(IMAGES / "coffee.png").convert("RGB").crop((200, 100, 300, 172)).save(src / "coffee.png")
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "lat"), "--model", MODEL]) == 0
    assert cli.main(["decode", str(tmp_path / "lat"), "-o", str(tmp_path / "mem"), "--model", MODEL, "--tile"]) == 0
    assert cli.main(["decode", str(tmp_path / "lat"), "-o", str(tmp_path / "str"), "--model", MODEL,
                     "--stream"]) == 0
    mem = np.asarray(Image.open(tmp_path / "mem" / "coffee.png"))
    streamed = np.asarray(Image.open(tmp_path / "str" / "coffee.png"))
    assert streamed.shape == mem.shape == (72, 100, 3)
    assert np.array_equal(streamed, mem)

    Image.open(IMAGES / "coffee.png").convert("RGB").crop((0, 0, 96, 64)).save(src / "coffee.png")
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "e1"), "--model", MODEL, "--tile"]) == 0
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "e2"), "--model", MODEL, "--stream"]) == 0
    from tinyae import load_latents

    a, b = load_latents(tmp_path / "e1" / "coffee.safetensors"), load_latents(tmp_path / "e2" / "coffee.safetensors")
    assert a.latents.shape == b.latents.shape == (32, 8, 12)
    assert (a.latents - b.latents).abs().max() <= 1e-5


def test_stream_errors_are_one_line(tmp_path, capsys):
    src = small_photo(tmp_path, size=60)  # 60 is not a multiple of 8: streamed encode refuses it
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "o"), "--model", MODEL, "--stream"]) == 1
    err = capsys.readouterr().err
    assert "--stream" in err and "not a multiple of 8" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []
    assert cli.main(["decode", str(src), "-o", str(tmp_path / "d"), "--model", MODEL, "--stream",
                     "--format", "jpg"]) == 1
    assert "--stream writes PNG only" in capsys.readouterr().err
