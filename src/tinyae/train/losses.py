"""The decoder's losses: a latent-conditioned patch discriminator with a replay buffer (the recipe of madebyollin's
Seraena, github.com/madebyollin/seraena), and the faint MSE on 8x average-pooled images.

The adversarial part is pluggable: `ADVERSARIAL_LOSSES` maps a name (`--adversarial NAME`) to a factory
`(latent_channels, config, device) -> object` whose object has `disc_step(real, fake, ctx, autocast, scaler) ->
(loss, finite)`, `targets(real, fake, ctx, autocast) -> corrected fakes` (the decoder regresses toward them),
`state_dict()` / `load_state_dict()`, and the attributes `disc` (its module), `net` (what `disc_step` calls; the
trainer wraps it for DDP), `buffer` and `gen` (per-rank state saved under DDP).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def stage(n_in: int, n_out: int, stride: int = 1) -> nn.Sequential:
    """conv (4x4 stride 2, or 3x3) + BatchNorm + ReLU."""
    k = 4 if stride == 2 else 3
    return nn.Sequential(nn.Conv2d(n_in, n_out, k, stride=stride, padding=1, bias=False), nn.BatchNorm2d(n_out),
                         nn.ReLU())


class PatchDiscriminator(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] and latents (B, C, h, w) -> scores (B, 6, H/8, W/8).

    The latents are upsampled (nearest) to the image size and concatenated; six conv+norm+ReLU stages (three of
    them stride 2), each with a 1x1 score head whose map is average-pooled to H/8 x W/8.
    """

    def __init__(self, latent_channels: int, width: int = 64):
        super().__init__()
        w = width
        self.stages = nn.Sequential(stage(3 + latent_channels, w), stage(w, 2 * w, 2), stage(2 * w, 4 * w, 2),
                                    stage(4 * w, 8 * w, 2), stage(8 * w, 8 * w), stage(8 * w, 8 * w))
        self.heads = nn.ModuleList(nn.Conv2d(s[0].out_channels, 1, 1, bias=False) for s in self.stages)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        size = (max(1, x.shape[-2] // 8), max(1, x.shape[-1] // 8))
        h = torch.cat([x, F.interpolate(z, size=x.shape[-2:], mode="nearest")], 1)
        scores = []
        for s, head in zip(self.stages, self.heads):
            h = s(h)
            scores.append(F.adaptive_avg_pool2d(head(h), size))
        return torch.cat(scores, 1)


class ReplayBuffer:
    """Past fakes (and their latents) on the CPU; `sample` draws, with a seeded generator (saved in checkpoints),
    among the fakes of the asked shape (aspect-ratio buckets give several shapes of about the same pixel count).
    When the crop side changes (a new pixel count, off by more than 1.5x) the older fakes are dropped."""

    def __init__(self, capacity: int, seed: int):
        self.capacity = capacity
        self.fakes: list[torch.Tensor] = []
        self.ctx: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def push(self, fake: torch.Tensor, ctx: torch.Tensor) -> None:
        if self.fakes and not 1 / 1.5 <= fake[0].numel() / self.fakes[-1].numel() <= 1.5:
            self.fakes, self.ctx = [], []
        for f, c in zip(fake.detach().float().cpu(), ctx.detach().float().cpu()):
            if len(self.fakes) < self.capacity:
                self.fakes.append(f.clone())
                self.ctx.append(c.clone())
            else:
                i = int(torch.randint(0, self.capacity, (1,), generator=self.gen))
                self.fakes[i], self.ctx[i] = f.clone(), c.clone()

    def sample(self, n: int, shape: torch.Size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """n past fakes of `shape` (C, H, W) and their latents (the buffer holds some: they were just pushed)."""
        same = [i for i, f in enumerate(self.fakes) if f.shape == shape]
        idx = [same[i] for i in torch.randint(0, len(same), (n,), generator=self.gen).tolist()]
        fakes, ctx = torch.stack([self.fakes[i] for i in idx]), torch.stack([self.ctx[i] for i in idx])
        return fakes.to(device), ctx.to(device)

    def state_dict(self) -> dict[str, Any]:
        """fakes / ctx: one stacked tensor when they share a shape, else lists of tensors."""
        def pack(ts: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
            if not ts:
                return torch.zeros(0)
            return torch.stack(ts) if all(t.shape == ts[0].shape for t in ts) else list(ts)

        return {"fakes": pack(self.fakes), "ctx": pack(self.ctx), "gen": self.gen.get_state()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.fakes, self.ctx = list(sd["fakes"]), list(sd["ctx"])
        self.gen.set_state(sd["gen"])


class Adversarial:
    """The discriminator, its optimiser and replay buffer; LSGAN targets (+1 fake, -1 real, as Seraena).

    `disc_step` trains the discriminator on a batch whose images are each real or fake (fair coin from `gen`),
    half of the fakes from the replay buffer. `targets` returns fake + c, c the negated gradient (w.r.t. the
    fake) of the distance between the discriminator's scores of real and fake, divided by its standard deviation:
    `mse(fake, targets.detach())` pushes each fake toward what the discriminator finds real.
    """

    def __init__(self, latent_channels: int, width: int, lr: float, betas: tuple[float, float], seed: int,
                 replay_size: int, device: torch.device):
        torch.manual_seed(seed + 1)
        self.disc = PatchDiscriminator(latent_channels, width).to(device)
        self.net: nn.Module = self.disc  # what disc_step calls (a DDP wrapper under torch.distributed)
        self.opt = torch.optim.AdamW(self.disc.parameters(), lr, betas=betas)
        self.buffer = ReplayBuffer(replay_size, seed + 2)
        self.gen = torch.Generator().manual_seed(seed + 3)

    def disc_step(self, real: torch.Tensor, fake: torch.Tensor, ctx: torch.Tensor, autocast: Any,
                  scaler: Any) -> tuple[float, bool]:
        """One discriminator update; returns (loss, finite). A non-finite loss or gradient skips the update."""
        real, fake, ctx = real.detach(), fake.detach().float(), ctx.detach()
        self.buffer.push(fake, ctx)
        n = len(fake) // 2
        old, old_ctx = self.buffer.sample(len(fake) - n, fake.shape[1:], fake.device)
        fakes, fake_ctx = torch.cat([fake[:n], old]), torch.cat([ctx[:n], old_ctx])
        mask = (torch.rand(len(real), 1, 1, 1, generator=self.gen) < 0.5).to(real.device)
        self.disc.train()
        with autocast():
            scores = self.net(torch.where(mask, fakes, real), torch.where(mask, fake_ctx, ctx))
            loss = F.mse_loss(scores.float(), mask.float().mul(2).sub(1).expand(scores.shape))
        self.opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(self.opt)
        norm = torch.nn.utils.clip_grad_norm_(self.disc.parameters(), float("inf"))
        finite = bool(torch.isfinite(norm))
        if finite:
            scaler.step(self.opt)
        scaler.update()
        return float(loss.detach()), finite

    def targets(self, real: torch.Tensor, fake: torch.Tensor, ctx: torch.Tensor, autocast: Any) -> torch.Tensor:
        self.disc.eval()
        fake = fake.detach().float()
        corr = torch.zeros_like(fake, requires_grad=True)
        with autocast():
            with torch.no_grad():
                ref = self.disc(real, ctx).float()
            dist = F.mse_loss(self.disc(fake + corr, ctx).float(), ref, reduction="none").mean((1, 2, 3)).sum()
        (grad,) = torch.autograd.grad(dist, [corr])
        c = grad.neg()
        c = c / (c.std(correction=0) + 1e-12)  # scale-free: only the direction matters
        return (fake + c).detach()

    def state_dict(self) -> dict[str, Any]:
        return {"disc": self.disc.state_dict(), "opt": self.opt.state_dict(), "buffer": self.buffer.state_dict(),
                "gen": self.gen.get_state()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.disc.load_state_dict(sd["disc"])
        self.opt.load_state_dict(sd["opt"])
        self.buffer.load_state_dict(sd["buffer"])
        self.gen.set_state(sd["gen"])


def pooled_mse(fake: torch.Tensor, real: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """MSE of the images average-pooled `factor` x `factor` (colour and low frequencies only)."""
    return F.mse_loss(F.avg_pool2d(fake.float(), factor), F.avg_pool2d(real.float(), factor))


def _patch(latent_channels: int, c: Any, device: torch.device) -> Adversarial:
    return Adversarial(latent_channels, c.disc_width, c.disc_lr, c.betas, c.seed, c.replay_size, device)


# --adversarial NAME -> factory; "off" means none. Register your own here before building a TrainConfig.
ADVERSARIAL_LOSSES: dict[str, Callable[[int, Any, torch.device], Any]] = {"patch": _patch}
