"""Compatibility: `tinyae.images` is now `tinyae.data.images` (reading, encode_images/decode_latents) and
`tinyae.data.metrics` (psnr, ssim, tensor_psnr)."""

from ._compat import reexport
from .data import images as _images, metrics as _metrics

reexport(globals(), _images)
reexport(globals(), _metrics)
