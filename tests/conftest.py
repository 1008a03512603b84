"""Shared fixtures: the real weights and photos in ../shared, small random models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TINYAE_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights"
IMAGES = SHARED / "images"
TAEF2 = (WEIGHTS / "taef2_encoder.pth", WEIGHTS / "taef2_decoder.pth")
TAESANA_ENCODER = WEIGHTS / "taesana_encoder.pth"
PHOTOS = sorted(IMAGES.glob("*.png"))
# bf16 where oneDNN has bf16 kernels (AVX512); AVX2-only CPUs refuse it (test_runtime.py::test_bf16_needs_avx512)
HAS_BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
NARROW = "bf16" if HAS_BF16 else "fp32"  # the narrowest float precision optimize() computes on this CPU

# `make test` runs two pytest-xdist workers on 2 cores: one torch thread each avoids oversubscription, which
# otherwise makes the suite about 3x slower. Benchmarks, not tests, measure multi-threaded speed.
torch.set_num_threads(1)

# No per-example deadline: timings belong in benchmarks, and a loaded CI machine must not fail a correct property.
settings.register_profile("tinyae", deadline=None)
settings.load_profile("tinyae")


def load_photo(path: Path | str, multiple: int = 8) -> torch.Tensor:
    """A photo as (1, 3, H, W) in [-1, 1], cropped to multiples of `multiple`."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[0] // multiple * multiple, rgb.shape[1] // multiple * multiple
    return torch.from_numpy(rgb[:h, :w].copy()).permute(2, 0, 1)[None] / 127.5 - 1


def same_function(got: torch.Tensor, eager: torch.Tensor, exact: Callable[[], torch.Tensor], tol: float) -> bool:
    """float32 parity: within tol of eager float32, or else at least as close as eager to the float64 evaluation
    `exact()` (on an AVX2-only AMD EPYC eager's own rounding reaches 1.14e-5 on astronaut's decode and 9e-5 on its
    latents, against 6.8e-6 for the optimized decode and 4.9e-5 for onnxruntime's latents)."""
    if (got - eager).abs().max() <= tol:
        return True
    ref = exact()
    return bool((got.double() - ref).abs().max() <= (eager.double() - ref).abs().max())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1, 1]."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).double().pow(2).mean()
    return float(10 * torch.log10(1 / mse))


@pytest.fixture(scope="session")
def taef2():
    from tinyae import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(TAEF2)


@pytest.fixture(scope="session")
def astronaut() -> torch.Tensor:
    return load_photo(IMAGES / "astronaut.png")


# ---------------------------------------------------------------------------------------------- video TAEs
@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """Random weights of every video variant (tests/reference_video.py), saved in the original single-file
    layout as <variant>.pth: {variant: (state_dict, path)}."""
    import reference_video as ref
    from tinyae.video import VIDEO_VARIANTS

    root = tmp_path_factory.mktemp("video_weights")
    out = {}
    for i, name in enumerate(VIDEO_VARIANTS):
        sd = ref.random_weights(ref.SPECS[name], seed=i)
        torch.save(sd, root / f"{name}.pth")
        out[name] = (sd, root / f"{name}.pth")
    return out


@pytest.fixture(scope="session")
def models(weights):
    """{variant: AutoencoderTinyVideo} loaded from `weights`."""
    from tinyae.video import AutoencoderTinyVideo

    return {name: AutoencoderTinyVideo.from_pretrained(path, variant=name) for name, (_, path) in weights.items()}
