"""Video I/O (PyAV: mp4, webm, gif, frame folders) and `tinyae encode|decode|roundtrip|info` on videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import reference_video as ref
from conftest import HAS_BF16
from tinyae.cli import main
from tinyae.video.io import VideoError, probe, read_frames, write_frames

torch.set_num_threads(1)


def _frames(n: int = 6, h: int = 16, w: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (h, w, 3)).astype(np.float64)
    return [np.clip(base + 8 * i, 0, 255).astype(np.uint8) for i in range(n)]


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".gif", ""])
def test_video_io_roundtrip(tmp_path, suffix):
    frames = _frames()
    path = tmp_path / f"v{suffix}"
    assert write_frames(path, iter(frames), fps=8) == 6
    back = list(read_frames(path))
    assert len(back) == 6 and back[0].shape == (16, 24, 3)
    info = probe(path)
    assert (info.width, info.height) == (24, 16)
    if suffix == "":  # PNG frames are exact
        assert all((a == b).all() for a, b in zip(frames, back))


def test_video_io_errors(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        list(read_frames(tmp_path / "missing.mp4"))
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoError, match="cannot read"):
        list(read_frames(tmp_path / "bad.mp4"))
    with pytest.raises(VideoError, match="unknown video suffix"):
        write_frames(tmp_path / "x.avi2", iter(_frames()))
    with pytest.raises(VideoError, match="even width"):
        write_frames(tmp_path / "odd.mp4", iter([np.zeros((15, 16, 3), np.uint8)]))
    assert not (tmp_path / "odd.mp4").exists()  # nothing half-written


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("vm") / "taew2_1.pth"
    torch.save(ref.random_weights(ref.SPECS["taew2_1"], seed=3), p)
    return p


def test_cli_encode_decode_roundtrip_info(tmp_path, model_file, capsys):
    video = tmp_path / "in.mp4"
    write_frames(video, iter(_frames(10)), fps=8)
    m = str(model_file)
    assert main(["encode", str(video), "-o", str(tmp_path / "lat"), "-m", m, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"][0]["latent_shape"] == [1, 16, 3, 2, 3] and doc["files"][0]["frames"] == 10
    lat = tmp_path / "lat" / "in.safetensors"
    # the latents file says it is a video's: decode picks the video path from it
    assert main(["decode", str(lat), "-o", str(tmp_path / "frames"), "-m", m]) == 0
    assert len(list(read_frames(tmp_path / "frames" / "in.mp4"))) == 9  # 3 latents -> 4*3-3 frames
    assert main(["decode", str(lat), "-o", str(tmp_path / "out.gif"), "-m", m]) == 0
    assert len(list(read_frames(tmp_path / "out.gif"))) == 9
    capsys.readouterr()
    assert main(["roundtrip", str(video), "-m", m, "--json"]) == 0
    f = json.loads(capsys.readouterr().out)["files"][0]
    assert f["compared"] == 9 and len(f["per_frame"]["psnr"]) == 9
    assert f["psnr_mean"] > 0 and 0 <= f["flicker"] < 1 and "ssim_mean" in f
    assert main(["info", m, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "video" and info["variant"] == "taew2_1" and info["frames_for_latents"]["21"] == 81


def test_cli_video_errors(tmp_path, model_file, capsys):
    video = tmp_path / "odd.mp4"
    write_frames(video, iter(_frames(3, 16, 20)), fps=8)
    assert main(["encode", str(video), "-o", str(tmp_path / "lat"), "-m", str(model_file)]) == 1
    assert "not a multiple of 8" in capsys.readouterr().err
    assert main(["encode", str(video), "-o", str(tmp_path / "lat"), "-m", "taew2_1"]) == 1
    assert "give the weights file" in capsys.readouterr().err


def test_cli_decode_to_frame_folder_and_streamed_roundtrip_output(tmp_path, model_file, monkeypatch, capsys):
    import tinyae.video.cli as vcli

    video = tmp_path / "in.mp4"
    write_frames(video, iter(_frames(10)), fps=8)
    m = str(model_file)
    assert main(["encode", str(video), "-o", str(tmp_path / "lat"), "-m", m]) == 0
    lat = tmp_path / "lat" / "in.safetensors"
    assert main(["decode", str(lat), "-o", str(tmp_path / "dec"), "--frames", "-m", m]) == 0
    pngs = sorted((tmp_path / "dec" / "in").iterdir())
    assert [p.name for p in pngs] == [f"{k:06d}.png" for k in range(9)]
    assert main(["decode", str(lat), "-o", str(tmp_path / "dec"), "--frames", "-m", m]) == 1  # never overwritten
    assert "already exist" in capsys.readouterr().err

    read, written_after = [0], []
    real_read, real_write = vcli.read_frames, vcli.write_frames

    def counting_read(path):
        for a in real_read(path):
            read[0] += 1
            yield a

    def watching_write(path, frames, **kw):
        def watch():
            for f in frames:
                written_after.append(read[0])
                yield f
        return real_write(path, watch(), **kw)

    monkeypatch.setattr(vcli, "read_frames", counting_read)
    monkeypatch.setattr(vcli, "write_frames", watching_write)
    assert main(["roundtrip", str(video), "-o", str(tmp_path / "rt"), "-m", m, "--json"]) == 0
    f = json.loads(capsys.readouterr().out)["files"][0]
    assert f["compared"] == 9 and len(list(real_read(tmp_path / "rt" / "in.decoded.mp4"))) == 9
    assert len(written_after) == 9 and written_after[0] < 10  # the first frame is written before the last is read


def test_cli_video_precision(tmp_path, model_file, capsys):
    video = tmp_path / "in.mp4"
    write_frames(video, iter(_frames(5)), fps=8)
    m = str(model_file)
    docs = {}
    precisions = ("exact", "fp32", "bf16") if HAS_BF16 else ("exact", "fp32")  # else --precision bf16: one error
    for p in precisions:
        assert main(["encode", str(video), "-o", str(tmp_path / p), "-m", m, "--precision", p, "--json"]) == 0
        docs[p] = json.loads(capsys.readouterr().out)
    assert [docs[p]["precision"] for p in docs] == list(precisions)
    from safetensors import safe_open
    from safetensors.torch import load_file

    z = {p: load_file(str(tmp_path / p / "in.safetensors"))["latents"] for p in docs}
    with safe_open(str(tmp_path / precisions[-1] / "in.safetensors"), "pt") as f:
        assert f.metadata()["precision"] == precisions[-1]
    torch.testing.assert_close(z["fp32"], z["exact"], atol=1e-5, rtol=0)
    if HAS_BF16:
        assert (z["bf16"] - z["exact"]).abs().max() < 0.05 * z["exact"].abs().max()
    else:
        assert main(["encode", str(video), "-o", str(tmp_path / "b"), "-m", m, "--precision", "bf16"]) == 1
        err = capsys.readouterr().err
        assert "precision='bf16' needs a CPU with AVX512" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "b" / "in.safetensors").exists()
    assert main(["encode", str(video), "-o", str(tmp_path / "x"), "-m", m, "--precision", precisions[-1],
                 "--dtype", "float16"]) == 1
    assert "--dtype float16 sets the dtype of --precision exact" in capsys.readouterr().err


def test_cli_video_tile_equals_untiled(tmp_path, model_file, capsys):
    """--tile: exact spatial row bands (16 latent rows); 136-pixel frames (17 latent rows) make two bands."""
    from safetensors.torch import load_file

    frames = tmp_path / "frames"
    write_frames(frames, iter(_frames(5, 136, 16)), fps=8)  # PNG frames: exact input
    m = str(model_file)
    z = {}
    for name, extra in (("plain", []), ("tiled", ["--tile"])):
        out = tmp_path / name
        assert main(["encode", str(frames), "-o", str(out), "-m", m, "--precision", "exact", "--json", *extra]) == 0
        assert json.loads(capsys.readouterr().out)["tile_rows"] == (16 if extra else None)
        z[name] = load_file(str(out / "frames.safetensors"))["latents"]
    assert z["plain"].shape == (1, 16, 2, 17, 2)
    torch.testing.assert_close(z["tiled"], z["plain"], atol=1e-5, rtol=0)

    # decode: the float frames before 8-bit rounding, through the CLI's own model, tiled vs untiled
    import tinyae.video.cli as vcli

    seen = {}
    real = vcli._to_uint8
    for name, extra in (("plain", []), ("tiled", ["--tile"])):
        seen[name] = []
        vcli._to_uint8 = lambda f, keep=seen[name]: (keep.append(f.clone()), real(f))[1]
        try:
            assert main(["decode", str(tmp_path / "plain" / "frames.safetensors"), "-o", str(tmp_path / f"d{name}"),
                         "--frames", "-m", m, "--precision", "exact", *extra]) == 0
        finally:
            vcli._to_uint8 = real
    assert len(seen["plain"]) == 5 and seen["plain"][0].shape[-2:] == (136, 16)
    torch.testing.assert_close(torch.stack(seen["tiled"]), torch.stack(seen["plain"]), atol=1e-5, rtol=0)
    assert main(["encode", str(frames), "-o", str(tmp_path / "x"), "-m", m, "--backend", "onnxruntime"]) == 1
    assert "video models run in torch" in capsys.readouterr().err
