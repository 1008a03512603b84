"""ONNX export (CLI and API) of the real TAEF2, the onnxruntime backend (<= 1e-4 of torch float32), and the benchmark's
machinery (no timings asserted)."""

from __future__ import annotations

import copy
import json

import onnx
import pytest
import torch

from conftest import PHOTOS, TAEF2, load_photo, same_function
from tinyae import AutoencoderTiny, MissingPartError
from tinyae.cli.bench import format_markdown, run_bench
from tinyae.cli.export_onnx import main as export_onnx_main
from tinyae.engine.backends import load_backend
from tinyae.engine.onnx import export_onnx
from tinyae.engine.onnx_backend import ONNX_FILES
from tinyae.engine.openvino import bf16_available
from tinyae.nets.variants import variant_config


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    assert export_onnx_main(["--model", str(TAEF2[0]), str(TAEF2[1]), "-o", str(folder)]) == 0
    return folder


def test_cli_export_writes_checked_graphs_with_opset_17(onnx_dir, capsys):
    for name in ONNX_FILES.values():
        graph = onnx.load(str(onnx_dir / name))
        onnx.checker.check_model(graph)
        assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]  # dynamic batch/height/width
    assert json.loads((onnx_dir / "config.json").read_text())["latent_channels"] == 32


def test_onnxruntime_matches_torch_on_real_photos(taef2, onnx_dir):
    backend = load_backend(onnx_dir, "onnxruntime")
    exact = copy.deepcopy(taef2).double()
    with torch.inference_mode():
        for path in PHOTOS:  # 512x512, 600x400, 451x300 -> dynamic height and width
            x = load_photo(path)
            z = taef2.encode(x).latents
            assert same_function(backend.encode(x).latents, z, lambda: exact.encode(x.double()).latents, 1e-4)
            y = backend.decode(z).sample
            assert y.shape == x.shape
            assert same_function(y, taef2.decode(z).sample, lambda: exact.decode(z.double()).sample, 1e-4)


def test_backend_keeps_dtype_and_checks_inputs(onnx_dir):
    backend = load_backend(onnx_dir, "onnxruntime")
    z = torch.randn(2, 32, 4, 6, dtype=torch.float16)
    y = backend.decode(z).sample
    assert y.dtype == torch.float16 and y.shape == (2, 3, 32, 48)
    assert backend.encode(y, return_dict=False)[0].shape == (2, 32, 4, 6)
    with pytest.raises(ValueError, match="32 channels"):
        backend.decode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="multiples of 8"):
        backend.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="NaN"):
        backend.decode(torch.full((1, 32, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="not a tinyae ONNX export"):
        load_backend(onnx_dir / "nowhere", "onnxruntime")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_backend(onnx_dir, "tensorrt")


def test_export_refuses_to_overwrite_and_exports_halves(tmp_path, capsys):
    torch.manual_seed(0)
    model = AutoencoderTiny(**variant_config("taesd"), has_encoder=False).eval()
    paths = export_onnx(model, tmp_path)
    assert [p.name for p in paths] == ["decoder.onnx", "config.json"]
    before = (tmp_path / "decoder.onnx").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(model, tmp_path)
    assert (tmp_path / "decoder.onnx").read_bytes() == before
    assert export_onnx_main(["--model", str(TAEF2[1]), "-o", str(tmp_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "new", opset=13)
    backend = load_backend(tmp_path, "onnxruntime")
    with pytest.raises(MissingPartError):
        backend.encode(torch.zeros(1, 3, 8, 8))
    in_memory = load_backend(model, "onnxruntime")  # exported to a temporary folder, which is gone after
    z = torch.randn(1, 4, 3, 5)
    assert (in_memory.decode(z).sample - model.decode(z).sample).abs().max() <= 1e-4


def test_bench_runs_every_contestant_on_a_tiny_model():
    """The benchmark's machinery on a small random taef2-like model (GroupNorm branch -> diffusers twin)."""
    torch.manual_seed(0)
    small = {"encoder_block_out_channels": (16, 16), "decoder_block_out_channels": (16, 16),
             "num_encoder_blocks": (1, 1), "num_decoder_blocks": (1, 1)}
    model = AutoencoderTiny(**{**variant_config("taef2"), **small}).eval()
    results = run_bench(model, [64], repeats=1, warmup=0, log=lambda s: None)
    rows = {(r["contestant"], r["op"]) for r in results["rows"]}
    ov_bf16 = {"openvino bf16"} if bf16_available() else set()  # AVX2-only CPUs: OpenVINO would run f32
    assert {c for c, _ in rows} == {"diffusers fp32", "tinyae fp32", "tinyae optimized fp32", "tinyae optimized",
                                   "onnxruntime fp32", "openvino fp32", "tinyae optimized (full model)", *ov_bf16}
    assert results["model"]["stripped_groupnorm"] and set(results["ceiling_gflops"]) == {"fp32", "bf16"}
    assert set(results["ceiling_by_size"]["64"]) == set(results["ceiling_alone_gflops"]) == {"fp32", "bf16"}
    for r in results["rows"]:
        assert r["median_s"] > 0 and r["gflops"] > 0
        if r["contestant"] in ("diffusers fp32", "tinyae fp32"):
            assert r["psnr_db"] > 100  # the same function
        elif "psnr_db" in r:
            assert r["psnr_db"] >= 40
    text = format_markdown(results)
    assert "| 64² | decode | diffusers fp32 |" in text and "Ceiling" in text and "steady state" in text
    cold = run_bench(model, [64], repeats=1, warmup=0, contestants=["tinyae fp32"], cold=True, log=lambda s: None)
    assert cold["cold"] and "(--cold)" in format_markdown(cold)
    assert {r["contestant"] for r in cold["rows"]} == {"tinyae fp32", "tinyae optimized (full model)"}
