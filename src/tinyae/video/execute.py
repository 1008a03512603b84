"""Executors of the video layer lists: parallel over time, and frame by frame (streaming).

Both read only each layer's declared `Geometry` (tinyae.video.layers): a layer with `memory` gets its own input at
the previous frame (zeros at the first), a `t_stride` layer gathers that many consecutive frames, a `t_scale` layer
turns one frame into that many. Tensors are (N, T, C, H, W) for `run_parallel` and (N, C, H, W) frames for
`FrameStream`; what the values mean (images in [0, 1], latents) is the caller's business.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .layers import geometry


def _previous(h: torch.Tensor, n: int) -> torch.Tensor:
    """Each frame's predecessor in (N*T, ...) layout; zeros before the first."""
    v = h.view(n, -1, *h.shape[1:])
    return torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], 1).flatten(0, 1)


Crops = Optional[list[tuple[int, int]]]  # per layer, the output rows [start, stop) kept (row bands: video.tiling)


def _crop(h: torch.Tensor, crops: list[tuple[int, int]] | None, i: int) -> torch.Tensor:
    return h if crops is None else h[..., crops[i][0]:crops[i][1], :]


def run_parallel(layers: nn.Sequential, x: torch.Tensor, crops: Crops = None) -> torch.Tensor:
    """Apply `layers` to all T frames at once (fast, memory O(T)). x: (N, T, C, H, W) -> (N, T', C', H', W').

    `crops`: after layer i keep only its output rows crops[i] (a row band's plan, tinyae.video.tiling)."""
    n = x.shape[0]
    h = x.flatten(0, 1)
    for i, layer in enumerate(layers):
        g = geometry(layer)
        if g.stateful:
            h = _crop(layer(h, _previous(h, n)), crops, i)
            continue
        if g.t_down > 1 and (h.shape[0] // n) % g.t_down:
            raise ValueError(f"{type(layer).__name__} pools {g.t_down} frames; got {h.shape[0] // n}, "
                             "not a multiple (pad the input first)")
        h = _crop(layer(h), crops, i)
    return h.view(n, -1, *h.shape[1:])


class FrameStream:
    """Apply `layers` one frame at a time, holding only each layer's state (memory O(1) in the number of frames).

    `push(frame)` returns the output frames that frame completes (none while a pooling layer is still gathering,
    several after a temporal upscale), in order; their concatenation equals `run_parallel` on all frames pushed.
    """

    def __init__(self, layers: nn.Sequential, crops: Crops = None):
        self.layers, self.crops = layers, crops
        self.geometries = [geometry(layer) for layer in layers]
        self.reset()

    def reset(self) -> None:
        """Forget all state: the next frame is a first frame."""
        self._past: dict[int, torch.Tensor] = {}
        self._gathered: dict[int, list[torch.Tensor]] = {}

    @property
    def memory_layers(self) -> list[int]:
        """Indices of the layers that read their own previous input (the temporal state)."""
        return [i for i, g in enumerate(self.geometries) if g.stateful]

    def get_state(self) -> list[torch.Tensor | None]:
        """Each memory layer's input at the previous frame (None before the first frame), in layer order."""
        return [self._past.get(i) for i in self.memory_layers]

    def set_state(self, state: list[torch.Tensor | None]) -> None:
        """Set what `get_state` returns (None: zeros at the next frame); pooling layers must have nothing pending."""
        if len(state) != len(self.memory_layers) or self.pending:
            raise ValueError(f"state must be {len(self.memory_layers)} tensors, set between complete groups")
        self._past = {i: t for i, t in zip(self.memory_layers, state) if t is not None}

    @property
    def pending(self) -> int:
        """Frames held by pooling layers, waiting for their group to complete."""
        return sum(len(v) for v in self._gathered.values())

    def push(self, frame: torch.Tensor) -> list[torch.Tensor]:
        """frame: (N, C, H, W). Returns the completed output frames, each (N, C', H', W')."""
        return self._run(0, frame)

    def _run(self, start: int, x: torch.Tensor) -> list[torch.Tensor]:
        for i in range(start, len(self.layers)):
            layer, g = self.layers[i], self.geometries[i]
            if g.stateful:
                past = self._past.get(i)
                x, self._past[i] = _crop(layer(x, torch.zeros_like(x) if past is None else past), self.crops, i), x
            elif g.t_down > 1:
                group = self._gathered.setdefault(i, [])
                group.append(x)
                if len(group) < g.t_down:
                    return []
                self._gathered[i] = []
                x = _crop(layer(torch.stack(group, 1).flatten(0, 1)), self.crops, i)
            elif g.t_up > 1:
                y = _crop(layer(x), self.crops, i).view(x.shape[0], g.t_up, -1, *x.shape[2:])
                return [out for k in range(g.t_up) for out in self._run(i + 1, y[:, k])]
            else:
                x = _crop(layer(x), self.crops, i)
        return [x]
