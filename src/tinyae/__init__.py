"""tinyae: Tiny AutoEncoders (the TAESD family) for SD1/2, SDXL, SD3, FLUX.1, FLUX.2 and Sana."""

from . import _compat
from ._version import __version__

_compat.install()  # tinyae.tiling, tinyae.fast_stream: see tinyae._compat

from .nets.config import TinyConfig
from .data.latents import scale_latents, unscale_latents
from .autoencoder import AutoencoderTiny
from .nets.model import AutoencoderTinyOutput, DecoderOutput, MissingPartError
from .nets.variants import VARIANTS, get_variant
from .io.files import WeightsError

# Image and latent I/O (tinyae.images, tinyae.codec)
from .data.codec import load_latents, save_latents
from .data.images import EncodedImage, ImageError, decode_latents, encode_images

# Video (tinyae.video)
from .video import AutoencoderTinyVideo

__all__ = [
    "AutoencoderTiny", "AutoencoderTinyOutput", "DecoderOutput", "MissingPartError", "TinyConfig", "VARIANTS",
    "WeightsError", "get_variant", "scale_latents", "unscale_latents", "__version__",
    # image and latent I/O
    "EncodedImage", "ImageError", "decode_latents", "encode_images", "load_latents", "save_latents",
    # video
    "AutoencoderTinyVideo",
]
