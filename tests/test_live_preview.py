"""LivePreview: one frame per step in every pipeline family, exact x0 previews, outputs, and never breaking."""

from __future__ import annotations

import warnings

import diffusers
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, features

from tinyae.diffusers import AutoencoderTiny, LivePreview, make_contact_sheet, x0_from_two
from tinyae.data.latents import pack_flux, pack_flux2

from conftest import psnr
from tiny_pipelines import FAMILIES, LATENT_CHANNELS, SIZE, build, install_exact_denoiser, random_tae


@pytest.fixture(scope="module")
def taef2_vae(taef2):
    return AutoencoderTiny.from_model(taef2)


def vae_for(family, taef2_vae):
    return taef2_vae if family.startswith("flux2") else random_tae(family)


def as_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


@pytest.mark.parametrize("family", FAMILIES)
def test_one_frame_per_step_and_the_last_is_the_final_image(family, taef2_vae):
    pipe, kw = build(family, vae_for(family, taef2_vae))
    seen = []
    lp = LivePreview(pipe.vae, pipe=pipe, on_frame=seen.append)
    image = pipe(**dict(kw, num_inference_steps=3), callback_on_step_end=lp).images[0]
    assert [f.step for f in lp.frames] == [0, 1, 2] and seen == lp.frames
    assert [f.kind for f in lp.frames] == ["xt", "x0", "x0"]
    assert all(f.image.size == (SIZE, SIZE) for f in lp.frames)
    assert psnr(as_tensor(lp.frames[-1].image), as_tensor(image)) >= 40


def _target(family: str):
    """A known target latent in the TAE's space and in the pipeline's space (packed tokens for FLUX)."""
    z = torch.randn(1, LATENT_CHANNELS[family], SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(7))
    packed = pack_flux(z) if family == "flux" else pack_flux2(z) if family.startswith("flux2") else z
    return z, packed


X0_CASES = [("sd", None), ("sd", "DDIMScheduler"), ("sd", "DPMSolverMultistepScheduler"),
            ("sd", "UniPCMultistepScheduler"), ("sdxl", None),
            ("sd3", None), ("flux", None), ("flux2", None), ("flux2-dev", None)]


@pytest.mark.parametrize("family,scheduler", X0_CASES)
def test_x0_previews_equal_the_target_after_the_first_step(family, scheduler):
    z, packed = _target(family)
    sched = getattr(diffusers, scheduler)(steps_offset=1) if scheduler else None
    pipe, kw = build(family, random_tae(family), scheduler=sched)
    install_exact_denoiser(pipe, family, packed)
    kw.update(num_inference_steps=4)
    x0 = LivePreview(pipe.vae, pipe=pipe, strict=True)
    xt = LivePreview(pipe.vae, pipe=pipe, strict=True, mode="xt")
    both = lambda p, i, t, k: xt(p, i, t, x0(p, i, t, k))  # noqa: E731
    pipe(**kw, output_type="latent", callback_on_step_end=both)
    first_exact = 0 if scheduler and "Multistep" in scheduler else 1  # these keep their own x0 estimate
    assert [f.kind for f in x0.frames] == ["xt"] * first_exact + ["x0"] * (4 - first_exact)
    for f in x0.frames[first_exact:]:
        assert (f.latents - z).abs().max() < 1e-4, f.step
    assert all(f.kind == "xt" for f in xt.frames)
    for f in xt.frames[:-1]:
        assert (f.latents - z).abs().max() > 1e-2, f.step


@settings(max_examples=50, deadline=None)
@given(a=st.floats(0.05, 1.0), s=st.floats(0.05, 20.0), a2=st.floats(0.05, 1.0), s2=st.floats(0.0, 20.0),
       seed=st.integers(0, 2**16))
def test_x0_from_two_latents_recovers_x0(a, s, a2, s2, seed):
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64).unbind(0)
    den = s2 * a - s * a2
    est = x0_from_two(a * x0 + s * noise, (a, s), a2 * x0 + s2 * noise, (a2, s2))
    if abs(den) < 1e-3:  # (nearly) the same noise-to-signal ratio: x0 is not determined
        return
    assert est is not None
    torch.testing.assert_close(est, x0, rtol=1e-6, atol=1e-5 * (1 + (s + s2) / abs(den)))


def test_every_n_steps_and_the_last_one():
    pipe, kw = build("sd3", random_tae("sd3"))
    lp = LivePreview(pipe.vae, every=2)
    pipe(**dict(kw, num_inference_steps=4), output_type="latent", callback_on_step_end=lp)
    assert [f.step for f in lp.frames] == [0, 2, 3]


