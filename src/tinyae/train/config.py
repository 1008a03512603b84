"""What a training run is: `TrainConfig`, every setting as data, and the rule for what may change on a resume.

Fields in `BUDGET_FIELDS` (how long to train, how often to report, where to run) may change when a run is resumed;
a change to any other field (what is trained: teacher, student, data, losses, crop schedule, ...) is refused,
naming the difference (`resume_differences`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# May change on resume: they decide how long and how observably we train, not what is trained.
BUDGET_FIELDS = ("max_steps", "time_budget", "checkpoint_every", "checkpoint_minutes", "eval_every", "log_every",
                 "val_size", "device", "export_formats")
TRAIN_PARTS = ("both", "encoder", "decoder")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TEACHER_LATENTS = ("crop", "whole")


@dataclass
class TrainConfig:
    """Every setting of a run. Images are in [-1, 1]; crops and sizes are in pixels; times in minutes."""

    teacher: str  # diffusers VAE folder / hub id, tinyae source, or "latents:DIR" (precomputed teacher latents)
    student: str  # variant name (architecture, from scratch), config.json / JSON text, or a tinyae weights source
    data: list[str]  # image folders (recursive)
    val: str | None = None  # held-out image folder for evaluation
    val_size: int = 256  # evaluation on the centre val_size x val_size crop of each validation image
    # latent convention: the registry family's (tinyae.variants.FAMILIES) or explicit factors; None = inferred
    family: str | None = None
    scaling_factor: float | None = None
    shift_factor: float | None = None
    latent_sample: bool = False  # teacher latents: latent_dist.sample() (seeded) instead of the mean
    # crop: the teacher encodes each training crop; whole: each training image (and its flip) once, cached, crops
    # cut on the latent grid (as a whole image is decoded; colour-changed crops are still encoded by themselves)
    teacher_latents: str = "crop"
    train: str = "both"  # both | encoder | decoder: the other half is frozen
    # data
    crop_schedule: list[tuple[int, int]] = field(default_factory=lambda: [(96, 0)])  # (crop px, from step)
    # crop: square crops at the image's resolution; buckets: whole images at about crop^2 px, aspect kept (data.py)
    crop_policy: str = "crop"
    batch_size: int = 16
    flip: float = 0.5  # probability of a horizontal flip
    color_aug: float = 0.08  # fraction of samples with a random colour change (saturation, gain, brightness)
    hue: float = 0.0  # colour changes also rotate the hue by up to +-hue degrees (0: the recipe's light change)
    tint: float = 0.0  # fraction of gray crops given a random smooth colour (data.tint; for sets poor in colour)
    seed: int = 0
    # optimisation
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    ema: float = 0.999  # EMA decay of the student (warmed up: min(ema, (1 + step) / (10 + step)); 0 = no EMA)
    precision: str = "auto"  # auto (bf16 where the device supports it, else fp32) | fp32 | bf16 | fp16 (CUDA)
    # losses (each a weight; 0 turns a term off)
    w_latent: float = 1.0  # encoder: MSE to the teacher's latents
    w_adv: float = 1.0  # decoder: adversarial (MSE toward fake + correction)
    w_pool: float = 1.0  # decoder: MSE of 8x average-pooled images
    w_mse: float = 0.0  # decoder: full-resolution pixel MSE (the pure-MSE baseline)
    adversarial: str = "patch"  # patch (latent-conditioned patch discriminator), off, or a registered name
    # decoder: steps of pixel-MSE warm-up before the adversarial phase (the discriminator idle, full-resolution
    # MSE at weight max(w_mse, 1)); 0 = adversarial from the first step, as the recipe
    adv_start: int = 0
    disc_lr: float = 3e-4
    disc_width: int = 64  # channels of the discriminator's first stage (x1, x2, x4, x8, x8, x8)
    replay_size: int = 1024  # past fakes kept for the discriminator
    # budget and reporting (may change on resume)
    max_steps: int | None = None
    time_budget: float | None = None  # minutes of training, summed over resumes
    checkpoint_every: int = 500
    checkpoint_minutes: float = 10.0
    eval_every: int = 500
    log_every: int = 10
    device: str = "auto"
    export_formats: tuple[str, ...] = ("diffusers", "original", "comfyui", "onnx")
    # record
    command: str = ""  # the command line that made the run (model card)

    def __post_init__(self) -> None:
        self.crop_schedule = [tuple(int(v) for v in c) for c in self.crop_schedule]  # type: ignore[misc]
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.export_formats = tuple(self.export_formats)
        self.data = [str(d) for d in self.data]
        check(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["crop_schedule"] = [list(c) for c in self.crop_schedule]
        d["betas"] = list(self.betas)
        d["export_formats"] = list(self.export_formats)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def crop_at(self, step: int) -> int:
        """The crop side (px) used at `step` (0-based)."""
        crop = self.crop_schedule[0][0]
        for px, start in self.crop_schedule:
            if step >= start:
                crop = px
        return crop

    @property
    def trains_encoder(self) -> bool:
        return self.train in ("both", "encoder") and self.w_latent > 0

    @property
    def trains_decoder(self) -> bool:
        return self.train in ("both", "decoder")

    @property
    def uses_disc(self) -> bool:
        return self.trains_decoder and self.adversarial != "off" and self.w_adv > 0

    def warming_up(self, step: int) -> bool:
        """True while `step` (0-based) is in the decoder's pixel-MSE warm-up (before `adv_start`)."""
        return self.uses_disc and step < self.adv_start


