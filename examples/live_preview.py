"""Watch a FLUX.2 generation step by step with TAEF2: previews of x0 (the denoised estimate) vs. the noisy x_t.

Offline demo (default): a real photo is encoded with the real TAEF2 encoder; a tiny FLUX.2 [klein] pipeline whose
denoiser is a stand-in predicting the exact velocity towards those latents samples it in --steps steps, and two
LivePreviews record what a naive x_t preview shows and what LivePreview's default x0 preview shows. Writes a
contact strip (x_t row above x0 row), an animated GIF, and the frames.

    python examples/live_preview.py [--image PATH] [--weights DIR] [--size 256] [--steps 8] [--out DIR]

With a real pipeline (downloads it; needs a GPU in practice), the use is three lines:

    from tinyae.diffusers import AutoencoderTiny, LivePreview, set_vae
    set_vae(pipe, AutoencoderTiny.from_pretrained("taef2"))
    pipe(prompt, callback_on_step_end=LivePreview(pipe.vae, pipe=pipe, animation="steps.gif"))
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import diffusers
from tinyae import AutoencoderTiny
from tinyae.diffusers import LivePreview, make_contact_sheet, set_vae
from tinyae.latents import pack_flux2

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def tiny_flux2_pipeline() -> diffusers.Flux2KleinPipeline:
    """A FLUX.2 [klein] pipeline with a 1-layer random transformer (replaced below) and no text encoder."""
    tr = diffusers.Flux2Transformer2DModel(patch_size=1, in_channels=128, num_layers=1, num_single_layers=1,
                                           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                           timestep_guidance_channels=16, axes_dims_rope=(2, 2, 2, 2),
                                           guidance_embeds=False)
    pipe = diffusers.Flux2KleinPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None,
                                        text_encoder=None, tokenizer=None, transformer=tr, is_distilled=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def exact_velocity(pipe, target_tokens: torch.Tensor) -> None:
    """Stand-in denoiser: the flow-matching velocity that leads exactly to `target_tokens`: v = (x_t - x0) / sigma."""
    sched = pipe.scheduler

    def forward(hidden_states, *args, **kwargs):
        sigma = float(sched.sigmas[sched.step_index or 0])
        return ((hidden_states[:, : target_tokens.shape[1]] - target_tokens) / sigma,)

    pipe.transformer.forward = forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(SHARED / "images" / "astronaut.png"))
    ap.add_argument("--weights", default=str(SHARED / "weights"), help="folder with taef2_encoder/decoder.pth")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (multiple of 16)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--tile", type=int, default=96, help="contact strip tile size in pixels")
    ap.add_argument("--out", default="live_preview_out")
    args = ap.parse_args()
    out = Path(args.out)

    taef2 = AutoencoderTiny.from_pretrained((f"{args.weights}/taef2_encoder.pth", f"{args.weights}/taef2_decoder.pth"))
    photo = Image.open(args.image).convert("RGB").resize((args.size, args.size), Image.LANCZOS)
    x = torch.from_numpy(np.asarray(photo, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        target = taef2.encode(x).latents  # FLUX.2's normalised latents, un-patchified: (1, 32, size/8, size/8)

    pipe = tiny_flux2_pipeline()
    set_vae(pipe, taef2)
    exact_velocity(pipe, pack_flux2(target))
    x0 = LivePreview(pipe.vae, pipe=pipe, save_dir=out / "frames_x0", animation=out / "steps_x0.gif", frame_ms=250)
    xt = LivePreview(pipe.vae, pipe=pipe, mode="xt", save_dir=out / "frames_xt")
    g = torch.Generator().manual_seed(0)
    both = lambda p, i, t, kwargs: xt(p, i, t, x0(p, i, t, kwargs))  # noqa: E731 (two callbacks in one)
    image = pipe(prompt_embeds=torch.randn(1, 4, 16, generator=g), height=args.size, width=args.size,
                 num_inference_steps=args.steps, guidance_scale=1.0, generator=g, callback_on_step_end=both).images[0]

    rows = [make_contact_sheet(lp.images, [f"{f.step} {f.kind}" for f in lp.frames], args.tile, args.steps)
            for lp in (xt, x0)]
    strip = Image.new("RGB", (rows[0].width, 2 * rows[0].height))
    strip.paste(rows[0], (0, 0))
    strip.paste(rows[1], (0, rows[0].height))
    out.mkdir(parents=True, exist_ok=True)
    strip.save(out / "strip.jpg", quality=85)
    image.save(out / "final.png")
    print(f"{args.steps} steps at {args.size}x{args.size}: x0 frames {[f.kind for f in x0.frames]}")
    print(f"wrote {out / 'strip.jpg'} (top: x_t, bottom: x0), {out / 'steps_x0.gif'}, frames in {out}/frames_*")


if __name__ == "__main__":
    main()
