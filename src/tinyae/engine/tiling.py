"""Exact tiled encode/decode with bounded memory: a row-band streaming executor (its streams: `tinyae.engine.bands`).

How it works. The encoder and decoder are flat stacks of layers (3x3 convs with stride 1 or 2, 1x1 convs,
activations, Upsample, residual `Block`s, the decoder's Clamp). The image is pushed through that stack in
full-width bands of rows. Every layer keeps only the few input rows that its next output rows still need (two rows
for a 3x3 conv, the skip rows of a Block until its conv branch catches up), zero-pads only at the real top and
bottom of the image, and emits every output row it can. Nothing is recomputed and nothing is guessed: each output
row is computed from exactly the input rows the untiled network uses, so the tiled result equals the untiled one
up to float rounding (max abs difference ~1e-6 in float32), for any band height >= 1 latent row.

Memory is proportional to the image *width* times a few dozen rows, plus one band; it does not grow with the
height. Time is that of the untiled run (no halo is recomputed).

GroupNorm (taef2's `Block.pool`) normalises over the whole image, so it cannot be computed band by band in one
pass. The stack is cut before the first Block that has a GroupNorm; the part before the cut runs streamed and its
output (at the lowest resolution: 1/8 of the image size per side) is kept; then for each GroupNorm in order one
extra streamed pass over that lowest-resolution stage accumulates the per-sample, per-group sum and sum of squares
of the GroupNorm's input (in float64), using the statistics already found for the GroupNorms before it; the final
pass applies them. The extra passes only cover the cheap lowest-resolution blocks.

Options (for `AutoencoderTiny.enable_tiling(**options)` and the streaming functions):
- `band_rows`: latent rows per band (image rows per band = band_rows * spatial scale factor), an integer >= 1.
  Default None: chosen from `band_pixels`.
- `band_pixels`: when `band_rows` is None, the image pixels a band holds, about (default 2**16 = 64 Ki): rows =
  max(1, band_pixels // (image width * scale factor)). A band's largest activation is then about
  band_pixels * 64 channels * 4 bytes = 16 MiB in float32 (raise it on a GPU: fewer, larger kernels).

Streaming (peak memory independent of the image height): `decode_to_png`, `encode_png`, and the generators
`decode_bands` / `encode_bands` for other progressive formats. PNG is written and read row by row with pypng.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

from ..data.png_rows import read_png_bands, write_png_rows
from ..nets.layers import needed, out_rows
from .bands import (REARRANGEMENTS, GNStats, _chain, _check_layer, _collect, _flatten, _gn_stats,  # noqa: F401
                    _has_gn, _run)  # REARRANGEMENTS, GNStats: names users imported from tinyae.tiling

if TYPE_CHECKING:
    from ..nets.model import AutoencoderTinyBase as AutoencoderTiny

DEFAULT_BAND_PIXELS = 2 ** 16
OPTIONS = ("band_rows", "band_pixels")


# ---------------------------------------------------------------------------------------------- options
def check_options(model: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Validate tiling options; return them normalised. Raises ValueError naming a bad option or layer."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown tiling option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    band_rows = options.get("band_rows")
    band_pixels = options.get("band_pixels", DEFAULT_BAND_PIXELS)
    if band_rows is not None and (isinstance(band_rows, bool) or not isinstance(band_rows, int) or band_rows < 1):
        raise ValueError(f"band_rows must be a positive integer (latent rows per band) or None, got {band_rows!r}")
    if isinstance(band_pixels, bool) or not isinstance(band_pixels, int) or band_pixels < 1:
        raise ValueError(f"band_pixels must be a positive integer (image pixels per band), got {band_pixels!r}")
    for part in ("encoder", "decoder"):
        net = getattr(model, part, None)
        if net is not None and _fast(net):
            from .fast_stream import check

            check(net)
        elif net is not None:
            for layer in _flat_layers(net):
                _check_layer(layer)
    return {"band_rows": band_rows, "band_pixels": band_pixels}


def _fast(net: nn.Module) -> bool:
    """True for an optimized network (`tinyae.runtime.FastNet`), which streams on its own kernels (fast_stream)."""
    from .runtime import FastNet

    return isinstance(net, FastNet)


def _flat_layers(net: nn.Module) -> list[nn.Module]:
    """The layer list that `net.forward` applies in order (the decoder's Clamp first; an optimized net's ops)."""
    if _fast(net):
        return list(net.ops)
    layers = [net.clamp] if getattr(net, "clamp", None) is not None else []
    return layers + _flatten(net.layers)


@dataclass(frozen=True)
class ReceptiveField:
    """The input box one output pixel depends on, along one axis, in input pixels.

    `before`/`after`: input pixels before the first / after the last input pixel of the output pixel's own cell
    (its cell: the input pixel it lies in when decoding, the `scale` x `scale` input pixels it summarises when
    encoding), maximised over the output pixels. `scale`: output pixels per input pixel (decoder) or input pixels
    per output pixel (encoder). GroupNorm statistics, which cover the whole image, are not counted.
    """

    before: int
    after: int
    scale: int
    upsamples: bool

    @property
    def radius(self) -> int:
        return max(self.before, self.after)


def receptive_field(net: nn.Module) -> ReceptiveField:
    """Receptive field of an Encoder or Decoder, computed from its layer stack (see `ReceptiveField`)."""
    layers = _flat_layers(net)
    n_in = 64 * 2 ** 8  # any size divisible by every scale
    n_out = out_rows(layers, n_in)
    upsamples = n_out >= n_in
    scale = n_out // n_in if upsamples else n_in // n_out
    before = after = 0
    for row in range(scale if upsamples else 1):
        lo, hi = needed(layers, row, row)
        cell_lo, cell_hi = (row // scale, row // scale) if upsamples else (row * scale, row * scale + scale - 1)
        before, after = max(before, cell_lo - lo), max(after, hi - cell_hi)
    return ReceptiveField(before, after, scale, upsamples)


def _band_rows(net: nn.Module, height: int, width: int, options: dict[str, Any]) -> tuple[int, int]:
    """(input rows per band, latent rows of the image) for an input of height x width."""
    rf = receptive_field(net)
    latent_rows = height if rf.upsamples else height // rf.scale
    band = options.get("band_rows")
    if band is None:
        image_width = width * rf.scale if rf.upsamples else width
        band = max(1, options.get("band_pixels", DEFAULT_BAND_PIXELS) // (image_width * rf.scale))
    return (band if rf.upsamples else band * rf.scale), latent_rows


def stream_apply(net: nn.Module, bands: Iterable[torch.Tensor], height: int, width: int,
                 options: dict[str, Any]) -> Iterator[torch.Tensor]:
    """Run `net` (Encoder or Decoder) on an input given as consecutive row bands; yield the output row bands.

    `bands`: tensors (B, C, rows, width) in the network's convention, their rows adding up to `height`. Bands of
    any height are accepted; the output bands come as soon as they are computable. Memory: about width x
    (a few dozen rows) of activations, plus, for a network with GroupNorm, its whole lowest-resolution input.
    """
    band_in, _ = _band_rows(net, height, width, options)
    if _fast(net):
        from . import fast_stream

        yield from fast_stream.stream_apply(net, bands, height, width, band_in)
        return
    layers = _flat_layers(net)
    cut = next((i for i, layer in enumerate(layers) if _has_gn(layer)), len(layers))
    head, tail = layers[:cut], layers[cut:]
    head_chain = _chain(head, height, {})
    if not tail:
        yield from _run(head_chain, bands, band_in / height)
        return
    # GroupNorm: keep the lowest-resolution input of the GroupNorm stage, find the statistics, then run the rest.
    mid = _collect(_run(head_chain, bands, band_in / height), head_chain.n_out)
    rows = max(1, band_in * mid.shape[2] // height)
    stats = _gn_stats(tail, mid, rows, {})
    yield from _run(_chain(tail, mid.shape[2], stats), mid.split(rows, dim=2), rows / mid.shape[2])


def tiled_apply(net: nn.Module, x: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                **options: Any) -> torch.Tensor:
    """Exact banded equivalent of `net(prepare(x))` for an Encoder or Decoder and x (B, C, H, W); `prepare`
    (None: x is already in the network's convention) is applied band by band, so no whole copy is made."""
    rows, _ = _band_rows(net, x.shape[2], x.shape[3], options)
    if _fast(net):
        from . import fast_stream

        return fast_stream.tiled_apply(net, x, rows, prepare)
    n_out = out_rows(_flat_layers(net), x.shape[2])
    bands = x.split(rows, dim=2)
    if prepare is not None:
        bands = (prepare(b) for b in bands)
    return _collect(stream_apply(net, bands, x.shape[2], x.shape[3], options), n_out)


# ---------------------------------------------------------------------------------------------- streaming API
def _no_grad(it: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Advance `it` under torch.no_grad without leaking the grad mode into the caller between items."""
    while True:
        with torch.no_grad():
            item = next(it, None)
        if item is None:
            return
        yield item


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C): clamp, scale by 255, round to nearest."""
    return images.add(1).div(2).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)


def decode_bands(model: "AutoencoderTiny", latents: torch.Tensor, **options: Any) -> Iterator[torch.Tensor]:
    """Decode raw latents (B, C, h, w) band by band; yield image bands (B, out_channels, rows, w*f) in [-1, 1].

    The bands, concatenated along rows, equal `model.decode(latents)` with `model.enable_tiling(**options)`
    bit for bit (and the untiled decode to ~1e-6). Runs without autograd. Options: see the module docstring.
    """
    opts = check_options(model, options)  # checked now, not at the first next()
    decoder = model._part("decoder")
    from .fast_stream import Bands  # converted to the model's dtype band by band, never as a whole copy

    z = model._check(latents, "latents", model.config.latent_channels, 1)
    rows, _ = _band_rows(decoder, z.shape[2], z.shape[3], opts)
    bands = stream_apply(decoder, Bands(z, rows, model.dtype), z.shape[2], z.shape[3], opts)
    wide = torch.promote_types(model.dtype, latents.dtype)  # elementwise bf16 math is slow on CPUs
    return (band.to(wide).mul_(2).sub_(1).to(latents.dtype) for band in _no_grad(bands))


def encode_bands(model: "AutoencoderTiny", bands: Iterable[torch.Tensor], height: int, width: int,
                 **options: Any) -> torch.Tensor:
    """Encode an image given as consecutive row bands (B, in_channels, rows, width) in [-1, 1].

    `height`, `width`: the image size, multiples of `model.spatial_scale_factor`. Returns the raw latents
    (B, latent_channels, height/f, width/f), equal to `model.encode` of the whole image with tiling enabled.
    Only the bands being processed are held in memory (plus, for taef2, the 1/8-size lowest-resolution stage).
    """
    opts = check_options(model, options)
    encoder = model._part("encoder")
    f = model.spatial_scale_factor
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % f:
            raise ValueError(f"image {name} must be a positive multiple of {f}, got {v!r}")
    seen = [0]
    wide = torch.promote_types(model.dtype, torch.float32)

    def prepared() -> Iterator[torch.Tensor]:
        for band in bands:
            if not isinstance(band, torch.Tensor) or band.dim() != 4 or band.shape[3] != width:
                raise ValueError(f"image bands must be tensors (B, C, rows, {width}), got "
                                 f"{tuple(band.shape) if isinstance(band, torch.Tensor) else type(band).__name__}")
            band = model._check(band, "images", model.config.in_channels, 1)
            seen[0] += band.shape[2]
            if seen[0] > height:
                raise ValueError(f"the image bands hold more than height={height} rows")
            yield band.to(wide).add(1).div_(2).to(model.dtype)
        if seen[0] != height:
            raise ValueError(f"the image bands hold {seen[0]} rows, expected height={height}")

    n_out = out_rows(_flat_layers(encoder), height)
    return _collect(_no_grad(stream_apply(encoder, prepared(), height, width, opts)), n_out)


def decode_to_png(model: "AutoencoderTiny", latents: torch.Tensor, path: str | os.PathLike,
                  compression: int | None = None, size: tuple[int, int] | None = None, **options: Any) -> None:
    """Decode raw latents (1, C, h, w) straight into a PNG file, written row band by row band.

    Peak memory does not grow with the image height (see the module docstring); the file is written atomically
    (temporary file, then rename), so an existing file is only replaced by a complete one. The pixels equal
    `to_uint8(model.decode(latents).sample)` with the same tiling options, exactly. `compression`: zlib level
    0-9 (None: zlib's default). 1-, 3- or 4-channel outputs (greyscale, RGB, or RGBA with the model's straight
    alpha: taeqi2_1). `size`: (width, height) to keep
    of the decoded image (its top-left part), e.g. the source's size before padding to a multiple of 8.
    """
    if isinstance(latents, torch.Tensor) and latents.dim() == 4 and latents.shape[0] != 1:
        raise ValueError(f"a PNG holds one image: latents must have batch size 1, got shape {tuple(latents.shape)}")
    if compression is not None and (isinstance(compression, bool) or compression not in range(10)):
        raise ValueError(f"compression must be a zlib level 0-9 or None, got {compression!r}")
    channels = model.config.out_channels
    if channels not in (1, 3, 4):
        raise ValueError(f"PNG output needs a 1-, 3- or 4-channel decoder, this one has {channels} channels")
    bands = decode_bands(model, latents, **options)  # validates latents and options before a file is touched
    f = model.decoder_scale_factor
    height, width = latents.shape[2] * f, latents.shape[3] * f
    if size is not None:
        if not (0 < size[0] <= width and 0 < size[1] <= height):
            raise ValueError(f"size {size} must fit inside the decoded {width}x{height} image")
        width, height = int(size[0]), int(size[1])

    def rows() -> Iterator[bytes]:
        left = height
        for band in bands:
            pixels = to_uint8(band)[0, :left, :width].cpu().numpy()
            left -= pixels.shape[0]
            for row in pixels.reshape(pixels.shape[0], width * channels):  # a band may be empty
                yield row.tobytes()

    write_png_rows(path, width, height, channels, rows(), compression)


def encode_png(model: "AutoencoderTiny", path: str | os.PathLike, **options: Any) -> torch.Tensor:
    """Encode a PNG file read row band by row band; return raw latents (1, latent_channels, H/f, W/f), float32.

    The image's height and width must be multiples of `model.spatial_scale_factor`. The result equals
    `model.encode(x)` with the same tiling options, for x the image as (1, C, H, W) float32 in [-1, 1]
    (uint8 / 127.5 - 1), exactly: C = 3 (RGB), or 4 for an RGBA model (taeqi2_1; alpha 255 for a PNG without).
    """
    opts = check_options(model, options)
    channels = model.config.in_channels
    if channels not in (3, 4):
        raise ValueError(f"PNG input needs a 3- or 4-channel encoder, this one has {channels} channels")
    f = model.spatial_scale_factor
    probe_h, probe_w, _ = read_png_bands(path, 1)
    if probe_h % f or probe_w % f:
        raise ValueError(f"{path}: image size {probe_w}x{probe_h} is not a multiple of {f}; crop or pad it first")
    band, _ = _band_rows(model._part("encoder"), probe_h, probe_w, opts)
    height, width, bands = read_png_bands(path, band, channels)

    def tensors() -> Iterator[torch.Tensor]:
        for rgb in bands:
            x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(torch.float32) / 127.5 - 1
            yield x.to(model.device)

    return encode_bands(model, tensors(), height, width, **opts).to(torch.float32)
