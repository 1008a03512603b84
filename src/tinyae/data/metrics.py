"""The one PSNR and SSIM of tinyae: images (PIL or arrays, compared per their bit depth) and tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from .images import _from_pil


# ---------------------------------------------------------------------------------------------- metrics
def psnr(a: Any, b: Any) -> float:
    """PSNR in dB of two images (PIL or arrays), compared as floats in [0, 1] per their bit depth (inf if equal)."""
    x, y = _metric_array(a), _metric_array(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {x.shape} vs {y.shape}")
    return _psnr(float(np.mean((x - y) ** 2)))


def tensor_psnr(a: torch.Tensor, b: torch.Tensor, low: float = -1.0, high: float = 1.0) -> float:
    """PSNR in dB of two tensors whose values range over [low, high] (clamped; images in [-1, 1] by default)."""
    mse = ((a.double().clamp(low, high) - b.double().clamp(low, high)) / (high - low)).pow(2).mean()
    return _psnr(float(mse))


def _psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error of values in [0, 1] (inf when 0)."""
    return float("inf") if mse == 0 else float(10 * np.log10(1 / mse))


def ssim(a: Any, b: Any) -> float:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 1), mean over
    channels and the valid region; images smaller than 11 pixels use a window of their size."""
    x, y = (torch.from_numpy(_metric_array(v)).permute(2, 0, 1)[:, None] for v in (a, b))
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {tuple(x.shape)} vs {tuple(y.shape)}")
    n = min(11, x.shape[-1], x.shape[-2])
    g = torch.exp(-((torch.arange(n, dtype=torch.float64) - (n - 1) / 2) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :])[None, None]
    blur = lambda t: torch.nn.functional.conv2d(t, win)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def _metric_array(im: Any) -> np.ndarray:
    """Colour (or gray) channels as float64 (H, W, C) in [0, 1]; alpha is left out."""
    if isinstance(im, Image.Image):
        s = _from_pil(im)
        a = s.rgb[..., :1] if s.grayscale else s.rgb
        return a.astype(np.float64)
    a = np.asarray(im)
    if a.ndim == 2:
        a = a[..., None]
    scale = 255.0 if a.dtype == np.uint8 else 65535.0 if a.dtype == np.uint16 else 1.0
    keep = 1 if a.shape[2] <= 2 else 3
    return a[..., :keep].astype(np.float64) / scale
