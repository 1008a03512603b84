"""An independent implementation of the TAEHV video family, the oracle for tinyae.video's parity tests.

Written from the architecture description (issue 14, the original project's taehv.py facts), not from tinyae's
modules: plain functions over a state dict in the original key layout (`encoder.N.*`, `decoder.N.*`), time as a
Python list of frames (N, C, H, W), frames in [0, 1], NTCHW at the edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Spec:
    latent: int
    patch: int
    enc_t: tuple[int, int, int]  # TPool strides
    dec_t: tuple[int, int, int]  # TGrow strides
    super_decoder: bool = False
    cogvideox: bool = False
    h3: bool = False  # MiniMax H3's grid: 17c - 12 frames <-> 5c - 3 latents (see encode / decode)


T4, T8 = ((2, 2, 1), (1, 2, 2)), ((2, 2, 2), (2, 2, 2))
SPECS = {
    "taehv": Spec(16, 1, *T4), "taew2_1": Spec(16, 1, *T4), "taecvx": Spec(16, 1, *T4, cogvideox=True),
    "taeos1_3": Spec(16, 1, *T4), "taew2_2": Spec(48, 2, *T4), "taehv1_5": Spec(32, 2, *T4),
    "taeltx_2": Spec(128, 4, *T8), "taeltx2_3": Spec(128, 4, *T8), "taeh3": Spec(24, 2, *T4, h3=True),
    "taehv1_5_super": Spec(32, 2, *T4, super_decoder=True), "taew2_2_super": Spec(48, 2, *T4, super_decoder=True),
}


# ----------------------------------------------------------------------------------------- the layer lists
# Each entry: (kind, args). Index in the list = N in the state-dict key.
def encoder_ops(s: Spec) -> list[tuple]:
    ops: list[tuple] = [("conv3", 3 * s.patch ** 2, 64, True), ("relu",)]
    for st in s.enc_t:
        ops += [("tpool", 64, st), ("conv3s2", 64, 64), ("mem", 64), ("mem", 64), ("mem", 64)]
    return ops + [("conv3", 64, s.latent, True)]


def decoder_ops(s: Spec) -> list[tuple]:
    if s.super_decoder:
        w = (512, 256, 128, 64)
        ops: list[tuple] = [("conv1", s.latent, w[0])]
        for i, st in enumerate(s.dec_t):
            ops += [("smem", w[i])] * 3 + [("conv3", w[i], w[i + 1] * 4, True), ("relu",), ("shuffle", 2),
                                           ("tgrow", w[i + 1], st)]
        return ops + [("conv3", 64, 3 * s.patch ** 2, True)]
    w = (256, 128, 64, 64)
    ops = [("clamp",), ("conv3", s.latent, w[0], True), ("relu",)]
    for i, st in enumerate(s.dec_t):
        ops += [("mem", w[i])] * 3 + [("up", 2), ("tgrow", w[i], st), ("conv3", w[i], w[i + 1], False)]
    return ops + [("relu",), ("conv3", 64, 3 * s.patch ** 2, True)]


def random_weights(s: Spec, seed: int = 0, tgrow_extra: bool = False) -> dict[str, torch.Tensor]:
    """Random tensors in the original layout; tgrow_extra stores stride-1 TGrows with 2x output channels."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape: int) -> torch.Tensor:
        fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1) if len(shape) > 1 else 1
        return torch.randn(*shape, generator=g) * (1.0 / fan_in) ** 0.5

    sd: dict[str, torch.Tensor] = {}
    for part, ops in (("encoder", encoder_ops(s)), ("decoder", decoder_ops(s))):
        for i, op in enumerate(ops):
            k = f"{part}.{i}"
            if op[0] == "conv3":
                sd[f"{k}.weight"] = t(op[2], op[1], 3, 3)
                if op[3]:
                    sd[f"{k}.bias"] = t(op[2]) * 0.1
            elif op[0] == "conv3s2":
                sd[f"{k}.weight"] = t(op[2], op[1], 3, 3)
            elif op[0] == "conv1":
                sd[f"{k}.weight"] = t(op[2], op[1], 1, 1)
            elif op[0] == "tpool":
                sd[f"{k}.conv.weight"] = t(op[1], op[1] * op[2], 1, 1)
            elif op[0] == "tgrow":
                mult = 2 if (tgrow_extra and op[2] == 1) else op[2]
                sd[f"{k}.conv.weight"] = t(op[1] * mult, op[1], 1, 1)
            elif op[0] == "mem":
                n = op[1]
                sd[f"{k}.conv.0.weight"], sd[f"{k}.conv.0.bias"] = t(n, 2 * n, 3, 3), t(n) * 0.1
                sd[f"{k}.conv.2.weight"], sd[f"{k}.conv.2.bias"] = t(n, n, 3, 3), t(n) * 0.1
                sd[f"{k}.conv.4.weight"], sd[f"{k}.conv.4.bias"] = t(n, n, 3, 3), t(n) * 0.1
            elif op[0] == "smem":
                n = op[1]
                sd[f"{k}.conv.0.weight"] = torch.randn(2 * n, 1, 7, 7, generator=g) / 7
                sd[f"{k}.conv.1.weight"], sd[f"{k}.conv.1.bias"] = t(4 * n, 2 * n, 1, 1), t(4 * n) * 0.1
                sd[f"{k}.conv.3.weight"] = t(n, 4 * n, 1, 1) * 0.5
    return sd


