"""ONNX export of the video TAEs in their streaming form: one graph step per group of frames, with the temporal
state (each MemBlock's input at the previous frame) as explicit inputs and outputs; run in onnxruntime.

Graphs (float32; batch, height and width dynamic), in the networks' own space (the original convention, frames
pixel-unshuffled by the patch size, values in [0, 1]; no clamp, no frame rules):

- `encoder_step.onnx`: `frames` (N, t, 3*p*p, H, W) (t = the encoder's time factor) and `past_0..past_k` ->
  `latents` (N, C, H/8, W/8) and `next_0..next_k`;
- `decoder_step.onnx`: `latents` (N, C, h, w) and `past_0..` -> `frames` (N, t, 3*p*p, 8h, 8w) and `next_0..`.

State starts as zeros (`OnnxStep.zero_state`); feed each step's `next_i` back as `past_i`. `OnnxVideoAutoencoder`
runs them with the frame rules (end padding, trimming, taeh3's chunks) of tinyae.video.frames, so its results equal
`AutoencoderTinyVideo.encode_video` / `decode_video`.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..weights import atomic_write
from .config import VideoConfig
from .execute import FrameStream
from .frames import DecodeStream, EncodeStream, _check_frames
from .model import AutoencoderTinyVideo

FILES = {"encoder": "encoder_step.onnx", "decoder": "decoder_step.onnx"}
CONFIG = "config.json"
MIN_OPSET = 17
ROWS = 16  # rows of the export example (states scale with the input: recorded per ROWS input rows)


class _Step(nn.Module):
    """One streaming step of a layer list: frames (N, group, C, H, W) or one latent (N, C, h, w) in, the memory
    layers' state explicit; out: one latent (encoder) or the frames it decodes into, stacked (decoder)."""

    def __init__(self, layers: nn.Sequential, stack: bool):
        super().__init__()
        self.layers, self.stack = layers, stack

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = FrameStream(self.layers)
        s.set_state(list(state))
        outs = [o for f in (x.unbind(1) if x.ndim == 5 else [x]) for o in s.push(f)]
        return (torch.stack(outs, 1) if self.stack else outs[0], *s.get_state())


def _state_shapes(layers: nn.Sequential, x: torch.Tensor) -> list[tuple[int, ...]]:
    s = FrameStream(layers)
    with torch.no_grad():
        for f in x.unbind(1) if x.ndim == 5 else [x]:
            s.push(f)
    return [tuple(t.shape) for t in s.get_state()]


