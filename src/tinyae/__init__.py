"""tinyae: Tiny AutoEncoders (the TAESD family) for SD1/2, SDXL, SD3, FLUX.1, FLUX.2 and Sana."""

__version__ = "0.1.0"

from .config import TinyConfig
from .latents import scale_latents, unscale_latents
from .model import AutoencoderTiny, AutoencoderTinyOutput, DecoderOutput, MissingPartError
from .variants import VARIANTS, get_variant
from .weights import WeightsError

__all__ = [
    "AutoencoderTiny", "AutoencoderTinyOutput", "DecoderOutput", "MissingPartError", "TinyConfig", "VARIANTS",
    "WeightsError", "get_variant", "scale_latents", "unscale_latents", "__version__",
]