def test_unsupported_scheduler_previews_raw_latents():
    pipe, kw = build("sd", random_tae("sd"), scheduler=diffusers.EulerAncestralDiscreteScheduler(steps_offset=1))
    lp = LivePreview(pipe.vae)
    pipe(**dict(kw, num_inference_steps=3), output_type="latent", callback_on_step_end=lp)
    assert [f.kind for f in lp.frames] == ["xt"] * 3


def test_files_animation_and_contact_sheet(tmp_path):
    pipe, kw = build("flux", random_tae("flux"))
    anim = tmp_path / "steps.webp" if features.check("webp") else tmp_path / "steps.gif"
    lp = LivePreview(pipe.vae, pipe=pipe, save_dir=tmp_path / "frames", animation=tmp_path / "steps.gif",
                     contact_sheet=tmp_path / "sheet.png", tile=32)
    pipe(**dict(kw, num_inference_steps=3), callback_on_step_end=lp)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["step_000.png", "step_001.png",
                                                                       "step_002.png"]
    with Image.open(tmp_path / "steps.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (SIZE, SIZE)
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == (3 * 32, 32)
    from tinyae.diffusers import save_animation

    save_animation([Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")], anim, frame_ms=50)
    with Image.open(anim) as im:
        assert im.n_frames == 3
    assert not [p for p in tmp_path.rglob("*.tmp")]
    assert make_contact_sheet(lp.images, columns=2, tile=16).size == (32, 32)


def test_a_failing_preview_warns_once_and_switches_off():
    pipe, kw = build("sd", random_tae("sd"))
    calls = []

    def broken(frame):
        calls.append(frame.step)
        raise OSError("disk full")

    lp = LivePreview(pipe.vae, on_frame=broken)
    with pytest.warns(RuntimeWarning, match="switched off .* step 0: OSError: disk full") as record:
        image = pipe(**dict(kw, num_inference_steps=3), output_type="pt", callback_on_step_end=lp).images
    assert image.shape == (1, 3, SIZE, SIZE) and calls == [0] and not lp.enabled
    assert sum(issubclass(w.category, RuntimeWarning) and "LivePreview" in str(w.message) for w in record) == 1


def test_strict_preview_raises():
    pipe, kw = build("sd", random_tae("sd"))
    lp = LivePreview(pipe.vae, strict=True, on_frame=lambda f: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        pipe(**kw, callback_on_step_end=lp)


def test_non_square_flux_needs_the_size():
    pipe, kw = build("flux", random_tae("flux"))
    kw.update(width=2 * SIZE)
    lp = LivePreview(pipe.vae, pipe=pipe)
    with pytest.warns(RuntimeWarning, match="square"):
        pipe(**kw, output_type="latent", callback_on_step_end=lp)
    lp = LivePreview(pipe.vae, pipe=pipe, height=SIZE, width=2 * SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pipe(**kw, output_type="latent", callback_on_step_end=lp)
    assert lp.frames[-1].image.size == (2 * SIZE, SIZE)


def test_wrong_model_is_caught_at_the_first_step_without_a_pipe():
    pipe, kw = build("flux", random_tae("flux"))
    lp = LivePreview(random_tae("sd"))
    with pytest.warns(RuntimeWarning, match="4 latent channels but FluxPipeline needs 16"):
        pipe(**kw, output_type="latent", callback_on_step_end=lp)


@pytest.mark.parametrize("kwargs,match", [
    (dict(every=0), "every"), (dict(mode="x1"), "mode"), (dict(animation="a.mp4"), "gif or .webp"),
    (dict(contact_sheet="s.txt"), "contact_sheet"), (dict(height=64), "both"), (dict(tile=0), "tile"),
    (dict(on_frame=3), "callable"), (dict(keep_frames=False, animation="a.gif"), "keep_frames"),
    (dict(family="flux"), "4 latent channels but family 'flux' needs 16"),
])
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LivePreview(random_tae("sd"), **kwargs)
    with pytest.raises(ValueError, match="AutoencoderTiny"):
        LivePreview(object())


def test_example_runs(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(root / "examples" / "live_preview.py"), "--size", "64", "--steps", "3",
                          "--tile", "32", "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "['xt', 'x0', 'x0']" in out.stdout
    with Image.open(tmp_path / "strip.jpg") as strip:
        assert strip.size == (3 * 32, 2 * 32)