# ----------------------------------------------------------------------------------------- running them
def _run(ops: list[tuple], sd: dict[str, torch.Tensor], part: str, frames: list[torch.Tensor],
         time_up: tuple[bool, ...] | None = None, space_up: tuple[bool, ...] | None = None) -> list[torch.Tensor]:
    n_tgrow = n_up = 0
    for i, op in enumerate(ops):
        k, kind = f"{part}.{i}", op[0]
        w, b = sd.get(f"{k}.weight"), sd.get(f"{k}.bias")
        if kind == "conv3":
            frames = [F.conv2d(x, w, b, padding=1) for x in frames]
        elif kind == "conv3s2":
            frames = [F.conv2d(x, w, None, stride=2, padding=1) for x in frames]
        elif kind == "conv1":
            frames = [F.conv2d(x, w) for x in frames]
        elif kind == "relu":
            frames = [torch.relu(x) for x in frames]
        elif kind == "clamp":
            frames = [3 * torch.tanh(x / 3) for x in frames]
        elif kind == "up":
            on = space_up is None or space_up[n_up]
            n_up += 1
            frames = [F.interpolate(x, scale_factor=2, mode="nearest") if on else x for x in frames]
        elif kind == "shuffle":
            frames = [F.pixel_shuffle(x, op[1]) for x in frames]
        elif kind == "tpool":
            st = op[2]
            assert len(frames) % st == 0
            frames = [F.conv2d(torch.cat(frames[j:j + st], 1), sd[f"{k}.conv.weight"])
                      for j in range(0, len(frames), st)]
        elif kind == "tgrow":
            c = op[1]
            st = op[2] if (time_up is None or time_up[n_tgrow]) else 1
            n_tgrow += 1
            wt = sd[f"{k}.conv.weight"][-c * st:]  # stored with more channels: the last timestep(s)
            frames = [y for x in frames for y in F.conv2d(x, wt).split(c, 1)]
        elif kind in ("mem", "smem"):
            out, past = [], torch.zeros_like(frames[0])
            for x in frames:
                h = torch.cat([x, past], 1)
                if kind == "mem":
                    h = F.conv2d(h, sd[f"{k}.conv.0.weight"], sd[f"{k}.conv.0.bias"], padding=1).relu()
                    h = F.conv2d(h, sd[f"{k}.conv.2.weight"], sd[f"{k}.conv.2.bias"], padding=1).relu()
                    h = F.conv2d(h, sd[f"{k}.conv.4.weight"], sd[f"{k}.conv.4.bias"], padding=1)
                    out.append(torch.relu(h + x))
                else:
                    h = F.conv2d(h, sd[f"{k}.conv.0.weight"], padding=3, groups=h.shape[1])
                    h = F.conv2d(h, sd[f"{k}.conv.1.weight"], sd[f"{k}.conv.1.bias"]).relu()
                    out.append(F.conv2d(h, sd[f"{k}.conv.3.weight"]) + x)
                past = x
            frames = out
        else:
            raise AssertionError(kind)
    return frames


def encode(s: Spec, sd: dict[str, torch.Tensor], video: torch.Tensor) -> torch.Tensor:
    """video (N, T, 3, H, W) in [0, 1] -> latents (N, T', C, h, w).

    The end is padded with copies of the last frame to a multiple of t. H3: to the grid of 17c - 12 frames (the
    inverse of its decode), then the encoder reads 3 zero frames before every 17 frames, all in one pass."""
    t = s.enc_t[0] * s.enc_t[1] * s.enc_t[2]
    frames = list(video.unbind(1))
    if s.h3:
        c = 1
        while 17 * c - 12 < len(frames):
            c += 1
        frames += [frames[-1]] * (17 * c - 12 - len(frames))
        black = torch.zeros_like(frames[0])
        frames = [x for k in range(0, len(frames), 17) for x in [black] * 3 + frames[k:k + 17]]
    frames += [frames[-1]] * ((-len(frames)) % t)
    z = _run(encoder_ops(s), sd, "encoder", [F.pixel_unshuffle(x, s.patch) for x in frames])
    return torch.stack(z, 1)


def decode(s: Spec, sd: dict[str, torch.Tensor], latents: torch.Tensor, time_up: tuple[bool, ...] | None = None,
           space_up: tuple[bool, ...] | None = None, h3_black: bool = False) -> torch.Tensor:
    """latents (N, T, C, h, w) -> frames (N, T', 3, H, W) in [0, 1].

    H3 (as the third-party ports of the original's `_decode_h3_video` describe it): the frames of one pass are
    zero-padded to whole 5-latent chunks, the first t-1 frames of each chunk dropped, then the last 3 latents'
    worth (3t frames). That can leave padding (black) frames at the end, for T = 5k + 1 latents: tinyae leaves
    those out; `h3_black=True` keeps them, as the original does."""
    lat = list(latents.unbind(1))
    strides = [st if (time_up is None or time_up[i]) else 1 for i, st in enumerate(s.dec_t)]
    t = strides[0] * strides[1] * strides[2]
    trim = t - 1
    if s.cogvideox and len(lat) % 2 == 0:
        trim = 0
    out = [F.pixel_shuffle(x.clamp(0, 1), s.patch) for x in _run(decoder_ops(s), sd, "decoder", lat, time_up,
                                                                   space_up)]
    if not s.h3:
        return torch.stack(out[trim:], 1)
    real = len(out)
    out += [torch.zeros_like(out[0])] * ((-len(out)) % (5 * t))
    kept, is_real = [], []
    for k in range(0, len(out), 5 * t):
        kept += out[k + trim:k + 5 * t]
        is_real += [k + trim + j < real for j in range(5 * t - trim)]
    kept, is_real = kept[:len(kept) - 3 * t], is_real[:len(kept) - 3 * t]
    if not h3_black:
        kept = [x for x, r in zip(kept, is_real) if r]
    return torch.stack(kept, 1)
