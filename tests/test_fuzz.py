"""Fuzzing the readers of untrusted files (issue 11): weight files, latent files, images.

Random truncation, bit flips, header edits and metadata values. The property, for every reader: it loads the file
correctly or raises the one documented exception (WeightsError, LatentFileError, ImageError) naming the file;
never another exception, never a hang (hypothesis' deadline), never a partial output (the CLI leaves either a
complete output or none, and no temporary file).
"""

from __future__ import annotations

import io
import json
import struct
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from tinyae import AutoencoderTiny, WeightsError, cli
from tinyae.data.codec import LatentFileError, load_latents, save_latents
from tinyae.data.images import ImageError, read_source
from tinyae.nets.variants import VARIANTS

from hubserver import point_hub
from reliability_helpers import hidden, tiny_model

FUZZ = settings(max_examples=40, deadline=timedelta(seconds=20), derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """The valid files the mutations start from: {name: bytes}."""
    root = tmp_path_factory.mktemp("seeds")
    model = tiny_model()
    out: dict[str, bytes] = {}
    for path in model.save_original(root, "tiny"):  # tiny_encoder.safetensors, tiny_decoder.safetensors
        out[Path(path).name] = Path(path).read_bytes()
    model.save_original(root / "pth", "tiny", format="pth")
    out["tiny_decoder.pth"] = (root / "pth" / "tiny_decoder.pth").read_bytes()
    model.save_pretrained(root / "diffusers")
    out["config.json"] = (root / "diffusers" / "config.json").read_bytes()
    out["diffusion_pytorch_model.safetensors"] = (root / "diffusers" / "diffusion_pytorch_model.safetensors"
                                                  ).read_bytes()
    z = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(0))
    save_latents(root / "z.safetensors", z, variant="taesd", source="z.png")
    save_latents(root / "z.latent.png", z, variant="taesd", source="z.png")
    out["z.safetensors"] = (root / "z.safetensors").read_bytes()
    out["z.latent.png"] = (root / "z.latent.png").read_bytes()
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (12, 10, 4), dtype=np.uint8), "RGBA")
    for fmt, name in (("PNG", "im.png"), ("JPEG", "im.jpg"), ("WEBP", "im.webp"), ("GIF", "im.gif"),
                      ("TIFF", "im.tiff"), ("BMP", "im.bmp")):
        buf = io.BytesIO()
        (rgba if fmt in ("PNG", "WEBP", "TIFF") else rgba.convert("RGB")).save(buf, format=fmt)
        out[name] = buf.getvalue()
    return out


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """Truncations, bit flips, byte runs overwritten (in the header, where formats keep their sizes), appended
    garbage."""
    n = len(data)

    def flip(spots: list[tuple[int, int]]) -> bytes:
        b = bytearray(data)
        for pos, bit in spots:
            b[pos % n] ^= 1 << bit
        return bytes(b)

    def overwrite(args: tuple[int, bytes]) -> bytes:
        pos, run = args
        pos %= min(n, 256)
        return data[:pos] + run + data[pos + len(run):]

    return st.one_of(
        st.integers(0, n - 1).map(lambda k: data[:k]),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 7)), min_size=1, max_size=8).map(flip),
        st.tuples(st.integers(0, 255), st.binary(min_size=1, max_size=16)).map(overwrite),
        st.binary(min_size=1, max_size=64).map(lambda tail: data + tail),
    )


# ---------------------------------------------------------------------------------------------- weights
def _check_model(model: AutoencoderTiny) -> None:
    """A model that loaded is complete and sane."""
    assert model.encoder is not None or model.decoder is not None
    for p in model.parameters():
        assert torch.isfinite(p).all()


@FUZZ
@given(data=st.data(), name=st.sampled_from(["tiny_encoder.safetensors", "tiny_decoder.safetensors",
                                             "tiny_decoder.pth"]))
def test_weight_files(seeds, tmp_path, data, name):
    path = tmp_path / name
    path.write_bytes(data.draw(mutations(seeds[name])))
    try:
        model = AutoencoderTiny.from_pretrained(path)
    except WeightsError as e:
        assert str(path) in str(e) and "\n" not in str(e)
    else:
        _check_model(model)


def _config_values() -> st.SearchStrategy:
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=8))
    return st.one_of(leaf, st.lists(leaf, max_size=5))


CONFIG_KEYS = ["in_channels", "out_channels", "encoder_block_out_channels", "decoder_block_out_channels",
               "act_fn", "upsample_fn", "latent_channels", "upsampling_scaling_factor", "num_encoder_blocks",
               "num_decoder_blocks", "latent_magnitude", "latent_shift", "force_upcast", "scaling_factor",
               "shift_factor", "use_midblock_gn", "encoder_stem_channels", "patch_size"]


@FUZZ
@given(edits=st.dictionaries(st.sampled_from(CONFIG_KEYS), _config_values(), min_size=1, max_size=3),
       raw=st.one_of(st.none(), st.data()))
def test_diffusers_config_and_weights(seeds, tmp_path, edits, raw):
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    cfg = json.loads(seeds["config.json"])
    text = json.dumps({**cfg, **edits}).encode()
    if raw is not None:  # or the config's bytes themselves damaged
        text = raw.draw(mutations(seeds["config.json"]))
    (folder / "config.json").write_bytes(text)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(seeds["diffusion_pytorch_model.safetensors"])
    try:
        model = AutoencoderTiny.from_pretrained(folder)
    except WeightsError as e:
        assert str(folder) in str(e) and "\n" not in str(e)
    else:
        _check_model(model)
        for k, v in model.config.init_kwargs().items():  # what loaded is what the config said (or its default)
            if k in edits and not isinstance(edits[k], list):
                assert v == edits[k]


