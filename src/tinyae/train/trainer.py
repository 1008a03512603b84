"""The training loop: `Trainer(config, run_dir).run()`; one process, or one per rank under torchrun (DDP).

One step: crop schedule -> this rank's samples -> teacher latents -> student (encoder: latent MSE; decoder, from the
teacher's latents: adversarial toward `fake + c`, 8x pooled MSE, optional pixel MSE) -> a NaN/Inf guard that skips
the step and says so -> backward -> gradient clipping -> optimiser -> EMA. Rank 0 logs, evaluates, checkpoints and
exports; every decision that ends or skips a step is taken on values all ranks share.
"""

from __future__ import annotations

import copy
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint
from .config import TrainConfig, resume_differences
from .data import ImageData, seeded, val_images
from .device import autocast_dtype, resolve_device
from .evaluate import evaluate, save_grid
from .losses import ADVERSARIAL_LOSSES, pooled_mse
from .report import Metrics, Progress, plot_curves
from .student import build_student, check_fit
from .teacher import LatentsTeacher, load_teacher

KILL_ENV = "TINYAE_TRAIN_KILL_AT_STEP"  # tests: SIGKILL this process right after that step (a real kill -9)


class StudentStep(nn.Module):
    """What DDP wraps: images and teacher latents -> (student latents or None, student decode or None)."""

    def __init__(self, student: nn.Module, encoder: bool, decoder: bool):
        super().__init__()
        self.student, self.encoder, self.decoder = student, encoder, decoder

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        zs = self.student.encode(x).latents if self.encoder else None
        y = self.student.decode(z).sample if self.decoder else None
        return zs, y