def export_video_onnx(model: AutoencoderTinyVideo, folder: str | os.PathLike, opset: int = MIN_OPSET, *,
                      overwrite: bool = False) -> list[Path]:
    """Write `encoder_step.onnx` / `decoder_step.onnx` (the halves the model has) and `config.json` into
    `folder` (see the module docstring); each checked with onnx.checker and written atomically. Existing files
    raise FileExistsError unless `overwrite`. Returns the written paths."""
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx extra: pip install 'tinyae[onnx]'") from None
    if not isinstance(model, AutoencoderTinyVideo):
        raise ValueError(f"export_video_onnx expects a tinyae AutoencoderTinyVideo, got {type(model).__name__}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    model = model.__dict__.get("_source", model)  # an optimized copy exports its source
    folder = Path(folder)
    cfg = model.config
    parts = {"encoder": model.encoder, "decoder": model.decoder}
    targets = [folder / FILES[p] for p, net in parts.items() if net is not None] + [folder / CONFIG]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (pass overwrite=True)")
    p2 = 3 * cfg.patch_size ** 2
    written, layouts = [], {}
    for part, net in parts.items():
        if net is None:
            continue
        net = copy.deepcopy(net).float().cpu().eval()
        if part == "encoder":
            example = torch.zeros(1, cfg.encoder_time_factor, p2, ROWS, 24)
            names, axes, out_axes = ("frames", "latents"), {0: "batch", 3: "height", 4: "width"}, \
                {0: "batch", 2: "height", 3: "width"}
        else:
            example = torch.zeros(1, cfg.latent_channels, ROWS, 3)
            names, axes, out_axes = ("latents", "frames"), {0: "batch", 2: "height", 3: "width"}, \
                {0: "batch", 3: "height", 4: "width"}
        step = _Step(net, stack=part == "decoder")
        shapes = _state_shapes(net, example)
        layouts[part] = [[s[1], s[2]] for s in shapes]  # channels, rows for ROWS input rows
        state = [torch.zeros(s) for s in shapes]
        ins = [names[0]] + [f"past_{i}" for i in range(len(state))]
        outs = [names[1]] + [f"next_{i}" for i in range(len(state))]
        dyn = {names[0]: axes, names[1]: out_axes}
        for i in range(len(state)):  # each state its own size names: they differ between layers
            dyn[ins[1 + i]] = dyn[outs[1 + i]] = {0: "batch", 2: f"state{i}_height", 3: f"state{i}_width"}
        path = folder / FILES[part]

        def write(tmp: str, step=step, example=example, state=state, ins=ins, outs=outs, dyn=dyn) -> None:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(step, (example, *state), tmp, input_names=ins, output_names=outs,
                                  dynamic_axes=dyn, opset_version=opset, dynamo=False)
            onnx.checker.check_model(tmp)

        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
        written.append(path)
    text = json.dumps({**cfg.to_dict(), "_tinyae_onnx_opset": opset, "_tinyae_onnx_state": layouts},
                      indent=2, sort_keys=True)
    atomic_write(folder / CONFIG, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    written.append(folder / CONFIG)
    return written


class OnnxStep:
    """A FrameStream-like runner of one step graph in onnxruntime: `push(frame)` -> the outputs it completes,
    carrying the state between calls (zeros at the first frame). `layout`: each state's [channels, rows per
    ROWS input rows], as recorded at export."""

    def __init__(self, session: Any, group: int, layout: list[list[int]]):
        self.session, self.group, self.layout = session, group, layout
        self.input_name = session.get_inputs()[0].name
        self.reset()

    def reset(self) -> None:
        self._state: list[np.ndarray] | None = None
        self._gathered: list[torch.Tensor] = []

    @property
    def pending(self) -> int:
        return len(self._gathered)

    def push(self, frame: torch.Tensor) -> list[torch.Tensor]:
        self._gathered.append(frame.float().cpu())
        if len(self._gathered) < self.group:
            return []
        x = torch.stack(self._gathered, 1) if self.input_name == "frames" else self._gathered[0]
        self._gathered = []
        if self._state is None:
            n, h, w = frame.shape[0], frame.shape[-2], frame.shape[-1]
            self._state = [np.zeros((n, c, h * r // ROWS, w * r // ROWS), dtype=np.float32) for c, r in self.layout]
        out = self.session.run(None, {self.input_name: x.numpy(), **{f"past_{i}": s for i, s in
                                                                      enumerate(self._state)}})
        self._state = out[1:]
        y = torch.from_numpy(out[0])
        return list(y.unbind(1)) if y.ndim == 5 else [y]


class OnnxVideoAutoencoder:
    """The exported step graphs run in onnxruntime with tinyae's frame rules: `encode_video(x)` / `decode_video(z)`
    in the original convention (NTCHW, frames in [0, 1]), equal to AutoencoderTinyVideo's; streaming with
    `stream_encoder()` / `stream_decoder(num_latents)` (tinyae.video.frames.EncodeStream / DecodeStream)."""

    def __init__(self, folder: str | os.PathLike, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("the onnxruntime backend needs the onnx extra: pip install 'tinyae[onnx]'") from None
        folder = Path(folder)
        data = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        self._layouts = data.get("_tinyae_onnx_state")
        if self._layouts is None:
            raise ValueError(f"{folder}: not a tinyae video ONNX export (no _tinyae_onnx_state in {CONFIG})")
        self.config = VideoConfig.from_dict(data)
        self.sessions = {part: ort.InferenceSession(str(folder / name), providers=providers or
                                                    ["CPUExecutionProvider"])
                         for part, name in FILES.items() if (folder / name).exists()}

    def _step(self, part: str) -> OnnxStep:
        if part not in self.sessions:
            raise ValueError(f"this export has no {part}")
        group = self.config.encoder_time_factor if part == "encoder" else 1
        return OnnxStep(self.sessions[part], group, self._layouts[part])

    def stream_encoder(self) -> EncodeStream:
        return EncodeStream(self.config, None, stream=self._step("encoder"))

    def stream_decoder(self, num_latents: int | None = None) -> DecodeStream:
        return DecodeStream(self.config, None, num_latents, stream=self._step("decoder"))

    def encode_video(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (N, T, 3, H, W) in [0, 1] -> latents (N, T', C, h, w)."""
        _check_frames(self.config, x)
        s = self.stream_encoder()
        return torch.stack([z for f in x.float().unbind(1) for z in s.push(f)] + s.flush(), 1)

    def decode_video(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, T, C, h, w) -> frames (N, T', 3, H, W) in [0, 1]."""
        s = self.stream_decoder(z.shape[1])
        return torch.stack([f for lat in z.float().unbind(1) for f in s.push(lat)], 1)