def check(c: TrainConfig) -> None:
    """ValueError naming the first bad setting."""
    if not c.data:
        raise ValueError("--data: give at least one image folder")
    if c.train not in TRAIN_PARTS:
        raise ValueError(f"--train must be one of {TRAIN_PARTS}, got {c.train!r}")
    from .losses import ADVERSARIAL_LOSSES

    known = (*ADVERSARIAL_LOSSES, "off")
    if c.adversarial not in known:
        raise ValueError(f"--adversarial must be one of {', '.join(known)}, got {c.adversarial!r}")
    if c.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {c.precision!r}")
    from .data import CROP_POLICIES

    if c.crop_policy not in CROP_POLICIES:
        raise ValueError(f"--crop-policy must be one of {', '.join(CROP_POLICIES)}, got {c.crop_policy!r}")
    if c.teacher_latents not in TEACHER_LATENTS:
        raise ValueError(f"--teacher-latents must be one of {', '.join(TEACHER_LATENTS)}, got {c.teacher_latents!r}")
    if c.teacher_latents == "whole":
        if c.latent_sample:
            raise ValueError("--teacher-latents whole keeps one encoding per image; it cannot follow --latent-sample")
        if c.crop_policy != "crop":
            raise ValueError("--teacher-latents whole needs --crop-policy crop (buckets resize every sample)")
        if c.teacher.startswith("latents:"):
            raise ValueError("--teacher-latents whole: precomputed latents (latents:DIR) are whole-image latents "
                             "already")
    if c.tint > 0 and c.teacher.startswith("latents:"):
        raise ValueError("--tint changes the crops' colours, which precomputed latents (latents:DIR) cannot follow")
    if not c.crop_schedule or c.crop_schedule[0][1] != 0:
        raise ValueError("--crop-schedule must start at step 0, e.g. 96:0,256:20000")
    starts = [s for _, s in c.crop_schedule]
    if starts != sorted(set(starts)):
        raise ValueError("--crop-schedule steps must increase")
    for px, _ in c.crop_schedule:
        if px < 8 or px % 8:
            raise ValueError(f"crop sizes must be multiples of 8 (of 32 for a 32x model) and >= 8, got {px}")
    positive = {"batch_size": c.batch_size, "lr": c.lr, "disc_lr": c.disc_lr, "disc_width": c.disc_width,
                "checkpoint_every": c.checkpoint_every, "eval_every": c.eval_every, "log_every": c.log_every,
                "checkpoint_minutes": c.checkpoint_minutes, "val_size": c.val_size}
    for name, v in positive.items():
        if not v > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {v}")
    for name in ("flip", "color_aug", "tint", "ema"):
        v = getattr(c, name)
        if not 0 <= v <= 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {v}")
    for name in ("w_latent", "w_adv", "w_pool", "w_mse", "weight_decay", "grad_clip"):
        if getattr(c, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(c, name)}")
    if not 0 <= c.hue <= 180:
        raise ValueError(f"--hue must be in [0, 180] degrees, got {c.hue}")
    if c.adv_start < 0:
        raise ValueError(f"--adv-start must be >= 0 steps, got {c.adv_start}")
    if c.replay_size < 1:
        raise ValueError(f"--replay-size must be >= 1, got {c.replay_size}")
    if c.max_steps is not None and c.max_steps < 0:
        raise ValueError(f"--max-steps must be >= 0, got {c.max_steps}")
    if c.time_budget is not None and not c.time_budget > 0:
        raise ValueError(f"--time-budget must be positive minutes, got {c.time_budget}")
    if c.trains_decoder and not (c.w_pool > 0 or c.w_mse > 0 or c.uses_disc):
        raise ValueError("the decoder has no loss: give --w-adv, --w-pool or --w-mse a positive weight")
    if c.train == "encoder" and c.w_latent <= 0:
        raise ValueError("--train encoder needs --w-latent > 0")
    if c.scaling_factor is not None and not c.scaling_factor > 0:
        raise ValueError(f"--scaling-factor must be positive, got {c.scaling_factor}")


def resume_differences(saved: dict[str, Any], now: TrainConfig) -> list[str]:
    """The settings that differ between a checkpoint's config and this one, budget fields excepted."""
    defaults = TrainConfig(teacher="", student="", data=["."]).to_dict()
    saved = {**defaults, **saved}  # a setting newer than the run: the run had its default
    diffs = []
    for name, value in now.to_dict().items():
        if name in BUDGET_FIELDS or name == "command":
            continue
        if saved.get(name) != value:
            diffs.append(f"--{name.replace('_', '-')}: the run has {saved.get(name)!r}, this command {value!r}")
    return diffs


def parse_crop_schedule(text: str) -> list[tuple[int, int]]:
    """"96:0,256:20000" -> [(96, 0), (256, 20000)] (crop px from step); a bare "128" is [(128, 0)]."""
    out = []
    for part in text.split(","):
        px, _, start = part.strip().partition(":")
        try:
            out.append((int(px), int(start or 0)))
        except ValueError:
            raise ValueError(f"--crop-schedule: {part!r} is not PX:STEP (e.g. 96:0,256:20000)") from None
    return out