class Trainer:
    def __init__(self, config: TrainConfig, run_dir: str | Path, *, say: Callable[[str], None] | None = None,
                 progress: bool = True):
        self.cfg, self.run_dir = config, Path(run_dir)
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = resolve_device(config.device, self.local_rank)
        self.amp = autocast_dtype(config.precision, self.device)
        self.show_progress = progress and self.rank == 0
        self._say = say
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        saved = checkpoint.load(self.run_dir)
        if saved is not None:
            diffs = resume_differences(saved["config"], config)
            if diffs:
                raise ValueError(f"{self.run_dir} holds a run trained differently; refusing to resume it: "
                                 + "; ".join(diffs) + " (use another -o RUN_DIR for a new run)")
        self._setup()
        self.step, self.samples_seen, self.train_seconds, self.last_eval = 0, 0, 0.0, {}
        if saved is not None:
            self._restore(saved)
        self.resumed = saved is not None

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        c = self.cfg
        self.teacher = load_teacher(c.teacher, family=c.family, scaling_factor=c.scaling_factor,
                                    shift_factor=c.shift_factor, sample=c.latent_sample).to(self.device)
        student, self.loaded_parts, self.student_desc = build_student(c.student, c.seed)
        check_fit(student, self.teacher.latent_channels, self.teacher.scale_factor, c.teacher)
        self.student = student.to(self.device).train()
        self.student.check_finite = False  # the NaN/Inf guard below skips such steps instead of raising
        self.student.requires_grad_(False)
        trained = [p for p, on in (("encoder", c.trains_encoder), ("decoder", c.trains_decoder)) if on]
        self.trained = trained
        for part in trained:
            getattr(self.student, part).requires_grad_(True)
        self.keep = sorted(set(trained) | set(self.loaded_parts), key=("encoder", "decoder").index)
        self.ema = copy.deepcopy(self.student).eval()
        self.ema.requires_grad_(False)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, c.lr, betas=c.betas, weight_decay=c.weight_decay)
        fp16 = self.amp == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.net: nn.Module = StudentStep(self.student, c.trains_encoder, c.trains_decoder)
        self.adv = None
        if c.uses_disc:
            self.adv = ADVERSARIAL_LOSSES[c.adversarial](self.teacher.latent_channels, c, self.device)
            self.disc_scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
            if self.adv is not None:
                self.adv.net = nn.parallel.DistributedDataParallel(self.adv.disc, device_ids=ids)
        latents_for = self.teacher.latents_for if isinstance(self.teacher, LatentsTeacher) else None
        self.data = ImageData(c.data, seed=c.seed, flip=c.flip, color_aug=c.color_aug, hue=c.hue, tint=c.tint,
                              multiple=self.student.spatial_scale_factor, latents_for=latents_for,
                              crop_policy=c.crop_policy, batch_size=c.batch_size,
                              encode=self._encode_cpu if c.teacher_latents == "whole" else None)
        self.val = []
        if c.val:
            f = self.student.spatial_scale_factor
            for name, path, x, (y0, x0) in val_images(c.val, c.val_size, f):
                z = None
                if latents_for is not None:
                    full = latents_for(path)
                    z = full[:, y0 // f:(y0 + x.shape[-2]) // f, x0 // f:(x0 + x.shape[-1]) // f]
                self.val.append((name, x, z))

    def _encode_cpu(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher latents (float32, on the CPU, where the data live) of images (B, 3, H, W) in [-1, 1]."""
        return self.teacher.encode(x.to(self.device)).float().cpu()

    def _restore(self, s: dict[str, Any]) -> None:
        self.student.load_state_dict(s["student"])
        self.ema.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["opt"])
        self.scaler.load_state_dict(s["scaler"])
        if self.adv is not None:
            self.adv.load_state_dict(s["adv"])
            self.disc_scaler.load_state_dict(s["disc_scaler"])
        self.step, self.samples_seen = int(s["step"]), int(s["samples_seen"])
        self.train_seconds, self.last_eval = float(s["train_seconds"]), dict(s.get("last_eval") or {})
        if self.world == int(s.get("world_size", 1)):
            own = checkpoint.load_rank(self.run_dir, self.rank, self.step, self.world) if self.rank > 0 else s
            if own is not None:  # rank > 0 without its file (or another world size): rank 0's state, seeded alike
                checkpoint.set_rng_state(own["rng"])
                if self.adv is not None and self.rank > 0:
                    self.adv.buffer.load_state_dict(own["adv"]["buffer"])
                    self.adv.gen.set_state(own["adv"]["gen"])

    def state(self) -> dict[str, Any]:
        s = {"config": self.cfg.to_dict(), "step": self.step, "samples_seen": self.samples_seen,
             "train_seconds": self.train_seconds, "world_size": self.world, "last_eval": self.last_eval,
             "student": self.student.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
             "scaler": self.scaler.state_dict(), "convention": self.teacher.convention}
        if self.adv is not None:
            s["adv"], s["disc_scaler"] = self.adv.state_dict(), self.disc_scaler.state_dict()
        return s

    # ------------------------------------------------------------------ helpers
    def say(self, text: str) -> None:
        if self.rank != 0:
            return
        if self._say is not None:
            self._say(text)
        elif getattr(self, "progress", None) is not None:
            self.progress.say(text)
        else:
            print(text, flush=True)

    def autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _all_reduce(self, t: torch.Tensor, op: Any = None) -> torch.Tensor:
        """Sum (or `op`) over ranks; on the run's device (NCCL reduces only CUDA tensors), returned on t's device."""
        if self.world > 1:
            d = t.to(self.device)
            dist.all_reduce(d, op=op or dist.ReduceOp.SUM)
            t = d.to(t.device)
        return t

    def _broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's value of t, on every rank."""
        if self.world > 1:
            d = t.to(self.device)
            dist.broadcast(d, 0)
            t = d.to(t.device)
        return t

    def done(self) -> bool:
        c = self.cfg
        return ((c.max_steps is not None and self.step >= c.max_steps)
                or (c.time_budget is not None and self.train_seconds >= c.time_budget * 60))

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, Any]:
        c, dev = self.cfg, self.device
        crop = c.crop_at(self.step)
        x, z = self.data.batch(self.samples_seen + self.rank * c.batch_size, c.batch_size, crop)
        self.samples_seen += self.world * c.batch_size
        x = x.to(dev)
        if z is None:
            gen = seeded(c.seed, self.step, 3) if c.latent_sample else None
            z = self.teacher.encode(x, generator=gen)
        z = z.to(dev).float()
        with self.autocast():
            zs, y = self.net(x, z)
        terms: dict[str, torch.Tensor] = {}
        if zs is not None:
            terms["latent"] = F.mse_loss(zs.float(), z) * c.w_latent
        if y is not None:
            y = y.float()
            if c.w_pool > 0:
                terms["pool"] = pooled_mse(y, x) * c.w_pool
            w_mse = max(c.w_mse, 1.0) if c.warming_up(self.step) else c.w_mse
            if w_mse > 0:
                terms["mse"] = F.mse_loss(y, x) * w_mse
        # NaN/Inf guard, on values every rank shares: inputs, teacher latents and outputs of all ranks
        finite = torch.isfinite(x).all() & torch.isfinite(z).all()
        for t in (zs, y):
            if t is not None:
                finite = finite & torch.isfinite(t).all()
        bad = self._all_reduce((~finite).float().view(1))
        record: dict[str, Any] = {"kind": "train", "step": self.step + 1, "crop": crop}
        if bad.item() > 0:
            self.say(f"step {self.step + 1}: NaN or Inf in the batch, the teacher latents or the student's output; "
                     "step skipped")
            return {**record, "skipped": True}
        if y is not None and self.adv is not None and not c.warming_up(self.step):
            d_loss, d_ok = self.adv.disc_step(x, y, z, self.autocast, self.disc_scaler)
            record["disc"] = d_loss
            if not d_ok:
                self.say(f"step {self.step + 1}: NaN or Inf in the discriminator's gradients; its update skipped")
            target = self.adv.targets(x, y, z, self.autocast)
            terms["adv"] = F.mse_loss(y, target) * c.w_adv
        loss = sum(terms.values())
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        norm = torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip if c.grad_clip > 0 else float("inf"))
        if not torch.isfinite(norm):
            self.scaler.update()
            self.say(f"step {self.step + 1}: NaN or Inf gradients (loss {float(loss):.4g}); step skipped")
            return {**record, "skipped": True}
        self.scaler.step(self.opt)
        self.scaler.update()
        self._update_ema()
        logged = {"loss": loss, **terms}
        if "disc" in record:
            logged["disc"] = torch.tensor(record["disc"], device=loss.device)
        vals = self._all_reduce(torch.stack([t.detach().float() for t in logged.values()])) / self.world
        record.update({**dict(zip(logged, vals.tolist())), "grad_norm": float(norm)})  # means over ranks
        return record

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = min(self.cfg.ema, (1 + self.step) / (10 + self.step))  # warm-up: early weights fade out fast
        for pe, p in zip(self.ema.parameters(), self.student.parameters()):
            if p.requires_grad:
                pe.lerp_(p, 1 - d)
        for be, b in zip(self.ema.buffers(), self.student.buffers()):
            be.copy_(b)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        c = self.cfg
        if c.max_steps is None and c.time_budget is None:
            raise ValueError("give a budget: --max-steps N and/or --time-budget MINUTES")
        metrics = Metrics(self.run_dir, tensorboard=self.rank == 0) if self.rank == 0 else None
        if metrics is not None:
            metrics.truncate(self.step)
        self.progress = Progress(c.max_steps, self.step, c.log_every, self.show_progress) if self.rank == 0 else None
        if self.rank == 0:
            what = "resuming" if self.resumed else "training"
            self.say(f"{what} {self.run_dir} at step {self.step}: {', '.join(self.trained)} of {self.student_desc}; "
                     f"teacher {c.teacher}; {len(self.data)} images; {self.world} process(es) on {self.device}"
                     f"{', ' + str(self.amp).replace('torch.', '') + ' autocast' if self.amp else ''}")
        kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
        last_ckpt = time.monotonic()
        step_times: list[float] = []
        try:
            while not self.done():
                t0 = time.monotonic()
                record = self.train_step()
                self.step += 1
                step_times = (step_times + [time.monotonic() - t0])[-20:]
                ips = c.batch_size * self.world * len(step_times) / max(1e-9, sum(step_times))
                if self.rank == 0:
                    record.update({"images_per_s": round(ips, 2), "train_seconds": round(self.train_seconds, 3)})
                    if self.step % c.log_every == 0 or record.get("skipped") or self.done():
                        metrics.write(record)
                    self.progress.update(self.step, _info(record, ips), self._eta(ips))
                if self.val and (self.step % c.eval_every == 0):
                    self.evaluate(metrics)
                # the budget clock: the whole loop (steps, evals, checkpoints); rank 0's clock decides for all
                self.train_seconds = float(self._broadcast(torch.tensor(
                    [self.train_seconds + time.monotonic() - t0], dtype=torch.float64))[0])
                ckpt = torch.tensor([float(self.step % c.checkpoint_every == 0
                                           or time.monotonic() - last_ckpt >= c.checkpoint_minutes * 60)])
                if self._broadcast(ckpt).item() > 0:
                    t1 = time.monotonic()
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
                    self.train_seconds += last_ckpt - t1
                if kill_at and self.step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
        except KeyboardInterrupt:
            if self.world == 1:
                self.save_checkpoint()
                self.say(f"interrupted at step {self.step}; checkpoint written, rerun the command to resume")
            raise
        finally:
            if self.progress is not None:
                self.progress.close()
        if self.val and (not self.last_eval or self.last_eval.get("step") != self.step):
            self.evaluate(metrics)
        self.save_checkpoint()
        result = self.finish(metrics)
        if metrics is not None:
            metrics.close()
        return result

    def _eta(self, ips: float) -> str:
        c = self.cfg
        left = []
        if c.max_steps is not None and ips > 0:
            left.append((c.max_steps - self.step) * c.batch_size * self.world / ips)
        if c.time_budget is not None:
            left.append(c.time_budget * 60 - self.train_seconds)
        if not left:
            return "?"
        s = max(0, int(min(left)))
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

    def save_checkpoint(self) -> None:
        if self.world > 1:  # the other ranks' own state first, then rank 0's checkpoint that names their step
            if self.rank > 0:
                own = {"step": self.step, "world_size": self.world}
                if self.adv is not None:
                    own["adv"] = {"buffer": self.adv.buffer.state_dict(), "gen": self.adv.gen.get_state()}
                checkpoint.save_rank(self.run_dir, self.rank, own)
            dist.barrier()
        if self.rank == 0:
            checkpoint.save(self.run_dir, self.state())
        if self.world > 1:
            dist.barrier()

    def evaluate(self, metrics: Metrics | None) -> dict[str, float]:
        """Rank 0 evaluates the EMA student on the validation images; others wait."""
        mean: dict[str, float] = {}
        if self.rank == 0:
            mean, _, rows = evaluate(self.ema, self.teacher, self.val, self.trained)
            self.last_eval = {"step": self.step, **mean}
            save_grid(rows, self.run_dir / "samples" / f"step_{self.step:07d}.png")
            if metrics is not None:
                metrics.write({"kind": "eval", "step": self.step, **mean})
                plot_curves(metrics.read(), self.run_dir / "curves.png")
            self.say(f"eval at step {self.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
        if self.world > 1:
            dist.barrier()
        return mean

    def finish(self, metrics: Metrics | None) -> dict[str, Any]:
        """Export the EMA student (rank 0); returns a summary."""
        from .export import export

        summary = {"run_dir": str(self.run_dir), "step": self.step, "samples_seen": self.samples_seen,
                   "train_minutes": self.train_seconds / 60, "metrics": {k: v for k, v in self.last_eval.items()
                                                                        if k != "step"}}
        if self.rank == 0:
            info = {"teacher": self.cfg.teacher, "convention": self.teacher.convention, "steps": self.step,
                    "student": self.student_desc, "trained": self.trained, "samples": self.samples_seen,
                    "minutes": self.train_seconds / 60, "data": self.cfg.data,
                    "data_images": len(self.data), "val": self.cfg.val, "metrics": summary["metrics"],
                    "command": self.cfg.command or "(Python API)", "formats": self.cfg.export_formats}
            written = export(self.run_dir, self.ema, self.keep, info)
            if metrics is not None:
                plot_curves(metrics.read(), self.run_dir / "curves.png")
            summary["exported"] = [str(p) for p in written]
            self.say(f"done at step {self.step}; exported the EMA student to {self.run_dir / 'final'}")
        if self.world > 1:
            dist.barrier()
        return summary


def _info(record: dict[str, Any], ips: float) -> str:
    if record.get("skipped"):
        return "skipped"
    parts = [f"loss {record['loss']:.4g}"]
    parts += [f"{k} {record[k]:.4g}" for k in ("latent", "pool", "mse", "disc") if k in record]
    return "  ".join(parts) + f"  {ips:.1f} img/s"

