"""tinyae.dataset: sources, preprocessing, shard formats, the manifest's resume / exactly-once guarantees (kill -9 at
every write), refusals, edits, the errors table, LatentDataset; on a tiny random model and tiny photo crops."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tinyae import AutoencoderTiny, cli
from tinyae.dataset import DatasetError, LatentDataset, Preprocess, encode_dataset, open_source
from tinyae.dataset.encode import Encoder
from tinyae.dataset.manifest import SHARDS

from conftest import IMAGES, ROOT

N_IMAGES = 16


def tiny_model(seed: int = 0, channels: int = 8) -> AutoencoderTiny:
    torch.manual_seed(seed)
    c = (channels,) * 4
    return AutoencoderTiny(encoder_block_out_channels=c, decoder_block_out_channels=c, num_encoder_blocks=(1,) * 4,
                           num_decoder_blocks=(1,) * 4, latent_channels=4)


def make_images(folder: Path, n: int = N_IMAGES) -> list[Path]:
    """n small crops (24..56 px, various aspect ratios) of the shared photos, in a folder tree; one grayscale."""
    photos = [Image.open(p).convert("RGB") for p in sorted(IMAGES.glob("*.png"))]
    paths = []
    for i in range(n):
        w, h = 24 + 8 * (i % 5), 24 + 8 * ((i * 3) % 5)
        im = photos[i % len(photos)].crop((13 * i, 7 * i, 13 * i + w, 7 * i + h))
        if i == 5:
            im = im.convert("L")
        p = folder / (f"sub{i % 3}" if i % 2 else "") / f"im{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        im.save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    tiny_model().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("images")
    make_images(d)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return d


PRE = Preprocess("buckets", 32, flip="both")


def encode(src, out, model, **kw):
    kw.setdefault("preprocess", PRE)
    kw.setdefault("shard_size", 5)
    kw.setdefault("batch_size", 3)
    return encode_dataset(src, out, str(model), **kw)


def rows_by_key(out: Path) -> dict[str, dict]:
    ds = LatentDataset(out, dtype=None)
    rows = [ds[i] for i in range(len(ds))]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a row is there twice"
    return {r["key"]: r for r in rows}


def latents_by_sha(out: Path) -> dict[tuple[str, bool], torch.Tensor]:
    return {(r["source_sha256"], r["flipped"]): r["latents"] for r in rows_by_key(out).values()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, images, model_dir) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    encode(images, out, model_dir)
    return out


# ---------------------------------------------------------------------------------------------- content
def test_rows_are_the_encoder_on_the_preprocessed_images(reference, images, model_dir):
    rows = rows_by_key(reference)
    assert len(rows) == 2 * N_IMAGES  # every image and its flipped variant; the broken file is an error
    enc = Encoder(AutoencoderTiny.from_pretrained(str(model_dir)))
    man = json.loads((reference / "manifest.json").read_text())
    for key in ("im00.png", "sub1/im01.png", "im04.png#flip", "sub2/im05.png"):
        r = rows[key]
        base = key.split("#")[0]
        [(k, x, rec)] = [v for v in PRE.apply(Image.open(images / base), base) if v[0] == key]
        want = enc(x[None])["latents"][0].to(torch.bfloat16)
        assert torch.equal(r["latents"], want) and r["latents"].dtype == torch.bfloat16
        assert r["latent_shape"] == list(want.shape) and r["latent_dtype"] == "bfloat16"
        assert (r["original_size"], r["crop"], r["flipped"]) == (rec["original_size"], rec["crop"], "#flip" in key)
        assert r["source_sha256"] == __import__("hashlib").sha256((images / base).read_bytes()).hexdigest()
        assert (r["model_sha256"], r["precision"], r["preprocess"]) == (
            man["model_sha256"], man["precision"], man["preprocess_fingerprint"])
    errors = pq.read_table(reference / "errors.parquet").to_pylist()
    assert [e["key"] for e in errors] == ["broken.png"] and "not an image" in errors[0]["error"]
    assert sorted(pq.read_table(reference / "index.parquet").column("key").to_pylist()) == sorted(rows)


def test_each_source_kind_gives_the_same_latents(tmp_path, images, model_dir, reference):
    files = sorted(p for p in images.rglob("*.png") if p.name != "broken.png")
    want = latents_by_sha(reference)
    lst = tmp_path / "list.txt"
    os.symlink(images, tmp_path / "pics")  # list entries are relative to the list file's folder
    lst.write_text("# images\n" + "\n".join(f"pics/{p.relative_to(images)}" for p in files) + "\n")
    pq.write_table(pa.table({"id": [p.name for p in files], "image": [p.read_bytes() for p in files]}),
                   tmp_path / "bytes.parquet", row_group_size=5)
    pq.write_table(pa.table({"path": [str(p) for p in files]}), tmp_path / "paths.parquet")
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for i, p in enumerate(files):
            tar.add(p, arcname=f"{i:04d}.png")
            info = tarfile.TarInfo(f"{i:04d}.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"cat"))
    sources = {"list": open_source([str(lst)]),
               "parquet-bytes": open_source([str(tmp_path / "bytes.parquet")], key_column="id"),
               "parquet-paths": open_source([str(tmp_path / "paths.parquet")], path_column="path"),
               "webdataset": open_source([str(tmp_path / "shard-0.tar")])}
    assert {k: s.kind for k, s in sources.items()} == {"list": "list", "parquet-bytes": "parquet",
                                                       "parquet-paths": "parquet", "webdataset": "webdataset"}
    for name, src in sources.items():
        out = tmp_path / name
        s = encode(src, out, model_dir)
        assert (s["images"], s["errors"]) == (N_IMAGES, 0), name
        got = latents_by_sha(out)
        assert got.keys() == want.keys(), name
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assert sorted(rows_by_key(tmp_path / "webdataset"))[:2] == ["0000", "0000#flip"]


def test_safetensors_shards_hold_the_same_rows(tmp_path, images, model_dir, reference):
    out = tmp_path / "st"
    encode(images, out, model_dir, format="safetensors")
    assert sorted(p.suffix for p in (out / SHARDS).glob("*.safetensors")) == [".safetensors"] * 4
    a, b = rows_by_key(reference), rows_by_key(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k]["latents"], b[k]["latents"])
        assert {f: v for f, v in a[k].items() if f != "latents"} == {f: v for f, v in b[k].items() if f != "latents"}


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_latent_dtypes(tmp_path, images, model_dir, reference, dtype):
    out = tmp_path / dtype
    encode(images, out, model_dir, latent_dtype=dtype, preprocess=Preprocess("center", 16))
    r = LatentDataset(out, dtype=None)[0]
    assert r["latents"].dtype == getattr(torch, dtype) and r["latent_shape"] == [4, 2, 2]


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         scaling_factor=0.5).eval()


def test_teacher_mean_and_logvar_from_a_full_vae(tmp_path, images):
    vae = tiny_vae()
    out = tmp_path / "teacher"
    s = encode_dataset(images, out, vae, preprocess=Preprocess("center", 16), shard_size=8)
    assert s["precision"] == "eager-float32"
    r = LatentDataset(out)[0]
    x = Preprocess("center", 16, multiple=2).apply(Image.open(images / r["key"]), r["key"])[0][1]
    with torch.no_grad():
        dist = vae.encode(x[None]).latent_dist
    torch.testing.assert_close(r["mean"], dist.mean[0].to(torch.bfloat16).float())
    torch.testing.assert_close(r["logvar"], dist.logvar[0].to(torch.bfloat16).float())
    torch.testing.assert_close(r["latents"], (dist.mean[0] * 0.5).to(torch.bfloat16).float())


# ---------------------------------------------------------------------------------------------- preprocessing
def test_preprocess_policies():
    im = np.random.default_rng(0).random((40, 64, 3)).astype(np.float32)  # 64 wide, 40 high
    [(k, x, r)] = Preprocess("center", 32).apply(im, "a")
    assert x.shape == (3, 32, 32) and r == {"original_size": [64, 40], "resized_size": [51, 32],
                                            "crop": [9, 0, 32, 32], "flipped": False}
    crops = {Preprocess("random", 32, seed=s).apply(im, k)[0][2]["crop"][0] for s in range(5) for k in "abc"}
    assert len(crops) > 3  # seeds and keys move the crop ...
    assert Preprocess("random", 32, seed=1).apply(im, "a")[0][2] == Preprocess("random", 32, seed=1).apply(im, "a")[0][2]
    [(_, xb, rb)] = Preprocess("buckets", 32).apply(im, "a")  # ... buckets follow the aspect ratio (1.6)
    assert rb["crop"][2:] == [40, 24] and xb.shape == (3, 24, 40)
    [(_, xn, rn)] = Preprocess("none").apply(im, "a")
    assert xn.shape == (3, 40, 64) and rn["crop"] == [0, 0, 64, 40]
    (k0, x0, _), (k1, x1, r1) = Preprocess("center", 32, flip="both").apply(im, "a")
    assert (k0, k1, r1["flipped"]) == ("a", "a#flip", True) and torch.equal(x1, x0.flip(-1))
    fps = {Preprocess(*a).fingerprint() for a in [("center", 32), ("center", 64), ("random", 32), ("buckets", 32),
                                                   ("center", 32, "both"), ("random", 32, "none", 1)]}
    assert len(fps) == 6
    assert Preprocess("center", 32, seed=5).fingerprint() == Preprocess("center", 32).fingerprint()  # unused seed
    with pytest.raises(ValueError, match="multiple"):
        Preprocess("center", 30)
    with pytest.raises(ValueError, match="crop must be"):
        Preprocess("squash")


@settings(max_examples=30, deadline=None)
@given(st.integers(8, 90), st.integers(8, 90), st.sampled_from(["center", "random", "buckets"]), st.text(max_size=5))
def test_crops_lie_inside_the_resized_image(w, h, crop, key):
    pre = Preprocess(crop, 32)
    [(_, x, r)] = pre.apply(np.zeros((h, w, 3), np.float32), key)
    left, top, cw, ch = r["crop"]
    rw, rh = r["resized_size"]
    assert 0 <= left and left + cw <= rw and 0 <= top and top + ch <= rh and x.shape == (3, ch, cw)
    assert cw % 8 == 0 and ch % 8 == 0 and (crop == "buckets" or cw == ch == 32)


# ---------------------------------------------------------------------------------------------- resume
def test_rerun_skips_everything_and_edits_are_reencoded(tmp_path, images, model_dir):
    src = tmp_path / "src"
    make_images(src)
    out = tmp_path / "out"
    first = encode(src, out, model_dir)
    assert (first["shards"], first["shards_todo"], first["rows"]) == (4, 4, 2 * N_IMAGES)
    again = encode(src, out, model_dir)
    assert (again["shards_todo"], again["rows"]) == (0, 2 * N_IMAGES)
    before = rows_by_key(out)
    os.utime(src / "im00.png", ns=(1, 1))  # touched, same bytes: hashed again, not re-encoded
    assert encode(src, out, model_dir)["shards_todo"] == 0
    Image.open(IMAGES / "coffee.png").convert("RGB").crop((0, 0, 40, 24)).save(src / "im00.png")  # edited
    edited = encode(src, out, model_dir)
    assert edited["shards_todo"] == 1
    after = rows_by_key(out)
    assert after.keys() == before.keys()
    assert after["im00.png"]["source_sha256"] != before["im00.png"]["source_sha256"]
    assert not torch.equal(after["im00.png"]["latents"], before["im00.png"]["latents"])
    assert all(torch.equal(after[k]["latents"], before[k]["latents"]) for k in after if not k.startswith("im00"))
    Image.open(IMAGES / "coffee.png").convert("RGB").crop((5, 5, 37, 37)).save(src / "new.png")  # added
    (src / "sub1" / "im01.png").unlink()  # removed
    grown = encode(src, out, model_dir)
    keys = set(rows_by_key(out))
    assert "new.png" in keys and "sub1/im01.png" not in keys and len(keys) == 2 * N_IMAGES
    assert grown["shards"] == 5


def test_refuses_another_model_precision_preprocessing_or_dtype(tmp_path, images, model_dir, reference):
    other_model = tmp_path / "other-model"
    tiny_model(seed=1).save_pretrained(other_model)
    done = json.loads((reference / "manifest.json").read_text())["precision"]  # "auto" as resolved on this CPU
    other = [({"precision": "fp32"}, "precision")] if done != "fp32" else []  # fp32 is "auto" on AVX2-only CPUs
    for change, what in [({"model": other_model}, "model_sha256"), *other, ({"optimize": False}, "precision"),
                         ({"preprocess": Preprocess("center", 32)}, "preprocess_fingerprint"),
                         ({"latent_dtype": "float16"}, "latent_dtype"), ({"format": "safetensors"}, "format")]:
        kw = {"model": model_dir, **change}
        with pytest.raises(DatasetError, match=what):
            encode(images, reference, kw.pop("model"), **kw)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a tinyae latent dataset"):
        encode(images, tmp_path / "junk", model_dir)
    assert (tmp_path / "junk" / "x.txt").read_text() == "mine"


KILLER = """
import os, signal, sys
import tinyae.dataset.manifest as manifest, tinyae.dataset.shards as shards
from tinyae.io.files import atomic_write
n, calls = int(sys.argv[1]), [0]
def dying_write(path, write):
    calls[0] += 1
    if calls[0] == n:  # kill -9 in the middle of this file's write: half a temporary file is left behind
        def half(tmp):
            write(tmp)
            with open(tmp, "r+b") as f:
                f.truncate(os.path.getsize(tmp) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return atomic_write(path, half)
    return atomic_write(path, write)
manifest.atomic_write = shards.atomic_write = dying_write
from tinyae.dataset.cli import main
sys.exit(main(sys.argv[2:]))
"""


def child_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}


# the writes of a 4-shard job: 1 manifest, 2 plan, 3-10 shard file + marker per shard, 11 errors
@pytest.mark.parametrize("nth_write", [1, 3, 4, 7, 11])
def test_kill_9_at_any_write_then_rerun_gives_every_row_once(tmp_path, images, model_dir, reference, nth_write):
    out = tmp_path / "out"
    args = [str(images), "-o", str(out), "-m", str(model_dir), "--crop", "buckets", "--size", "32", "--flip",
            "both", "--shard-size", "5", "--batch-size", "3", "--threads", "1"]
    killed = subprocess.run([sys.executable, "-c", KILLER, str(nth_write), *args], env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = subprocess.run([sys.executable, "-m", "tinyae", "encode-dataset", *args, "--json"], env=child_env(),
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["shards_todo"] == 4 - min(4, max(0, (nth_write - 3) // 2))  # finished shards were kept
    got, want = rows_by_key(out), rows_by_key(reference)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k]["latents"], want[k]["latents"]) for k in want)
    assert not [p for p in out.rglob(".*")], "temporaries left"


def test_kill_9_at_a_random_time(tmp_path, images, model_dir, reference):
    import random
    import time

    out = tmp_path / "out"
    args = [sys.executable, "-m", "tinyae", "encode-dataset", str(images), "-o", str(out), "-m", str(model_dir),
            "--crop", "buckets", "--size", "32", "--flip", "both", "--shard-size", "5", "--batch-size", "3"]
    p = subprocess.Popen(args, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(random.Random(os.getpid()).uniform(1.0, 3.0))
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert subprocess.run(args, env=child_env(), capture_output=True, timeout=120).returncode == 0
    got, want = rows_by_key(out), rows_by_key(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k]["latents"], want[k]["latents"]) for k in want)


# ---------------------------------------------------------------------------------------------- reading back
def test_latent_dataset_shuffles_deterministically(reference):
    ds = LatentDataset(reference)
    order = lambda seed, epoch=0: [r["key"] for r in ds.shuffled(seed, epoch)]  # noqa: E731
    a = order(0)
    assert a == order(0) and sorted(a) == sorted(ds[i]["key"] for i in range(len(ds)))
    assert a != order(1) and a != order(0, epoch=1) and a != [ds[i]["key"] for i in range(len(ds))]
    assert ds[0]["latents"].dtype == torch.float32 and ds[-1]["key"] == ds[len(ds) - 1]["key"]
    loader = torch.utils.data.DataLoader(ds.shuffled(0), batch_size=None, num_workers=2)
    assert sorted(r["key"] for r in loader) == sorted(a)  # two workers: every row once
    with pytest.raises(IndexError):
        ds[len(ds)]


# ---------------------------------------------------------------------------------------------- command line
def test_cli_encode_and_decode_dataset(tmp_path, images, model_dir, capsys):
    out = tmp_path / "out"
    assert cli.main(["encode-dataset", str(images), "-o", str(out), "-m", str(model_dir), "--crop", "center",
                     "--size", "16", "--shard-size", "8", "--format", "safetensors"]) == 0
    assert "17 images in 3 shards (0 already done, 3 made now): 16 rows, 1 errors" in capsys.readouterr().out
    assert cli.main(["decode-dataset", str(out), "-o", str(tmp_path / "dec"), "-m", str(model_dir), "--keys",
                     "sub1/im01.png"]) == 0
    assert Image.open(tmp_path / "dec" / "sub1__im01.png").size == (16, 16)
    assert cli.main(["encode-dataset", str(tmp_path / "nope"), "-o", str(out)]) == 1
    assert "tinyae: error: " in capsys.readouterr().err
    assert cli.main(["encode-dataset", str(images), "-o", str(out), "-m", str(model_dir), "--size", "16"]) == 1
    assert "holds latents made with" in capsys.readouterr().err


def test_cli_vae_teacher_folder(tmp_path, images, capsys):
    vae, folder = tiny_vae(), tmp_path / "vae"
    vae.save_pretrained(folder)  # config.json + diffusion_pytorch_model.safetensors
    out = tmp_path / "teacher"
    assert cli.main(["encode-dataset", str(images), "-o", str(out), "--vae", str(folder), "--crop", "center",
                     "--size", "16", "--shard-size", "8", "--flip", "both"]) == 0
    ref = encode_dataset(images, tmp_path / "api", vae, preprocess=Preprocess("center", 16, flip="both"),
                         shard_size=8)
    got, want = rows_by_key(out), rows_by_key(tmp_path / "api")
    assert len(got) == 32 and got.keys() == want.keys()
    for k in want:
        for f in ("latents", "mean", "logvar"):
            assert torch.equal(got[k][f], want[k][f])
    man = json.loads((out / "manifest.json").read_text())
    assert man["teacher"] and man["model"] == "AutoencoderKL:vae" and man["model_sha256"] == ref["model_sha256"]
    capsys.readouterr()
    assert cli.main(["decode-dataset", str(out), "-o", str(tmp_path / "dec"), "--limit", "2"]) == 1
    assert "decode it with --vae FOLDER" in capsys.readouterr().err
    assert cli.main(["decode-dataset", str(out), "-o", str(tmp_path / "dec"), "--vae", str(folder), "--keys",
                     "im00.png", "im00.png#flip"]) == 0
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["im00-flip.png", "im00.png"]
    assert Image.open(tmp_path / "dec" / "im00.png").size == (16, 16)
    (tmp_path / "notvae").mkdir()
    (tmp_path / "notvae" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    for bad, says in ((["--vae", str(tmp_path / "notvae")], "expected a diffusers AutoencoderKL"),
                      (["--vae", str(tmp_path)], "config.json"), (["--vae", str(folder), "--precision", "bf16"],
                                                                   "runs as loaded"),
                      (["--vae", str(folder), "-m", "taef2"], "not both")):
        assert cli.main(["encode-dataset", str(images), "-o", str(tmp_path / "x"), *bad]) == 1
        assert says in capsys.readouterr().err


def test_decode_dataset_names_are_unique_without_doubled_suffixes():
    from tinyae.dataset.cli import output_names

    assert output_names(["sub1/im01.png", "sub1/im01.png#flip", "data/0", "a.png", "a.jpg", "b__c.png", "b/c.png"]
                        ) == ["sub1__im01.png", "sub1__im01-flip.png", "data__0.png", "a.png.png", "a.jpg.png",
                              "b__c.png.png", "b__c.png~1.png"]


@pytest.mark.parametrize("fmt", ["parquet", "safetensors"])
def test_shard_reads_rows_of_any_row_group_in_any_order(tmp_path, fmt):
    from tinyae.dataset.shards import Shard, write_shard

    g = torch.Generator().manual_seed(0)
    rows = [{"key": f"{i:04d}", "source": "s", "source_sha256": "0", "original_size": [8, 8], "resized_size": [8, 8],
             "crop": [0, 0, 8, 8], "flipped": False, "latent_shape": [4, 1 + i % 3, 2], "latent_dtype": "bfloat16",
             "model": "m", "model_sha256": "0", "precision": "bf16", "preprocess": "p",
             "latents": torch.randn(4, 1 + i % 3, 2, generator=g), "mean": torch.randn(4, 1 + i % 3, 2, generator=g)}
            for i in range(600)]  # 3 Parquet row groups (256 rows each), rows of 3 shapes
    write_shard(tmp_path / f"s.{fmt}", rows, fmt)
    shard = Shard(tmp_path / f"s.{fmt}")
    assert len(shard) == 600 and shard.fields == ["latents", "mean"] and shard.rows[599]["key"] == "0599"
    for i in [599, 0, 256, 255, 300, 511, 512, 1, 598]:
        for f in ("latents", "mean"):
            assert torch.equal(shard.tensor(i, f), rows[i][f].to(torch.bfloat16)), (i, f)
    with pytest.raises(IndexError):
        shard.tensor(600)


def test_latent_batches_stack_rows_of_one_shape(reference):
    rows = LatentDataset(reference).shuffled(0)
    batches = list(rows.batches(3))
    keys = [r["key"] for b in batches for r in b["rows"]]
    assert sorted(keys) == sorted(r["key"] for r in rows)  # every row once
    for b in batches:
        assert b["latents"].shape[0] == len(b["rows"]) <= 3 and b["latents"].dtype == torch.float32
        assert all(list(b["latents"].shape[1:]) == r["latent_shape"] for r in b["rows"])  # buckets never mix
        assert "latents" not in b["rows"][0]
    assert len({tuple(b["latents"].shape[1:]) for b in batches}) > 1
    full = list(rows.batches(3, drop_last=True))
    assert all(len(b["rows"]) == 3 for b in full)
    loader = torch.utils.data.DataLoader(rows.batches(3), batch_size=None, num_workers=2)
    assert sorted(r["key"] for b in loader for r in b["rows"]) == sorted(keys)


def test_a_ray_worker_resolves_the_jobs_precision_as_the_job_did(tmp_path, taef2):
    """The job records what "auto" resolved to (int8 for the released TAEF2 on CPUs with int8 dot products, bf16
    elsewhere); a Ray worker (built here without Ray) must ask for "auto" again and land on the same precision."""
    from tinyae.dataset.manifest import JobSpec
    from tinyae.dataset.ray_runner import _ShardEncoder

    job = Encoder(taef2, "auto", True)
    pre = Preprocess("center", 64)
    spec = JobSpec("taef2", job.sha256, job.precision, pre.to_dict(), pre.fingerprint())
    worker = _ShardEncoder(str(tmp_path), None, spec, pre, taef2, True, 8, 1)
    assert worker.encoder.precision == job.precision


def test_parquet_shards_store_tensors_uncompressed_and_metadata_zstd(tmp_path):
    """Latent bytes barely compress (bf16: ~78 % with zstd) and their decompression dominated a shuffled read-back,
    so tensor columns are written uncompressed; the metadata columns stay zstd. Rows read back exactly."""
    from tinyae.dataset.shards import Shard, write_shard

    rows = [{"key": f"{i:03d}", "source": f"/x/{i}.png", "source_sha256": "ab" * 32, "original_size": [64, 48],
             "resized_size": [64, 48], "crop": [0, 0, 64, 48], "flipped": False, "latent_shape": [4, 6, 8],
             "latent_dtype": "bfloat16", "model": "m", "model_sha256": "cd" * 32, "precision": "fp32",
             "preprocess": "p", "latents": torch.randn(4, 6, 8), "mean": torch.randn(4, 6, 8)} for i in range(5)]
    path = tmp_path / "s.parquet"
    write_shard(path, rows, "parquet")
    md = pq.ParquetFile(path).metadata.row_group(0)
    kinds = {md.column(i).path_in_schema.split(".")[0]: md.column(i).compression for i in range(md.num_columns)}
    assert kinds.pop("latents") == kinds.pop("mean") == "UNCOMPRESSED"
    assert set(kinds.values()) == {"ZSTD"}
    shard = Shard(path)
    for i, r in enumerate(rows):
        assert torch.equal(shard.tensor(i, "latents"), r["latents"].bfloat16())
        assert shard.rows[i]["crop"] == [0, 0, 64, 48]
