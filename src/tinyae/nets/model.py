"""`AutoencoderTinyBase`: the network with diffusers' contract (constructor, config, encode/decode/forward,
outputs, slicing and gradient checkpointing) over the blocks in `blocks.py`. The public `tinyae.AutoencoderTiny`
(tinyae/autoencoder.py) adds what needs the layers above: tiling, optimize(), from_pretrained/save_pretrained."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .blocks import Decoder, Encoder
from .config import DEFAULTS, TinyConfig


# float16/bfloat16 convolutions on the CPU: PyTorch's NCHW kernels for them are a slow fallback wherever oneDNN has
# no kernel for that layout (AVX2-only CPUs: a 64-channel 128² 3x3 conv takes 2.6 s in fp16 and 17 s in bf16,
# against 0.17 s in channels_last and 0.03 s in fp32, on an AMD EPYC), so the eager model runs half precision in
# channels_last: the same dtype arithmetic, returned contiguous as before. A fresh copy, because a batch of one
# with a degenerate batch stride (an HWC photo permuted and cropped: strides (3, 1, 3W, 3)) counts as channels_last
# yet takes a path 12x slower still.
_HALF = (torch.float16, torch.bfloat16)

class _TupleLike:
    """diffusers' BaseOutput behaviour that callers rely on: `out[0]`, `out.latents`, `out["latents"]`."""

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self.to_tuple())

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]


@dataclass
class AutoencoderTinyOutput(_TupleLike):
    """Output of `encode`: `latents`, the diffusion model's latents as its denoiser sees them (B, C, H/f, W/f)."""

    latents: torch.Tensor


@dataclass
class DecoderOutput(_TupleLike):
    """Output of `decode` / `forward`: `sample`, images (B, 3, H, W) in about [-1, 1] (not clamped)."""

    sample: torch.Tensor
    commit_loss: torch.Tensor | None = None

    def to_tuple(self) -> tuple:  # diffusers' BaseOutput drops None fields
        return tuple(v for v in (self.sample, self.commit_loss) if v is not None)


class MissingPartError(RuntimeError):
    """The model was loaded without the encoder (or decoder) that this call needs."""