@FUZZ
@given(dtype=st.sampled_from([torch.float8_e4m3fn, torch.float8_e5m2, torch.int8, torch.uint8, torch.bool,
                              torch.int64, torch.float16, torch.complex64]),
       which=st.integers(0, 10**6), shape_edit=st.booleans())
def test_tensor_dtypes_and_shapes(seeds, tmp_path, dtype, which, shape_edit):
    from safetensors.torch import load

    sd = load(seeds["tiny_encoder.safetensors"])
    key = sorted(sd)[which % len(sd)]
    t = sd[key]
    sd[key] = (t[..., :1] if shape_edit and t.dim() else t).to(dtype)
    path = tmp_path / "x_encoder.safetensors"
    save_file(sd, str(path))
    try:
        model = AutoencoderTiny.from_pretrained(path)
    except WeightsError as e:
        assert str(path) in str(e) and "\n" not in str(e)
    else:
        assert dtype in (torch.float16,) and not shape_edit
        _check_model(model)


# ---------------------------------------------------------------------------------------------- latent files
@FUZZ
@given(data=st.data(), name=st.sampled_from(["z.safetensors", "z.latent.png"]))
def test_latent_files(seeds, tmp_path, data, name):
    path = tmp_path / name
    path.write_bytes(data.draw(mutations(seeds[name])))
    try:
        e = load_latents(path)
    except LatentFileError as err:
        assert str(path) in str(err) and "\n" not in str(err)
    else:
        assert e.latents.dim() in (3, 4) and torch.isfinite(e.latents).all() and e.latents.numel() > 0
        assert isinstance(e.grayscale, bool)


def _metadata_values() -> st.SearchStrategy:
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(allow_nan=True),
                     st.text(max_size=6))
    return st.one_of(leaf, st.lists(leaf, max_size=4), st.dictionaries(st.text(max_size=3), leaf, max_size=2))


VARIANT_NAMES = {n.lower() for v in VARIANTS.values() for n in (v.name, *v.aliases)}
LATENT_KEYS = ["latent_channels", "magnitude", "shift", "original_size", "grayscale", "latent_shape", "variant",
               "dtype", "layout"]


@FUZZ
@given(edits=st.dictionaries(st.sampled_from(LATENT_KEYS), _metadata_values(), min_size=1, max_size=3),
       name=st.sampled_from(["z.safetensors", "z.latent.png"]))
def test_latent_metadata_values_and_the_cli(seeds, tmp_path, capsys, monkeypatch, model_dir, edits, name):
    point_hub(monkeypatch, offline=True)
    monkeypatch.delenv(cli.MODEL_ENV, raising=False)
    path = tmp_path / name
    path.write_bytes(seeds[name])
    if name.endswith(".png"):
        from PIL import PngImagePlugin

        with Image.open(path) as im:
            meta, image = json.loads(im.text["tinyae"]), im.copy()
        info = PngImagePlugin.PngInfo()
        info.add_text("tinyae", json.dumps({**meta, **edits}))
        image.save(path, pnginfo=info)
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta, z = f.metadata(), f.get_tensor("latents")
        save_file({"latents": z}, str(path), metadata={**meta, **{k: json.dumps(v) for k, v in edits.items()}})
    try:
        e = load_latents(path)
    except LatentFileError as err:
        assert str(path) in str(err) and "\n" not in str(err)
    else:
        assert torch.isfinite(e.latents).all() and isinstance(e.grayscale, bool)
    out = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example (tmp_path is shared by the examples)
    rc = cli.main(["decode", str(path), "-o", str(out), "--model", str(model_dir)])
    captured = capsys.readouterr()
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert hidden(out) == []
    if rc == 0:
        assert written == ["z.png"]
        with Image.open(out / "z.png") as im:
            im.load()
    else:
        assert rc == 1 and written == [] and "Traceback" not in captured.err
        assert all(line.startswith("tinyae: ") for line in captured.err.splitlines())
    # without --model the file's variant is used only when it is a built-in name (offline here: nothing downloads)
    rc = cli.main(["decode", str(path), "-o", str(out / "auto")])
    err = capsys.readouterr().err
    assert rc in (0, 1) and "Traceback" not in err
    if isinstance(edits.get("variant"), str) and edits["variant"].lower() not in VARIANT_NAMES:
        assert rc == 1 and "not a built-in variant" in err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tiny_model().save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- images
@FUZZ
@given(data=st.data(), name=st.sampled_from(["im.png", "im.jpg", "im.webp", "im.gif", "im.tiff", "im.bmp"]))
def test_image_files(seeds, tmp_path, data, name):
    path = tmp_path / name
    path.write_bytes(data.draw(mutations(seeds[name])))
    try:
        s = read_source(path, max_pixels=10**6)
    except ImageError as e:
        assert str(path) in str(e) and "\n" not in str(e)
    else:
        assert s.rgb.dtype == np.float32 and s.rgb.ndim == 3 and s.rgb.shape[2] == 3
        assert np.isfinite(s.rgb).all() and s.rgb.min() >= 0 and s.rgb.max() <= 1


@FUZZ
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_image_header_sizes_are_checked_before_decoding(tmp_path, width, height):
    """A PNG whose IHDR claims any size: refused by --max-pixels before a pixel is decoded, or read."""
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path = tmp_path / "claim.png"
    path.write_bytes(bytes(data))
    try:
        read_source(path, max_pixels=10**6)
    except ImageError as e:
        assert str(path) in str(e)
