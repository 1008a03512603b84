"""Tiny, randomly initialised diffusers pipelines for each family (no hub, no text encoders: prompt embeddings
are passed in), and stand-in denoisers that predict the exact velocity / noise for a known target latent."""

from __future__ import annotations

import math
from typing import Any

import torch

import diffusers
from tinyae.diffusers import AutoencoderTiny

SMALL_TAE = dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8))
SIZE = 64  # image side in pixels: 8x8 latents, 4x4 FLUX tokens
FAMILIES = ("sd", "sdxl", "sd3", "flux", "flux2", "flux2-dev")
LATENT_CHANNELS = {"sd": 4, "sdxl": 4, "sd3": 16, "flux": 16, "flux2": 32, "flux2-dev": 32}


def random_tae(family: str) -> AutoencoderTiny:
    """A small random TAE of the family's latent channels (taef2's GroupNorm branch for FLUX.2)."""
    torch.manual_seed(1)
    extra = {"use_midblock_gn": True} if family.startswith("flux2") else {}
    return AutoencoderTiny(latent_channels=LATENT_CHANNELS[family], **SMALL_TAE, **extra).eval()


def _unet(sdxl: bool) -> diffusers.UNet2DConditionModel:
    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=4,
                 projection_class_embeddings_input_dim=6 * 4 + 16) if sdxl else {}
    return diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4, **extra)


def build(family: str, vae: Any, img2img: bool = False, scheduler: Any = None):
    """(pipeline, call kwargs) for a tiny pipeline of `family` with `vae` as its VAE."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    kw: dict[str, Any] = dict(num_inference_steps=2, height=SIZE, width=SIZE, guidance_scale=1.0, generator=g)
    if family in ("sd", "sdxl"):
        sched = scheduler or diffusers.EulerDiscreteScheduler(steps_offset=1)
        common = dict(vae=vae, text_encoder=None, tokenizer=None, unet=_unet(family == "sdxl"), scheduler=sched)
        kw["prompt_embeds"] = torch.randn(1, 7, 16, generator=g)
        if family == "sd":
            cls = diffusers.StableDiffusionImg2ImgPipeline if img2img else diffusers.StableDiffusionPipeline
            pipe = cls(**common, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        else:
            cls = diffusers.StableDiffusionXLImg2ImgPipeline if img2img else diffusers.StableDiffusionXLPipeline
            pipe = cls(**common, text_encoder_2=None, tokenizer_2=None, add_watermarker=False)
            kw["pooled_prompt_embeds"] = torch.randn(1, 16, generator=g)
    elif family == "sd3":
        tr = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=16, num_layers=1,
                                             attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                             caption_projection_dim=16, pooled_projection_dim=16, out_channels=16,
                                             pos_embed_max_size=16)
        cls = diffusers.StableDiffusion3Img2ImgPipeline if img2img else diffusers.StableDiffusion3Pipeline
        pipe = cls(transformer=tr, scheduler=scheduler or diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                   vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                   text_encoder_3=None, tokenizer_3=None)
        kw.update(prompt_embeds=torch.randn(1, 7, 16, generator=g),
                  pooled_prompt_embeds=torch.randn(1, 16, generator=g))
    elif family == "flux":
        tr = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                              pooled_projection_dim=16, axes_dims_rope=(2, 2, 4))
        cls = diffusers.FluxImg2ImgPipeline if img2img else diffusers.FluxPipeline
        pipe = cls(scheduler=scheduler or diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                   tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=tr)
        kw.update(prompt_embeds=torch.randn(1, 7, 16, generator=g),
                  pooled_prompt_embeds=torch.randn(1, 16, generator=g))
    elif family in ("flux2", "flux2-dev"):
        klein = family == "flux2"
        tr = diffusers.Flux2Transformer2DModel(patch_size=1, in_channels=128, num_layers=1, num_single_layers=1,
                                               attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                               timestep_guidance_channels=16, axes_dims_rope=(2, 2, 2, 2),
                                               guidance_embeds=not klein)
        sched = scheduler or diffusers.FlowMatchEulerDiscreteScheduler()
        if klein:
            pipe = diffusers.Flux2KleinPipeline(scheduler=sched, vae=vae, text_encoder=None, tokenizer=None,
                                                transformer=tr, is_distilled=True)
        else:
            pipe = diffusers.Flux2Pipeline(scheduler=sched, vae=vae, text_encoder=None, tokenizer=None, transformer=tr)
        kw["prompt_embeds"] = torch.randn(1, 7, 16, generator=g)
    else:
        raise ValueError(family)
    pipe.set_progress_bar_config(disable=True)
    return pipe, kw


def uses_image_argument(family: str) -> bool:
    """FLUX.2 pipelines take `image` as a reference image (encoded) rather than an img2img start."""
    return family.startswith("flux2")


# ---------------------------------------------------------------------------------------------- stand-in denoisers
def install_exact_denoiser(pipe: Any, family: str, target: torch.Tensor) -> None:
    """Replace the denoiser's forward with one that predicts exactly what leads to `target` (pipeline space).

    Flow matching (SD3, FLUX, FLUX.2): velocity v = (x_t - x0) / sigma. Euler (SD/SDXL): noise eps = (x - x0) / sigma
    on the unscaled latents. DDIM, DPM-Solver, UniPC: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar). Sigmas are read
    from the scheduler.
    """
    sched = pipe.scheduler
    name = type(sched).__name__
    den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer

    def prediction(x: torch.Tensor, timestep: Any) -> torch.Tensor:
        x0 = target.to(x.dtype)
        i = getattr(sched, "step_index", None) or 0  # set by the first step (text-to-image)
        if name == "FlowMatchEulerDiscreteScheduler":
            return (x - x0) / float(sched.sigmas[i])
        if name == "EulerDiscreteScheduler":
            s = float(sched.sigmas[i])
            return (x * math.sqrt(s * s + 1) - x0) / s  # the UNet sees x / sqrt(sigma^2 + 1)
        if name in ("DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
            t = int(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else int(timestep)
            abar = float(sched.alphas_cumprod[t])
            return (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        raise ValueError(name)

    if family in ("sd", "sdxl"):
        def forward(sample, timestep, *args, return_dict=True, **kwargs):
            out = prediction(sample, timestep)
            return (out,) if not return_dict else diffusers.models.unets.unet_2d_condition.UNet2DConditionOutput(out)
    else:
        def forward(hidden_states, *args, return_dict=True, **kwargs):
            out = prediction(hidden_states[:, : target.shape[1]], kwargs.get("timestep"))
            return (out,)
    den.forward = forward
