"""`tinyae train`: distil a TAE from a teacher VAE; rerunning the same command on RUN_DIR resumes it.

Under torchrun (WORLD_SIZE > 1) each process is one DDP rank (NCCL on GPUs, gloo on CPUs). See docs/training.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
from .config import TrainConfig, parse_crop_schedule

EPILOG = """examples:
  tinyae train --teacher vae/ --student taef2 --data photos/ --val held_out/ -o runs/tae --max-steps 20000
  tinyae train --teacher taef2_encoder.pth, --student taef2 --train decoder --data photos/ -o runs/dec \\
      --time-budget 60 --crop-schedule 96:0,256:8000
  torchrun --nproc_per_node 2 -m tinyae train ...        one DDP rank per process
rerun the same command to resume (--max-steps and --time-budget may change)"""


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(teacher="", student="", data=["."])  # defaults
    p = argparse.ArgumentParser(prog="tinyae train", description="Distil a Tiny AutoEncoder from a teacher VAE.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what is trained")
    g.add_argument("--teacher", required=True, metavar="SOURCE", help="diffusers VAE folder or hub id "
                   "(AutoencoderKL, AutoencoderKLFlux2, AutoencoderDC, AutoencoderKLQwenImage), any tinyae source "
                   "(variant, folder, file, ENCODER,DECODER), or latents:DIR (precomputed latents)")
    g.add_argument("--student", required=True, metavar="ARCH_OR_SOURCE", help="variant name (its architecture, "
                   "from scratch), a config.json or inline JSON (from scratch), or tinyae weights (fine-tune)")
    g.add_argument("--train", choices=["both", "encoder", "decoder"], default=d.train,
                   help="halves to train; the other is frozen (default both)")
    g.add_argument("--family", help="teacher latent convention: a registry family or variant (sd, sdxl, sd3, "
                   "flux, sana, taef1, ...); default: the VAE config's own factors")
    g.add_argument("--scaling-factor", type=float, help="explicit convention: tae = (vae - shift) * scaling")
    g.add_argument("--shift-factor", type=float)
    g.add_argument("--latent-sample", action="store_true", help="teacher latents: sample the posterior "
                   "(seeded) instead of its mean")
    g.add_argument("--teacher-latents", choices=["crop", "whole"], default=d.teacher_latents,
                   help="crop: the teacher encodes every training crop (default); whole: every training image "
                   "(and its flip) once, kept in memory, crops cut from its latents (a frozen teacher's work done "
                   "once; the latents a whole image is decoded from)")
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", required=True, metavar="DIR", help="training image folders (recursive)")
    g.add_argument("--val", metavar="DIR", help="held-out images for evaluation")
    g.add_argument("--val-size", type=int, default=d.val_size, metavar="PX",
                   help=f"evaluate on the centre PX x PX crop of each validation image (default {d.val_size})")
    g.add_argument("--crop", type=int, metavar="PX", help=f"crop side for the whole run (default "
                   f"{d.crop_schedule[0][0]})")
    g.add_argument("--crop-schedule", metavar="PX:STEP,...", help="crop side from each step on, e.g. "
                   "96:0,256:20000 (the recipe: small crops, then ~256 px to finish)")
    g.add_argument("--crop-policy", choices=["crop", "buckets"], default=d.crop_policy,
                   help="crop: square crops at each image's own resolution (default); buckets: aspect-ratio "
                   "buckets, each image resized to about PX^2 pixels at its aspect ratio (1:4 .. 4:1)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=f"per process (default {d.batch_size})")
    g.add_argument("--flip", type=float, default=d.flip, help=f"horizontal flip probability (default {d.flip})")
    g.add_argument("--color-aug", type=float, default=d.color_aug,
                   help=f"fraction of samples with a random colour change (default {d.color_aug})")
    g.add_argument("--hue", type=float, default=d.hue, metavar="DEG", help="colour changes also rotate the hue "
                   "by up to +-DEG degrees (default 0: the recipe's light change; 180: any hue, for training "
                   "images poor in colour)")
    g.add_argument("--tint", type=float, default=d.tint, metavar="P", help="fraction of gray crops given a random "
                   "smooth colour, encoded by the teacher as they are (default 0; for training images mostly gray)")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--betas", default=",".join(map(str, d.betas)), help="Adam betas B1,B2 (default 0.9,0.99)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0: off; default 1)")
    g.add_argument("--ema", type=float, default=d.ema, help=f"EMA decay (default {d.ema})")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=d.precision,
                   help="autocast: auto = bf16 where the device supports it (fp16 on older GPUs), else fp32")
    g = p.add_argument_group("losses (weights; 0 turns a term off)")
    g.add_argument("--w-latent", type=float, default=d.w_latent, help="encoder: MSE to the teacher's latents")
    g.add_argument("--w-adv", type=float, default=d.w_adv, help="decoder: adversarial (toward fake + c)")
    g.add_argument("--w-pool", type=float, default=d.w_pool, help="decoder: MSE of 8x average-pooled images")
    g.add_argument("--w-mse", type=float, help="decoder: pixel MSE (default 0; 1 with --adversarial off)")
    g.add_argument("--adversarial", default=d.adversarial,
                   help="patch: the latent-conditioned patch discriminator (default); off: no adversarial loss")
    g.add_argument("--adv-start", type=int, default=d.adv_start, metavar="STEP",
                   help="decoder: pixel-MSE warm-up until this step, then the adversarial phase (default 0)")
    g.add_argument("--disc-lr", type=float, default=d.disc_lr)
    g.add_argument("--disc-width", type=int, default=d.disc_width)
    g.add_argument("--replay-size", type=int, default=d.replay_size, help="past fakes kept for the discriminator")
    g = p.add_argument_group("budget and reporting (may change on resume)")
    g.add_argument("-o", "--output", required=True, metavar="RUN_DIR")
    g.add_argument("--max-steps", type=int, help="stop at this step (total, over resumes)")
    g.add_argument("--time-budget", type=float, metavar="MINUTES", help="stop after this much training time "
                   "(total, over resumes)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, metavar="STEPS")
    g.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes)
    g.add_argument("--eval-every", type=int, default=d.eval_every, metavar="STEPS")
    g.add_argument("--log-every", type=int, default=d.log_every, metavar="STEPS")
    g.add_argument("--device", default=d.device, help="auto (cuda if available), cpu, cuda, mps")
    g.add_argument("--export-formats", default=",".join(d.export_formats),
                   help="what final/ holds besides the diffusers layout: original (.safetensors and .pth), "
                   "comfyui, onnx (default all)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar or step lines")
    g.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def config_from_args(args: argparse.Namespace, argv: list[str]) -> TrainConfig:
    if args.crop is not None and args.crop_schedule:
        raise ValueError("give --crop or --crop-schedule, not both")
    schedule = parse_crop_schedule(args.crop_schedule) if args.crop_schedule else [(args.crop or 96, 0)]
    try:
        betas = tuple(float(b) for b in args.betas.split(","))
    except ValueError:
        raise ValueError(f"--betas {args.betas!r}: expected B1,B2") from None
    if len(betas) != 2:
        raise ValueError(f"--betas {args.betas!r}: expected B1,B2")
    w_mse = args.w_mse if args.w_mse is not None else (1.0 if args.adversarial == "off" else 0.0)
    formats = tuple(f for f in args.export_formats.split(",") if f)
    bad = [f for f in formats if f not in ("diffusers", "original", "comfyui", "onnx")]
    if bad:
        raise ValueError(f"--export-formats: unknown {', '.join(bad)} (diffusers, original, comfyui, onnx)")
    return TrainConfig(
        teacher=args.teacher, student=args.student, data=args.data, val=args.val, family=args.family,
        scaling_factor=args.scaling_factor, shift_factor=args.shift_factor, latent_sample=args.latent_sample,
        teacher_latents=args.teacher_latents,
        val_size=args.val_size, train=args.train, crop_schedule=schedule, crop_policy=args.crop_policy,
        batch_size=args.batch_size, flip=args.flip,
        color_aug=args.color_aug, hue=args.hue, tint=args.tint, seed=args.seed, lr=args.lr, betas=betas,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, ema=args.ema, precision=args.precision, w_latent=args.w_latent,
        w_adv=args.w_adv, w_pool=args.w_pool, w_mse=w_mse, adversarial=args.adversarial, adv_start=args.adv_start,
        disc_lr=args.disc_lr,
        disc_width=args.disc_width, replay_size=args.replay_size, max_steps=args.max_steps,
        time_budget=args.time_budget, checkpoint_every=args.checkpoint_every,
        checkpoint_minutes=args.checkpoint_minutes, eval_every=args.eval_every, log_every=args.log_every,
        device=args.device, export_formats=formats, command="tinyae train " + shlex.join(argv))


def init_distributed(device: str) -> bool:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL for CUDA, else gloo); True when joined."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def main(argv: list[str]) -> int:
    from ..cli import _on_sigterm

    args = build_parser().parse_args(argv)
    joined = False
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    def body() -> int:
        nonlocal joined
        config = config_from_args(args, argv)
        joined = init_distributed(config.device)
        from . import train

        train(config, args.output, progress=not args.no_progress)
        return 0

    from ..cli import run_guarded

    try:
        return run_guarded(body, args.debug, "rerun the same command to resume from the last checkpoint")
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()
