"""Tiny, randomly initialised diffusers video pipelines (no hub, no text encoders: prompt embeddings are passed in)
for each video family tinyae pairs a video TAE with."""

from __future__ import annotations

from typing import Any

import PIL.Image
import torch

import diffusers
from tinyae.video import AutoencoderTinyVideo
from tinyae.video.pipelines import PipelineVideoVAE

# pipeline name -> (TAE variant, frames, frame side in pixels)
PIPELINES = {
    "wan": ("taew2_1", 5, 16),
    "hunyuanvideo": ("taehv", 5, 16),
    "hunyuanvideo1.5": ("taehv1_5", 5, 32),
    "cogvideox": ("taecvx", 9, 16),
    "ltx2": ("taeltx_2", 9, 64),
}
# image-to-video / video-to-video pipelines: they also ENCODE with the VAE (the image, or the source video)
CONDITIONED = {
    "wan-i2v": ("taew2_1", 5, 16),
    "wan-v2v": ("taew2_1", 5, 16),
    "hunyuanvideo-i2v": ("taehv", 9, 16),  # latent_concat: the pipeline drops the first 4 decoded frames
    "cogvideox-i2v": ("taecvx", 9, 16),
    "cogvideox-v2v": ("taecvx", 9, 16),
    "ltx2-i2v": ("taeltx_2", 9, 64),
    "hunyuanvideo1.5-i2v": ("taehv1_5", 5, 32),
}


def random_video_tae(variant: str, seed: int = 1) -> AutoencoderTinyVideo:
    torch.manual_seed(seed)
    return AutoencoderTinyVideo(variant).eval()


