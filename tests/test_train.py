"""tinyae.train and `tinyae train` / `tinyae eval`: every mode for a few steps on tiny crops with a tiny random
diffusers teacher, exact resume after kill -9, the NaN guard, resume refusal, export, 2-rank gloo DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tinyae import AutoencoderTiny
from tinyae.cli import main as cli_main
from tinyae.train import TrainConfig, load_teacher
from tinyae.train.trainer import KILL_ENV, Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = {"latent_channels": 4, "encoder_block_out_channels": [8, 8, 8, 8], "decoder_block_out_channels": [8, 8, 8, 8],
        "num_encoder_blocks": [1, 1, 1, 1], "num_decoder_blocks": [1, 1, 1, 1]}
STUDENT = json.dumps(TINY)
FAST = ["--crop", "16", "--batch-size", "2", "--disc-width", "4", "--precision", "fp32", "--log-every", "1",
        "--no-progress", "--export-formats", "original"]


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """A tiny random AutoencoderKL (4 latent channels, 8x), 8 training images in nested folders (one grayscale),
    2 validation images."""
    import diffusers

    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 4, 4),
                                  layers_per_block=1, latent_channels=4, norm_num_groups=2, sample_size=32)
    vae.save_pretrained(root / "vae")
    rng = np.random.default_rng(0)
    for d, n in (("data/a", 4), ("data/b/c", 3), ("val", 2)):
        (root / d).mkdir(parents=True)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(24, 40, 2))
            yy, xx = np.mgrid[0:h, 0:w]
            a = np.stack([(xx * rng.uniform(2, 8)) % 255, (yy * rng.uniform(2, 8)) % 255, (xx + yy) * 3 % 255], -1)
            Image.fromarray(a.astype(np.uint8)).save(root / d / f"im{i}.png")
    Image.fromarray(np.full((20, 24), 128, np.uint8)).save(root / "data/a/gray.png")  # smaller than some crops
    return root


def train_cli(fx: Path, run: Path, *extra: str, teacher: str | None = None, student: str = STUDENT) -> int:
    argv = ["train", "--teacher", teacher or str(fx / "vae"), "--student", student, "--data", str(fx / "data"),
            "--val", str(fx / "val"), "-o", str(run), *FAST, *extra]
    return cli_main(argv)


def records(run: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


LOSS_KEYS = ("loss", "latent", "pool", "mse", "adv", "disc", "grad_norm")


def losses(run: Path) -> list[tuple]:
    return [(r["step"],) + tuple(r.get(k) for k in LOSS_KEYS) for r in records(run)]


def test_mse_only_run_exports_everything(fx, tmp_path):
    run = tmp_path / "run"
    assert train_cli(fx, run, "--adversarial", "off", "--max-steps", "3", "--eval-every", "2") == 0
    steps = records(run)
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all("mse" in r and "disc" not in r for r in steps)
    evals = records(run, "eval")
    assert [r["step"] for r in evals] == [2, 3]
    for key in ("psnr", "ssim", "teacher_psnr", "latent_psnr", "roundtrip_psnr", "via_teacher_psnr"):
        assert np.isfinite(evals[-1][key])
    assert (run / "curves.png").stat().st_size > 0 and (run / "samples" / "step_0000003.png").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    model = AutoencoderTiny.from_pretrained(run / "final")
    assert model.decode(torch.zeros(1, 4, 2, 2)).sample.shape == (1, 3, 16, 16)
    import diffusers

    theirs = diffusers.AutoencoderTiny.from_pretrained(run / "final")  # the diffusers contract, too
    z = torch.randn(1, 4, 2, 2)
    assert torch.allclose(theirs.decode(z).sample, model.decode(z).sample, atol=1e-5)
    cfg = json.loads((run / "final" / "config.json").read_text())
    assert cfg["_tinyae_training"]["latents"] == {"kind": "affine", "family": None, "scaling_factor": 0.18215,
                                                  "shift_factor": 0.0}
    card = (run / "final" / "README.md").read_text()
    assert str(fx / "vae") in card and "tinyae train --teacher" in card and "3 steps" in card
    pair = AutoencoderTiny.from_pretrained((run / "final/tae_encoder.safetensors",
                                            run / "final/tae_decoder.safetensors"))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(pair.encode(x).latents, model.encode(x).latents)


def test_adversarial_run_keeps_discriminator_and_replay_buffer(fx, tmp_path):
    run = tmp_path / "run"
    assert train_cli(fx, run, "--max-steps", "3", "--replay-size", "3") == 0
    steps = records(run)
    assert all(np.isfinite(r["disc"]) and np.isfinite(r["adv"]) for r in steps)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["adv"]["buffer"]["fakes"].shape == (3, 3, 16, 16)
    assert ckpt["step"] == 3 and ckpt["samples_seen"] == 6


def test_mse_warm_up_then_adversarial_phase(fx, tmp_path):
    run = tmp_path / "run"
    assert train_cli(fx, run, "--max-steps", "5", "--adv-start", "3", "--replay-size", "8") == 0
    steps = records(run)
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    for r in steps[:3]:  # warm-up: full-resolution pixel MSE, no discriminator
        assert "mse" in r and "disc" not in r and "adv" not in r
    for r in steps[3:]:  # then the recipe: the discriminator trains and the adversarial term joins
        assert "mse" not in r and np.isfinite(r["disc"]) and np.isfinite(r["adv"])
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["adv"]["buffer"]["fakes"].shape[0] == 4  # 2 adversarial steps of batch 2 fed the buffer
    assert train_cli(fx, tmp_path / "bad", "--max-steps", "1", "--adv-start", "-1") != 0


def test_frozen_halves_and_fine_tune(fx, tmp_path):
    torch.manual_seed(1)
    base = AutoencoderTiny(**TINY)
    base.save_pretrained(tmp_path / "base")
    for train, frozen in (("decoder", "encoder"), ("encoder", "decoder")):
        run = tmp_path / train
        assert train_cli(fx, run, "--train", train, "--max-steps", "2", "--ema", "0",
                         student=str(tmp_path / "base")) == 0
        out = AutoencoderTiny.from_pretrained(run / "final")
        same = lambda part: all(torch.equal(a, b) for a, b in zip(getattr(out, part).state_dict().values(),  # noqa
                                                                   getattr(base, part).state_dict().values()))
        assert same(frozen) and not same(train)


def test_recover_a_decoder_from_encoder_weights(fx, tmp_path):
    """Student = an encoder-only file (frozen) + a decoder from scratch: the export holds both halves."""
    torch.manual_seed(2)
    enc = AutoencoderTiny(**TINY)
    enc.save_original(tmp_path, "t")
    teacher = f"{tmp_path / 't_encoder.safetensors'},"
    run = tmp_path / "run"
    assert train_cli(fx, run, "--train", "decoder", "--max-steps", "2", "--adversarial", "off", teacher=teacher,
                     student=teacher) == 0
    out = AutoencoderTiny.from_pretrained(run / "final")
    assert out.encoder is not None and out.decoder is not None
    assert all(torch.equal(a, b) for a, b in zip(out.encoder.state_dict().values(), enc.encoder.state_dict().values()))


def test_untrained_half_from_scratch_is_not_exported(fx, tmp_path):
    run = tmp_path / "run"
    assert train_cli(fx, run, "--train", "decoder", "--max-steps", "1", "--adversarial", "off") == 0
    out = AutoencoderTiny.from_pretrained(run / "final")
    assert out.encoder is None and out.decoder is not None


def test_loss_decreases_on_a_fixed_batch(fx, tmp_path):
    cfg = TrainConfig(teacher=str(fx / "vae"), student=STUDENT, data=[str(fx / "data")], crop_schedule=[(16, 0)],
                      batch_size=4, adversarial="off", w_mse=1.0, lr=3e-3, precision="fp32", max_steps=40)
    t = Trainer(cfg, tmp_path / "run", progress=False)
    batch = t.data.batch(0, 4, 16)
    t.data.batch = lambda *a: batch
    losses = []
    for _ in range(40):
        losses.append(t.train_step()["loss"])
        t.step += 1
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_nan_in_the_batch_is_skipped_with_a_message(fx, tmp_path):
    said = []
    cfg = TrainConfig(teacher=str(fx / "vae"), student=STUDENT, data=[str(fx / "data")], crop_schedule=[(16, 0)],
                      batch_size=2, disc_width=4, precision="fp32", max_steps=4, log_every=1,
                      export_formats=())
    t = Trainer(cfg, tmp_path / "run", say=said.append, progress=False)
    real = t.data.batch

    def poisoned(start, size, crop):
        x, z = real(start, size, crop)
        if start == 2:  # step 2
            x[0, 0, 3, 3] = float("nan")
        return x, z

    t.data.batch = poisoned
    before = {}

    def spy(orig=t.train_step):
        if t.step == 1:
            before.update({k: v.clone() for k, v in t.student.state_dict().items()})
        r = orig()
        if t.step == 1:
            assert all(torch.equal(before[k], v) for k, v in t.student.state_dict().items())
        return r

    t.train_step = spy
    summary = t.run()
    assert any(m.startswith("step 2: NaN or Inf") and "step skipped" in m for m in said)
    assert [r.get("skipped", False) for r in records(tmp_path / "run")] == [False, True, False, False]
    assert summary["step"] == 4
    assert all(torch.isfinite(p).all() for p in t.student.parameters())


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_kill_9_and_resume_gives_identical_losses(fx, tmp_path):
    args = ["--max-steps", "7", "--checkpoint-every", "2", "--eval-every", "100", "--replay-size", "3"]
    ref = tmp_path / "ref"
    assert train_cli(fx, ref, *args) == 0
    run = tmp_path / "run"
    cmd = [sys.executable, "-c", "import sys, torch; torch.set_num_threads(1); from tinyae.cli import main; "
           "sys.exit(main(sys.argv[1:]))", "train", "--teacher", str(fx / "vae"), "--student", STUDENT, "--data",
           str(fx / "data"), "--val", str(fx / "val"), "-o", str(run), *FAST, *args]
    killed = subprocess.run(cmd, env={**_subprocess_env(), KILL_ENV: "5"}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, 5]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "at step 4" in resumed.stderr
    assert losses(run) == losses(ref)
    a, b = (AutoencoderTiny.from_pretrained(r / "final") for r in (ref, run))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_refuses_a_changed_run_and_accepts_a_new_budget(fx, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli(fx, run, "--max-steps", "2", "--adversarial", "off") == 0
    assert train_cli(fx, run, "--max-steps", "3", "--adversarial", "off", "--crop", "24") == 1
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "--crop-schedule" in err and "[[16, 0]]" in err
    assert train_cli(fx, run, "--max-steps", "3", "--adversarial", "off", "--lr", "1e-3") == 1
    assert "--lr" in capsys.readouterr().err
    assert train_cli(fx, run, "--max-steps", "3", "--adversarial", "off", "--eval-every", "7") == 0
    assert [r["step"] for r in records(run)] == [1, 2, 3]


def test_bad_settings_are_one_line_errors(fx, tmp_path, capsys):
    assert train_cli(fx, tmp_path / "r", "--max-steps", "1", "--crop", "20") == 1
    assert "multiples of 8" in capsys.readouterr().err
    assert train_cli(fx, tmp_path / "r", "--max-steps", "1", student="taef2") == 1
    assert "32 latent channels" in capsys.readouterr().err
    assert train_cli(fx, tmp_path / "r") == 1
    assert "--max-steps" in capsys.readouterr().err
    assert train_cli(fx, tmp_path / "r", "--max-steps", "1", "--tint", "1.5") == 1
    assert "--tint must be in [0, 1], got 1.5" in capsys.readouterr().err
    assert train_cli(fx, tmp_path / "r", "--max-steps", "1", "--tint", "0.5", teacher=f"latents:{tmp_path}") == 1
    assert "precomputed latents (latents:DIR) cannot follow" in capsys.readouterr().err


def test_precomputed_latents_teacher(fx, tmp_path):
    from tinyae import encode_images, save_latents
    from tinyae.train.data import list_images

    torch.manual_seed(3)
    tae = AutoencoderTiny(**TINY).eval()
    (tmp_path / "lat").mkdir()
    for path in list_images([fx / "data"]) + list_images([fx / "val"]):
        save_latents(tmp_path / "lat" / f"{path.stem}.safetensors", encode_images(tae, [path])[0])
    run = tmp_path / "run"
    assert train_cli(fx, run, "--max-steps", "2", "--adversarial", "off", "--crop", "16",
                     teacher=f"latents:{tmp_path / 'lat'}") == 0
    assert "psnr" in records(run, "eval")[-1] and "teacher_psnr" not in records(run, "eval")[-1]


def test_whole_image_teacher_latents_run_repeats_and_resumes_exactly(fx, tmp_path, capsys):
    args = ["--adversarial", "off", "--teacher-latents", "whole", "--checkpoint-every", "2"]
    ref = tmp_path / "ref"
    assert train_cli(fx, ref, "--max-steps", "4", *args) == 0
    run = tmp_path / "run"
    assert train_cli(fx, run, "--max-steps", "2", *args) == 0
    assert train_cli(fx, run, "--max-steps", "4", *args) == 0  # resumed: a new process would rebuild the cache
    assert losses(run) == losses(ref)
    assert train_cli(fx, run, "--max-steps", "5", "--adversarial", "off") == 1
    assert "--teacher-latents: the run has 'whole'" in capsys.readouterr().err
    assert train_cli(fx, tmp_path / "bad", "--max-steps", "1", *args, "--latent-sample") == 1
    assert "--latent-sample" in capsys.readouterr().err


def test_diffusers_teacher_classes(tmp_path):
    """FLUX.2 (batch norm + patchify, as tinyae.latents), Sana DC-AE and Qwen-Image teachers load by class name."""
    import diffusers

    from tinyae.data.latents import from_vae_latents
    from tinyae.nets.variants import FAMILIES

    torch.manual_seed(0)
    flux2 = diffusers.AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * 4,
                                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 4, 4),
                                         layers_per_block=1, latent_channels=4, norm_num_groups=2, sample_size=32)
    flux2.bn.running_mean.uniform_(-1, 1)
    flux2.bn.running_var.uniform_(0.5, 2)
    flux2.save_pretrained(tmp_path / "flux2")
    t = load_teacher(str(tmp_path / "flux2"))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    raw = flux2.encode(x).latent_dist.mode()
    fam = dataclasses.replace(FAMILIES["flux2"], latent_channels=4)  # a 4-channel FLUX.2-style VAE
    expect = from_vae_latents(raw, fam, bn_mean=flux2.bn.running_mean, bn_var=flux2.bn.running_var,
                              bn_eps=flux2.config.batch_norm_eps)
    assert torch.allclose(t.encode(x), expect, atol=1e-6) and t.convention["kind"] == "flux2"
    assert torch.allclose(t.decode(t.encode(x)), flux2.decode(raw).sample, atol=1e-5)
    dc = diffusers.AutoencoderDC(in_channels=3, latent_channels=4, encoder_block_types=("ResBlock",) * 3,
                                 decoder_block_types=("ResBlock",) * 3, encoder_block_out_channels=(4, 4, 4),
                                 decoder_block_out_channels=(4, 4, 4), encoder_layers_per_block=(1, 1, 1),
                                 decoder_layers_per_block=(1, 1, 1), encoder_qkv_multiscales=((), (), ()),
                                 decoder_qkv_multiscales=((), (), ()), decoder_norm_types="rms_norm",
                                 decoder_act_fns="silu", scaling_factor=0.5)
    dc.save_pretrained(tmp_path / "dc")
    t = load_teacher(str(tmp_path / "dc"))
    assert t.scale_factor == 4 and t.convention["scaling_factor"] == 0.5
    assert torch.allclose(t.encode(x), dc.encode(x).latent * 0.5, atol=1e-6)
    qwen = diffusers.AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                            latents_mean=[0.1, 0.2, 0.3, 0.4], latents_std=[1.0, 2.0, 3.0, 4.0])
    qwen.save_pretrained(tmp_path / "qwen")
    t = load_teacher(str(tmp_path / "qwen"))
    z = t.encode(x)
    raw = qwen.encode(x[:, :, None]).latent_dist.mode()[:, :, 0]
    mean, std = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 4, 1, 1), torch.tensor([1.0, 2, 3, 4]).view(1, 4, 1, 1)
    assert z.shape == (1, 4, 4, 4) and torch.allclose(z, (raw - mean) / std, atol=1e-6)


def test_eval_command(fx, tmp_path, capsys):
    torch.manual_seed(4)
    AutoencoderTiny(**TINY).save_pretrained(tmp_path / "m")
    assert cli_main(["eval", str(tmp_path / "m"), str(fx / "val"), "--teacher", str(fx / "vae"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["images"]) == 2
    for key in ("psnr", "ssim", "teacher_psnr", "teacher_gt_psnr", "latent_psnr", "roundtrip_psnr"):
        assert np.isfinite(doc["mean"][key])
    assert cli_main(["eval", str(tmp_path / "m"), str(fx / "val")]) == 0
    out = capsys.readouterr().out
    assert "roundtrip_psnr" in out and "mean" in out and "teacher_psnr" not in out


def test_two_rank_gloo_ddp_kill_resume_exact_then_resume_on_one(fx, tmp_path):
    """torchrun, 2 CPU ranks (gloo): kill -9 at step 5 and resume on 2 ranks gives the uninterrupted run's losses
    (every rank's replay buffer is saved); then a resume on 1 rank continues from the global data position, and
    one on 2 ranks again from that."""
    def common(run: Path) -> list[str]:
        return ["--teacher", str(fx / "vae"), "--student", STUDENT, "--data", str(fx / "data"), "-o", str(run),
                *FAST, "--device", "cpu", "--replay-size", "32", "--checkpoint-every", "2", "--batch-size", "4"]

    def torchrun(run: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                               "2", "-m", "tinyae", "train", *common(run), *extra],
                              env=env or _subprocess_env(), capture_output=True, text=True, timeout=300)

    ref, run = tmp_path / "ref", tmp_path / "run"
    done = torchrun(ref, "--max-steps", "7")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stderr
    killed = torchrun(run, "--max-steps", "7", env={**_subprocess_env(), KILL_ENV: "5"})
    assert killed.returncode != 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = torchrun(run, "--max-steps", "7")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(run) == losses(ref)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["samples_seen"] == 7 * 2 * 4 and ckpt["world_size"] == 2
    one = subprocess.run([sys.executable, "-m", "tinyae", "train", *common(run), "--max-steps", "8"],
                         env=_subprocess_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["samples_seen"] == 56 + 4
    assert [r["step"] for r in records(run)] == list(range(1, 9))
    back = torchrun(run, "--max-steps", "9")  # and back on 2 ranks: rank 1's file (step 7) is stale, not used
    assert back.returncode == 0, back.stderr[-3000:]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["samples_seen"] == 60 + 2 * 4 and ckpt["world_size"] == 2 and ckpt["step"] == 9
    assert [r["step"] for r in records(run)] == list(range(1, 10))
    assert all(np.isfinite(v) for row in losses(run) for v in row if v is not None)


def test_ranks_read_disjoint_shards(fx):
    from tinyae.train.data import ImageData

    d = ImageData([str(fx / "data")], seed=0, flip=0.5, color_aug=0.5)
    n = len(d)
    one = [d.image_index(g) for g in range(n)]
    assert sorted(one) == list(range(n))  # an epoch visits every image once, whichever rank reads it
    x1, _ = d.batch(0, 4, 16)
    x2, _ = d.batch(0, 4, 16)
    assert torch.equal(x1, x2)


def test_time_budget_stops_and_a_larger_one_resumes(fx, tmp_path):
    cfg = dict(teacher=str(fx / "vae"), student=STUDENT, data=[str(fx / "data")], crop_schedule=[(16, 0)],
               batch_size=2, adversarial="off", w_mse=1.0, precision="fp32", export_formats=())
    first = Trainer(TrainConfig(**cfg, time_budget=1e-6), tmp_path / "run", progress=False).run()
    assert first["step"] == 1
    again = Trainer(TrainConfig(**cfg, time_budget=1e-6, max_steps=3), tmp_path / "run", progress=False)
    assert again.resumed and again.step == 1
    assert again.run()["step"] == 1  # the time budget is spent: nothing more
    more = Trainer(TrainConfig(**cfg, max_steps=3), tmp_path / "run", progress=False).run()
    assert more["step"] == 3


def test_diffusers_teacher_from_the_hub(fx, tmp_path, monkeypatch):
    """A hub id whose config.json names AutoencoderKL loads with diffusers (tests/hubserver.py, no network)."""
    import time

    from hubserver import HubServer, point_hub

    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    files = {p.name: p for p in (fx / "vae").iterdir()}
    with HubServer() as server:
        point_hub(monkeypatch, endpoint=server.endpoint, home=tmp_path / "hf")
        server.add_repo("someone/tiny-kl", files)
        t = load_teacher("someone/tiny-kl")
    local = load_teacher(str(fx / "vae"))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert t.kind == "diffusers" and t.cls == "AutoencoderKL"
    assert torch.equal(t.encode(x), local.encode(x))


def test_checkpoint_every_n_minutes(fx, tmp_path, monkeypatch):
    from tinyae.train import checkpoint

    saved, real = [], checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda run_dir, state: (saved.append(state["step"]),
                                                                    real(run_dir, state))[1])
    cfg = TrainConfig(teacher=str(fx / "vae"), student=STUDENT, data=[str(fx / "data")], crop_schedule=[(16, 0)],
                      batch_size=2, adversarial="off", w_mse=1.0, precision="fp32", export_formats=(), max_steps=3,
                      checkpoint_every=1000, checkpoint_minutes=1e-9)
    Trainer(cfg, tmp_path / "run", progress=False).run()
    assert saved == [1, 2, 3, 3]  # every step (the minutes elapsed), and once at the end


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31), g=st.integers(0, 10 ** 6), crop=st.sampled_from([8, 16, 32, 48]),
       color=st.booleans())
def test_samples_are_deterministic_crops_in_range(fx, seed, g, crop, color):
    from tinyae.train.data import ImageData

    d = ImageData([str(fx / "data")], seed=seed, flip=0.5, color_aug=1.0 if color else 0.0)
    x, z = d.sample(g, crop)
    assert x.shape == (3, crop, crop) and z is None
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(x, d.sample(g, crop)[0])


@given(st.lists(st.tuples(st.integers(1, 64).map(lambda v: v * 8), st.integers(1, 10 ** 6)), max_size=4,
                unique_by=lambda t: t[1]))
def test_crop_schedule_parses_and_applies(extra):
    from tinyae.train.config import parse_crop_schedule

    schedule = [(96, 0)] + sorted(extra, key=lambda t: t[1])
    text = ",".join(f"{px}:{step}" for px, step in schedule)
    cfg = TrainConfig(teacher="t", student="s", data=["d"], crop_schedule=parse_crop_schedule(text))
    assert cfg.crop_schedule == schedule
    for i, (px, step) in enumerate(schedule):
        assert cfg.crop_at(step) == px
        if i + 1 < len(schedule):
            assert cfg.crop_at(schedule[i + 1][1] - 1) == px


def test_resume_differences_name_what_changed():
    from tinyae.train.config import resume_differences

    a = TrainConfig(teacher="t", student="s", data=["d"], max_steps=10)
    b = TrainConfig(teacher="t2", student="s", data=["d"], max_steps=99, time_budget=5, eval_every=3, w_pool=0.5)
    diffs = resume_differences(a.to_dict(), b)
    assert [d.split(":")[0] for d in diffs] == ["--teacher", "--w-pool"]


def test_bf16_autocast_and_sampled_latents_are_deterministic(fx, tmp_path):
    """bf16 autocast on the CPU (where oneDNN supports it; float32 elsewhere) with the teacher's posterior sampled:
    two runs give the same losses."""
    cfg = dict(teacher=str(fx / "vae"), student=STUDENT, data=[str(fx / "data")], crop_schedule=[(16, 0)],
               batch_size=2, disc_width=4, precision="bf16", latent_sample=True, max_steps=2, log_every=1,
               export_formats=())
    for name in ("a", "b"):
        Trainer(TrainConfig(**cfg), tmp_path / name, progress=False).run()
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert all(np.isfinite(v) for row in losses(tmp_path / "a") for v in row if v is not None)
    mean_run = tmp_path / "mean"
    Trainer(TrainConfig(**{**cfg, "latent_sample": False}), mean_run, progress=False).run()
    assert losses(mean_run) != losses(tmp_path / "a")


def test_adversarial_loss_is_pluggable(fx, tmp_path, monkeypatch):
    from tinyae.train import losses as L

    calls = []

    class TowardReal:  # a stand-in: its "correction" is the real image itself
        def __init__(self, channels, cfg, device):
            self.disc = self.net = torch.nn.Identity()

        def disc_step(self, real, fake, ctx, autocast, scaler):
            calls.append(ctx.shape[1])
            return 0.5, True

        def targets(self, real, fake, ctx, autocast):
            return real.detach()

        def state_dict(self):
            return {"calls": len(calls)}

        def load_state_dict(self, sd):
            pass

    monkeypatch.setitem(L.ADVERSARIAL_LOSSES, "toward-real", TowardReal)
    run = tmp_path / "run"
    assert train_cli(fx, run, "--max-steps", "2", "--adversarial", "toward-real", "--train", "decoder") == 0
    assert calls == [4, 4] and all(r["disc"] == 0.5 for r in records(run))


def test_final_holds_every_format_and_each_loads_back_the_same(fx, tmp_path):
    """final/: the diffusers layout, the original single files (.safetensors and .pth), the ComfyUI file, ONNX and
    the model card; every one loads back (tinyae, diffusers, onnxruntime) to the same outputs as the EMA student."""
    import diffusers

    from tinyae.runtime import load_backend

    run = tmp_path / "run"
    assert train_cli(fx, run, "--max-steps", "2", "--adversarial", "off", "--export-formats",
                     "diffusers,original,comfyui,onnx") == 0
    final = run / "final"
    names = {p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "README.md", "tae_encoder.safetensors",
            "tae_decoder.safetensors", "tae_encoder.pth", "tae_decoder.pth", "comfyui/tae.safetensors",
            "onnx/encoder.onnx", "onnx/decoder.onnx"} <= names
    assert not (run / "export").exists()
    ema = AutoencoderTiny(**TINY)
    ema.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["ema"])
    ema.eval()
    x = torch.rand(1, 3, 24, 32) * 2 - 1
    z = torch.randn(1, 4, 3, 4)
    with torch.no_grad():
        want = ema.encode(x).latents, ema.decode(z).sample
        loaded = {"diffusers folder": AutoencoderTiny.from_pretrained(final),
                  "original safetensors": AutoencoderTiny.from_pretrained((final / "tae_encoder.safetensors",
                                                                          final / "tae_decoder.safetensors")),
                  "original pth": AutoencoderTiny.from_pretrained((final / "tae_encoder.pth",
                                                                  final / "tae_decoder.pth")),
                  "comfyui": AutoencoderTiny.from_pretrained(final / "comfyui" / "tae.safetensors"),
                  "diffusers' own class": diffusers.AutoencoderTiny.from_pretrained(final).eval()}
        for what, m in loaded.items():
            assert torch.equal(m.encode(x).latents, want[0]), what
            assert torch.equal(m.decode(z).sample, want[1]), what
        backend = load_backend(final / "onnx", "onnxruntime")
        assert (backend.encode(x).latents - want[0]).abs().max() <= 1e-4
        assert (backend.decode(z).sample - want[1]).abs().max() <= 1e-4
    card = (final / "README.md").read_text()
    assert "`final/tae_decoder.pth`" in card and "`final/onnx/decoder.onnx`" in card
    # a resume that asks for fewer formats leaves none of the older export behind (stale weights)
    assert train_cli(fx, run, "--max-steps", "3", "--adversarial", "off", "--export-formats", "original") == 0
    names = {p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()}
    assert names == {"config.json", "diffusion_pytorch_model.safetensors", "README.md", "tae_encoder.safetensors",
                     "tae_decoder.safetensors", "tae_encoder.pth", "tae_decoder.pth"}
    assert "onnx" not in (final / "README.md").read_text()
    assert not (final / "onnx").exists() and not (final / "comfyui").exists()


def test_eval_table_and_json_agree(fx, tmp_path, capsys):
    """`tinyae eval`: one row per image and a mean row, the same numbers as --json; --size crops; errors are one
    line."""
    torch.manual_seed(5)
    AutoencoderTiny(**TINY).save_pretrained(tmp_path / "m")
    base = ["eval", str(tmp_path / "m"), str(fx / "val"), "--teacher", str(fx / "vae"), "--size", "16"]
    assert cli_main([*base, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["command"] == "eval" and doc["teacher"] == str(fx / "vae")
    assert [m["image"] for m in doc["images"]] == ["im0.png", "im1.png"]
    assert cli_main(base) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0].split(), [ln.split() for ln in lines[1:]]
    assert header[0] == "image" and set(header[1:]) == set(doc["mean"])
    assert [r[0] for r in rows] == ["im0.png", "im1.png", "mean"]
    for row, m in zip(rows, doc["images"] + [doc["mean"]]):
        for key, cell in zip(header[1:], row[1:]):
            assert float(cell) == pytest.approx(m[key], abs=1e-4 if "ssim" in key else 0.01)
    assert cli_main(["eval", str(tmp_path / "m"), str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinyae: error: FOLDER ") and "not a folder" in err and len(err.strip().splitlines()) == 1


def test_latent_convention_precedence_and_pipeline_folders(fx, tmp_path):
    """Explicit factors win over --family, which wins over the VAE's config; a pipeline folder's vae/ is found;
    --family flux2 without the FLUX.2 VAE's statistics is refused."""
    import shutil

    import diffusers

    from tinyae.train import TeacherError

    shutil.copytree(fx / "vae", tmp_path / "pipe" / "vae")
    vae = diffusers.AutoencoderKL.from_pretrained(fx / "vae")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    mode = vae.encode(x).latent_dist.mode()
    own = load_teacher(str(tmp_path / "pipe"))
    assert own.convention["scaling_factor"] == 0.18215 and torch.allclose(own.encode(x), mode * 0.18215)
    sdxl = load_teacher(str(fx / "vae"), family="sdxl")
    assert (sdxl.convention["family"], sdxl.convention["scaling_factor"]) == ("sdxl", 0.13025)
    explicit = load_teacher(str(fx / "vae"), family="sdxl", scaling_factor=0.5, shift_factor=0.1)
    assert (explicit.convention["scaling_factor"], explicit.convention["shift_factor"]) == (0.5, 0.1)
    assert torch.allclose(explicit.encode(x), (mode - 0.1) * 0.5, atol=1e-6)
    assert torch.allclose(explicit.decode(explicit.encode(x)), vae.decode(mode).sample, atol=1e-5)
    with pytest.raises(TeacherError, match="batch-norm"):
        load_teacher(str(fx / "vae"), family="flux2")