def all_finite(x: torch.Tensor) -> bool:
    """True when `x` holds no NaN or infinity. One summation pass instead of isfinite's several: a NaN or infinite
    element makes the sum NaN or infinite, and a finite sum proves every element finite; only a sum that overflows
    from finite values (or a real non-finite element) falls back to checking every element."""
    total = x.sum(dtype=torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x.sum()
    return bool(torch.isfinite(total)) or bool(torch.isfinite(x).all())


class ParameterFacts:
    """`dtype` and `device` of a module, read from its parameters (the image and video models share them)."""

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype  # type: ignore[attr-defined]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device  # type: ignore[attr-defined]


class AutoencoderTinyBase(ParameterFacts, nn.Module):
    """Tiny AutoEncoder (TAESD family), the network: what `tinyae.AutoencoderTiny` computes, without the loaders
    and executors (the public class adds tiling, optimize(), from_pretrained/save_pretrained).

    Images are float tensors (B, 3, H, W) in [-1, 1]; latents are the diffusion model's latents as its denoiser
    sees them (scaling_factor 1.0). As in diffusers, any H and W encode (to ceil-sized latents: 60x60 -> 8x8 at 8x)
    and batch 0 gives an empty output; `tinyae.encode_images` pads other sizes by reflection and crops back (the
    decoded image is then the source's size). Inputs of another floating dtype than the model are cast to the
    model's dtype, and outputs are returned in the input's dtype.

    Parameters after `shift_factor` are tinyae's own (see `tinyae.config`): `use_midblock_gn` (taef2) and
    `encoder_stem_channels` (taesana's 32x encoder), `patch_size` (2: taeqi2_1's F16 networks). in_channels =
    out_channels are the image channels: 3 (RGB) or 4 (RGBA, straight alpha; taeqi2_1).
    """

    _supports_gradient_checkpointing = True
    _any_size = True  # see _check

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        encoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        decoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        act_fn: str = "relu",
        upsample_fn: str = "nearest",
        latent_channels: int = 4,
        upsampling_scaling_factor: int = 2,
        num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3),
        num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1),
        latent_magnitude: float = 3,
        latent_shift: float = 0.5,
        force_upcast: bool = False,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        use_midblock_gn: bool = False,
        encoder_stem_channels: tuple[int, ...] = (),
        patch_size: int = 1,
        *,
        has_encoder: bool = True,
        has_decoder: bool = True,
    ):
        super().__init__()
        params = {k: v for k, v in locals().items() if k in DEFAULTS}
        self._config = TinyConfig(**params)
        self.encoder: Encoder | None = Encoder(self._config) if has_encoder else None
        self.decoder: Decoder | None = Decoder(self._config) if has_decoder else None
        self.latent_magnitude = latent_magnitude
        self.latent_shift = latent_shift
        self.scaling_factor = scaling_factor
        self.use_slicing = False
        self.use_tiling = False
        self.tiling_options: dict[str, Any] = {}
        self.gradient_checkpointing = False
        self.check_finite = True  # NaN/Inf inputs raise ValueError (see _check)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> TinyConfig:
        """Read-only configuration; `config.block_out_channels` is what pipelines read for vae_scale_factor."""
        return self._config

    @property
    def spatial_scale_factor(self) -> int:
        """Image pixels per latent pixel along one side: 8, 16 for taeqi2_1, 32 for taesana."""
        return self._config.spatial_scale_factor

    @property
    def decoder_scale_factor(self) -> int:
        """Image pixels per latent pixel of the decoder: its upsamplings, times F16's PixelShuffle (patch_size)."""
        return (self._config.upsampling_scaling_factor ** (len(self._config.num_decoder_blocks) - 1)
                * self._config.patch_size)

    # ------------------------------------------------------------------ latent scaling (8-bit storage)
    def scale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """raw latents -> [0, 1] (magnitude `latent_magnitude`, shift `latent_shift`), clamped."""
        return x.div(2 * self.latent_magnitude).add(self.latent_shift).clamp(0, 1)

    def unscale_latents(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> raw latents."""
        return x.sub(self.latent_shift).mul(2 * self.latent_magnitude)

    # ------------------------------------------------------------------ toggles
    def enable_slicing(self) -> None:
        """Encode/decode a batch one image at a time (same output, lower peak memory)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward; computes exactly the same function as without it."""
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.gradient_checkpointing

    # ------------------------------------------------------------------ checks
    def _part(self, name: str) -> nn.Module:
        part = getattr(self, name)
        if part is None:
            raise MissingPartError(
                f"this model was loaded without {'an' if name == 'encoder' else 'a'} {name} (its weights had no {name} "
                "tensors); "
                f"load a source that includes the {name} to {'encode' if name == 'encoder' else 'decode'}")
        return part

    def _check(self, x: Any, what: str, channels: int, multiple: int, finite: bool = True) -> torch.Tensor:
        """x validated for encode/decode (ValueError naming the problem); `finite=False` leaves the NaN/Inf check
        to the caller (see `_finite`)."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{what} must have 4 dimensions (batch, channels, height, width), got shape "
                             f"{tuple(x.shape)}")
        if x.shape[1] != channels:
            raise ValueError(f"{what} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})"
                             + (": the model's latent_channels is " + str(channels) if what == "latents" else ""))
        if not x.is_floating_point():
            raise ValueError(f"{what} must be a floating-point tensor, got {x.dtype}"
                             + (" (convert uint8 images with x.float() / 127.5 - 1)" if what == "images" else ""))
        # The torch model runs any height and width, as diffusers (each stride-2 conv gives ceil(n / 2): 60 -> 8
        # latents at 8x), and batch 0 gives an empty output, as diffusers; tiles are laid on the scale factor's
        # grid, and other users of these checks (the ONNX backend) keep multiples and batch >= 1.
        any_size = getattr(self, "_any_size", False) and not getattr(self, "use_tiling", False)
        if x.shape[2] == 0 or x.shape[3] == 0 or (x.shape[0] == 0 and not getattr(self, "_any_size", False)):
            raise ValueError(f"{what} is empty: shape {tuple(x.shape)}")
        if not any_size and multiple > 1 and (x.shape[2] % multiple or x.shape[3] % multiple):
            raise ValueError(f"image height and width must be multiples of {multiple}, got {x.shape[2]}x"
                             f"{x.shape[3]}; pad the image (tinyae.encode_images pads by reflection and crops back)")
        patch = self.config.patch_size if what == "images" and multiple > 1 else 1  # F16: whole 2x2 patches
        if any_size and patch > 1 and (x.shape[2] % patch or x.shape[3] % patch):
            raise ValueError(f"image height and width must be multiples of {patch} (the F16 encoder's 2x2 "
                             f"patches), got {x.shape[2]}x{x.shape[3]}; tinyae.encode_images pads by reflection")
        if x.device != self.device:
            raise ValueError(f"{what} are on {x.device} but the model is on {self.device}")
        return self._finite(x, what) if finite else x

    def _finite_output(self, out: torch.Tensor, doing: str, what: str, dtype: torch.dtype) -> None:
        """Finite inputs can still overflow (1e30 pixels, float64 1e300 cast to float32): never return NaN/Inf."""
        if self.check_finite and not all_finite(out):
            raise ValueError(f"{doing} gave NaN or infinite {what}: the input values are too large for the model's "
                             f"{str(self.dtype).replace('torch.', '')} arithmetic (expected images in [-1, 1], raw "
                             "latents of magnitude about 3)")

    def _finite(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if self.check_finite and not all_finite(x):
            raise ValueError(f"{what} contain NaN or infinite values")
        return x

    # ------------------------------------------------------------------ running a network
    def _net(self, net: nn.Module, x: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
             ) -> torch.Tensor:
        """Run encoder or decoder on x (already in the network's convention), honouring the toggles."""
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([self._net_one(net, s, prepare) for s in x.split(1)])
        return self._net_one(net, x, prepare)

    def _net_one(self, net: nn.Module, x: torch.Tensor, prepare) -> torch.Tensor:
        if self.use_tiling:  # prepared band by band: no whole converted copy of the input
            return self._tiled(net, x, prepare)
        if prepare is not None:
            x = prepare(x)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            if isinstance(net, Decoder):
                x = net.clamp(x)
            for layer in net.layers:
                x = checkpoint(layer, x, use_reentrant=False)
            return x
        if x.device.type == "cpu" and x.dtype in _HALF:  # same dtype, the fast algorithm (see _HALF)
            return net(x.clone(memory_format=torch.channels_last)).contiguous()
        return net(x)

    # ------------------------------------------------------------------ public API
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderTinyOutput | tuple[torch.Tensor]:
        """Images (B, in_channels, H, W) in [-1, 1] -> raw latents (B, latent_channels, H/f, W/f)."""
        encoder = self._part("encoder")
        x = self._check(x, "images", self.config.in_channels, self.spatial_scale_factor, finite=False)
        # NaN/Inf: checked on the converted input when the model's dtype keeps every value of the caller's finite
        # (it is then in cache; an image read once more from memory costs ~1 ms at 512²), else on the input
        late = torch.finfo(self.dtype).max >= torch.finfo(x.dtype).max
        if not late:
            self._finite(x, "images")
        # [-1, 1] -> [0, 1] in the wider of the two dtypes, then one cast (elementwise bf16 math is slow on CPUs)
        wide = torch.promote_types(self.dtype, x.dtype)

        def prepare(t: torch.Tensor) -> torch.Tensor:
            t = t.to(wide).add(1).div_(2).to(self.dtype)
            return self._finite(t, "images") if late else t

        out = self._net(encoder, x, prepare).to(x.dtype)
        self._finite_output(out, "encoding", "latents", x.dtype)
        return AutoencoderTinyOutput(latents=out) if return_dict else (out,)

    def decode(self, x: torch.Tensor, generator: torch.Generator | None = None, return_dict: bool = True
               ) -> DecoderOutput | tuple[torch.Tensor]:
        """Raw latents (B, latent_channels, h, w) -> images (B, out_channels, h*f, w*f) in about [-1, 1].

        `generator` is accepted for diffusers compatibility and unused (the decoder is deterministic).
        """
        decoder = self._part("decoder")
        x = self._check(x, "latents", self.config.latent_channels, 1)
        wide = torch.promote_types(self.dtype, x.dtype)
        out = self._net(decoder, x.to(self.dtype)).to(wide).mul_(2).sub_(1).to(x.dtype)
        self._finite_output(out, "decoding", "images", x.dtype)
        return DecoderOutput(sample=out) if return_dict else (out,)

    def _tiled(self, net: nn.Module, x: torch.Tensor,
               prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Run `net` in row bands (use_tiling), each band first `prepare`d; the network alone has no tiling
        executor (tinyae.AutoencoderTiny)."""
        raise NotImplementedError("tiling needs an executor: use tinyae.AutoencoderTiny")

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Encode, quantise the latents to 8 bits through scale_latents, unscale, decode (as diffusers)."""
        enc = self.encode(sample).latents
        scaled = self.scale_latents(enc).mul_(255).round_().byte()
        dec = self.decode(self.unscale_latents(scaled / 255.0).to(enc.dtype)).sample
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: dict[str, Any] | TinyConfig, **kwargs: Any) -> "AutoencoderTinyBase":
        cfg = config if isinstance(config, TinyConfig) else TinyConfig.from_dict(config)
        return cls(**cfg.init_kwargs(), **kwargs)

    def extra_repr(self) -> str:
        parts = [f"latent_channels={self.config.latent_channels}", f"scale={self.spatial_scale_factor}"]
        if self.config.use_midblock_gn:
            parts.append("use_midblock_gn=True")
        return ", ".join(parts)