def build(name: str, vae: Any, scheduler: Any = None) -> tuple[Any, dict[str, Any]]:
    """(pipeline, call kwargs) for a tiny `name` pipeline with `vae` as its VAE."""
    _, frames, side = {**PIPELINES, **CONDITIONED}[name]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    kw: dict[str, Any] = dict(num_inference_steps=2, height=side, width=side, num_frames=frames, generator=g)
    flow = scheduler or diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    if name.startswith("wan"):
        tr = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                             in_channels=36 if name == "wan-i2v" else 16, out_channels=16,
                                             text_dim=16, freq_dim=16, ffn_dim=16, num_layers=1, rope_max_seq_len=32)
        klass = {"wan": diffusers.WanPipeline, "wan-i2v": diffusers.WanImageToVideoPipeline,
                 "wan-v2v": diffusers.WanVideoToVideoPipeline}[name]
        pipe = klass(tokenizer=None, text_encoder=None, vae=vae, scheduler=flow, transformer=tr)
        kw.update(prompt_embeds=torch.randn(1, 7, 16, generator=g), guidance_scale=1.0)
    elif name.startswith("hunyuanvideo") and not name.startswith("hunyuanvideo1.5"):
        i2v = name == "hunyuanvideo-i2v"
        tr = diffusers.HunyuanVideoTransformer3DModel(in_channels=33 if i2v else 16, out_channels=16,
                                                      num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                                      num_single_layers=1, num_refiner_layers=1, patch_size=1,
                                                      text_embed_dim=16, pooled_projection_dim=8,
                                                      rope_axes_dim=(2, 2, 4),
                                                      image_condition_type="latent_concat" if i2v else None)
        klass = diffusers.HunyuanVideoImageToVideoPipeline if i2v else diffusers.HunyuanVideoPipeline
        pipe = klass(text_encoder=None, tokenizer=None, transformer=tr, vae=vae, scheduler=flow,
                     text_encoder_2=None, tokenizer_2=None, **({"image_processor": None} if i2v else {}))
        kw.update(prompt_embeds=torch.randn(1, 7, 16, generator=g), pooled_prompt_embeds=torch.randn(1, 8, generator=g),
                  prompt_attention_mask=torch.ones(1, 7, dtype=torch.long), guidance_scale=1.0)
    elif name.startswith("hunyuanvideo1.5"):
        i2v = name == "hunyuanvideo1.5-i2v"
        tr = diffusers.HunyuanVideo15Transformer3DModel(in_channels=65, out_channels=32, num_attention_heads=2,
                                                        attention_head_dim=8, num_layers=1, num_refiner_layers=1,
                                                        patch_size=1, text_embed_dim=16, text_embed_2_dim=8,
                                                        image_embed_dim=8, rope_axes_dim=(2, 2, 4),
                                                        task_type="i2v" if i2v else "t2v", target_size=32)
        guider = diffusers.ClassifierFreeGuidance(guidance_scale=1.0)
        if vae is None:  # this pipeline reads its VAE's config at construction: a placeholder, replaced by set_vae
            vae = PipelineVideoVAE("taehv1_5", encoder=False)
        extra: dict[str, Any] = {}
        if i2v:
            from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

            extra = dict(image_encoder=SiglipVisionModel(SiglipVisionConfig(
                hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                patch_size=8)), feature_extractor=SiglipImageProcessor(size={"height": 16, "width": 16}))
        klass = diffusers.HunyuanVideo15ImageToVideoPipeline if i2v else diffusers.HunyuanVideo15Pipeline
        pipe = klass(text_encoder=None, tokenizer=None, transformer=tr, vae=vae, scheduler=flow,
                     text_encoder_2=None, tokenizer_2=None, guider=guider, **extra)
        kw.update(prompt_embeds=torch.randn(1, 7, 16, generator=g), prompt_embeds_mask=torch.ones(1, 7),
                  prompt_embeds_2=torch.randn(1, 5, 8, generator=g), prompt_embeds_mask_2=torch.ones(1, 5))
    elif name.startswith("cogvideox"):
        i2v = name == "cogvideox-i2v"
        tr = diffusers.CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16 if i2v else 8,
                                                   in_channels=32 if i2v else 16, out_channels=16, time_embed_dim=8,
                                                   text_embed_dim=16, num_layers=1, sample_width=2, sample_height=2,
                                                   sample_frames=9, patch_size=2, max_text_seq_length=7,
                                                   use_rotary_positional_embeddings=i2v,
                                                   use_learned_positional_embeddings=i2v)
        sched = scheduler or diffusers.CogVideoXDDIMScheduler()
        klass = {"cogvideox": diffusers.CogVideoXPipeline, "cogvideox-i2v": diffusers.CogVideoXImageToVideoPipeline,
                 "cogvideox-v2v": diffusers.CogVideoXVideoToVideoPipeline}[name]
        pipe = klass(tokenizer=None, text_encoder=None, vae=vae, transformer=tr, scheduler=sched)
        kw.update(prompt_embeds=torch.randn(1, 7, 16, generator=g), guidance_scale=1.0)
    elif name.startswith("ltx2"):
        from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
        from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

        tr = diffusers.LTX2VideoTransformer3DModel(
            in_channels=128, out_channels=128, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
            audio_in_channels=8, audio_out_channels=8, audio_num_attention_heads=2, audio_attention_head_dim=8,
            audio_cross_attention_dim=16, num_layers=1, caption_channels=16)
        connectors = LTX2TextConnectors(caption_channels=16, text_proj_in_factor=1,
                                        video_connector_num_attention_heads=2, video_connector_attention_head_dim=8,
                                        video_connector_num_layers=1, video_connector_num_learnable_registers=None,
                                        audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=8,
                                        audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
                                        video_hidden_dim=16, audio_hidden_dim=16)
        audio_vae = diffusers.AutoencoderKLLTX2Audio(base_channels=8, ch_mult=(1, 2), num_res_blocks=1,
                                                     latent_channels=4, mel_bins=8)
        vocoder = LTX2Vocoder(in_channels=16, hidden_channels=8, upsample_kernel_sizes=[4, 4],
                              upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1]])
        klass = diffusers.LTX2ImageToVideoPipeline if name == "ltx2-i2v" else diffusers.LTX2Pipeline
        pipe = klass(scheduler=flow, vae=vae, audio_vae=audio_vae, text_encoder=None, tokenizer=None,
                     connectors=connectors, transformer=tr, vocoder=vocoder)
        kw.update(prompt_embeds=torch.randn(1, 7, 16, generator=g), prompt_attention_mask=torch.ones(1, 7),
                  guidance_scale=1.0, audio_guidance_scale=1.0, stg_scale=0.0, audio_stg_scale=0.0,
                  modality_scale=1.0, audio_modality_scale=1.0, frame_rate=8.0)
    else:
        raise ValueError(name)
    if name.endswith("-i2v"):
        image = torch.rand(1, 3, side, side, generator=g)  # [0, 1], as diffusers' image processors take it
        if name == "hunyuanvideo1.5-i2v":  # its SigLIP feature extractor takes PIL images
            image = PIL.Image.fromarray((image[0].permute(1, 2, 0) * 255).round().byte().numpy())
            del kw["height"], kw["width"]  # it sizes the video from the image and the transformer's target_size
        kw["image"] = image
        kw.update(image_crf=0) if name == "ltx2-i2v" else None  # its re-compression needs a PIL image
    elif name.endswith("-v2v"):
        kw["video"] = [torch.rand(3, side, side, generator=g) for _ in range(frames)]  # not every v2v takes tensors
        kw.update(strength=0.7)
    pipe.set_progress_bar_config(disable=True)
    return pipe, kw
