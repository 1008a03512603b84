"""Compatibility and the public path of the diffusers integration: `tinyae.diffusers` gathers
`tinyae.integrations.diffusers` (the pipeline VAE, checks, set_vae) and `tinyae.integrations.previews`
(LivePreview). Saved pipelines name this module in model_index.json, and diffusers' loader looks up
`AutoencoderTiny` and `ModelMixin` here."""

from ._compat import reexport
from .integrations import diffusers as _diffusers, previews as _previews

reexport(globals(), _diffusers)
reexport(globals(), _previews)
__all__ = _diffusers.__all__ + _previews.__all__
