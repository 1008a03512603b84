"""`tinyae bench`: encode/decode speed side by side, in one process, on the same weights.

Contestants: diffusers' AutoencoderTiny eager float32 (what users get today), tinyae eager float32, tinyae
`optimize(precision="fp32")`, tinyae `optimize()` ("auto": bfloat16 on CPUs with AVX512-BF16/AMX), and
onnxruntime (float32). Each is timed on encode and decode at each size: median of `--repeats` runs after
`--warmup` runs; in each round every contestant's timed call comes right after an untimed call of the same
operation (steady state, as in a loop of previews or a batch job, and as the ceiling is measured), unless `--cold`.
The same run measures the machine's ceiling: a large 64-channel 3x3 convolution (channels_last,
float32 and bfloat16); achieved GFLOP/s count the convolutions of the original network (a rewrite that removes
work can exceed 100%). Fidelity: PSNR (dB, images in [-1, 1]) of every contestant against tinyae eager float32.

diffusers cannot express taef2's GroupNorm branch: for such a model every contestant runs the same network without
it (the "diffusers twin", same weights otherwise), and the full model's optimized timings are listed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..autoencoder import AutoencoderTiny
from .bench_measure import (CEILING_SIZES, best_conv, best_conv_size, ceiling_probe, conv_flops, machine_info,
                            psnr)

DEFAULT_SOURCE = "taef2"  # the hub variant; benchmarks/bench.py passes the real weights in ../shared instead


def diffusers_twin(model: AutoencoderTiny) -> tuple[AutoencoderTiny, bool]:
    """The model itself when diffusers can express it, else the same network without the GroupNorm branch
    (same weights otherwise). Returns (model, stripped)."""
    if model.config.diffusers_compatible:
        return model, False
    if model.config.encoder_stem_channels or len(set(model.config.encoder_block_out_channels)) != 1 or \
            len(set(model.config.decoder_block_out_channels)) != 1:
        raise ValueError("diffusers cannot express this architecture (taesana-like); benchmark a diffusers-compatible "
                         "model (taesd, taesdxl, taesd3, taef1, taef2)")
    params = {**model.config.init_kwargs(), "use_midblock_gn": False}
    twin = AutoencoderTiny(**params, has_encoder=model.encoder is not None, has_decoder=model.decoder is not None)
    state = {k: v for k, v in model.state_dict().items() if ".pool." not in k}
    twin.load_state_dict(state, strict=True)
    return twin.eval(), True


def _to_diffusers(model: AutoencoderTiny) -> nn.Module:
    try:
        from diffusers import AutoencoderTiny as DiffusersTiny
    except ImportError:
        raise ImportError("the diffusers contestant needs diffusers: pip install 'tinyae[diffusers]' "
                          "(or leave it out with --only)") from None

    cfg = model.config.diffusers_kwargs()
    theirs = DiffusersTiny(**cfg)
    theirs.load_state_dict(model.state_dict(), strict=True)
    return theirs.eval()


def _photo(size: int, channels: int = 3, image: str | os.PathLike | None = None) -> torch.Tensor:
    """`image` (a photo file) resized to size x size in [-1, 1]; without one, a smooth pattern."""
    if image is not None and channels == 3:
        import numpy as np
        from PIL import Image

        rgb = np.asarray(Image.open(image).convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None] / 127.5 - 1
    gen = torch.Generator().manual_seed(0)
    small = torch.rand(1, channels, size // 16, size // 16, generator=gen)
    return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=True) * 2 - 1


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_bench(model: AutoencoderTiny, sizes: Sequence[int], repeats: int, warmup: int, device: str = "cpu",
              contestants: Sequence[str] | None = None, batch: int = 1, log: Callable[[str], None] = print,
              cold: bool = False, image: str | os.PathLike | None = None) -> dict[str, Any]:
    """Time every contestant; returns a JSON-serialisable dict (see `format_markdown`).

    Round robin: every round times each contestant's encode and decode once, so load changes hit all alike. Each
    timed call follows an untimed call of the same operation (warm caches and allocator, as in steady use), or
    with `cold` follows the other contestants' calls directly."""
    from ..engine.backends import load_backend
    from ..engine.calibration import int8_in_hardware
    from ..engine.openvino import bf16_available as openvino_bf16
    from ..engine.optimize import optimize

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    net, stripped = diffusers_twin(model)
    net = net.to(dev)
    half = torch.float16
    all_names = (["diffusers fp16", "tinyae fp16 eager", "tinyae optimized fp16", "tinyae optimized fp16 + compile"]
                 if cuda else
                 ["diffusers fp32", "tinyae fp32", "tinyae optimized fp32", "tinyae optimized", "onnxruntime fp32",
                  *(["openvino fp32"] if _has("openvino") else []),
                  *(["openvino bf16"] if _has("openvino") and openvino_bf16() else []),
                  *(["tinyae optimized int8"] if int8_in_hardware() else [])])
    # int8 (needs calibration images, see tinyae.engine.quant) only when asked for: --only ... "tinyae optimized int8"
    names = list(contestants) if contestants else [n for n in all_names if n != "tinyae optimized int8"]
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise ValueError(f"unknown contestants {unknown}; choose from {all_names}")
    import copy

    builders: dict[str, Callable[[], Any]] = {
        "diffusers fp32": lambda: _to_diffusers(net),
        "tinyae fp32": lambda: net,
        "tinyae optimized fp32": lambda: optimize(net, "fp32"),
        "tinyae optimized": lambda: optimize(net, "auto"),
        # int8 calibrated on 256² of the benchmark photo itself: its top-left crop and the whole photo downscaled
        # (a crop alone covers 1/16 of a 1024² photo, whose other colours then clip in the int8 full-resolution
        # stem; its PSNR is not a held-out figure; the held-out gate is tests/test_quant.py)
        "tinyae optimized int8": lambda: optimize(net, "int8", calibration=[
            images[:1, :, :256, :256].float(),
            F.interpolate(images[:1].float(), size=(256, 256), mode="area")]),
        "onnxruntime fp32": lambda: load_backend(net, "onnxruntime", threads=torch.get_num_threads()),
        "openvino fp32": lambda: load_backend(net, "openvino", precision="fp32", threads=torch.get_num_threads()),
        "openvino bf16": lambda: load_backend(net, "openvino", precision="bf16", threads=torch.get_num_threads()),
        "diffusers fp16": lambda: _to_diffusers(net).to(dev, half),
        "tinyae fp16 eager": lambda: copy.deepcopy(net).to(dev, half),
        "tinyae optimized fp16": lambda: optimize(net, "fp16"),
        "tinyae optimized fp16 + compile": lambda: optimize(net, "fp16", compile=True),
    }
    io_dtype = half if cuda else torch.float32
    info = machine_info()
    info["device"] = str(dev)
    results: dict[str, Any] = {"machine": info, "batch": batch, "repeats": repeats, "warmup": warmup, "cold": cold,
                               "model": {"stripped_groupnorm": stripped, "latent_channels": net.config.latent_channels},
                               "ceiling_gflops": {}, "ceiling_alone_gflops": {}, "ceiling_by_size": {}, "rows": []}
    ceilings = (("fp32", torch.float32), ("bf16", torch.bfloat16)) if not cuda else (("fp16", half),)
    probe_size = {}
    for name, dt in ceilings:  # alone, before the contestants: also picks the probe's size
        results["ceiling_alone_gflops"][name], probe_size[name] = best_conv_size(dt, dev, max(3, repeats))
        log(f"ceiling {name}: {results['ceiling_alone_gflops'][name]} GFLOP/s (64->64 3x3 conv, "
            f"{probe_size[name]}², alone)")
    f = net.spatial_scale_factor
    for size in sizes:
        images = _photo(size, image=image).repeat(batch, 1, 1, 1).to(dev, io_dtype)
        with torch.inference_mode():  # the reference: tinyae eager float32
            latents = net.encode(images.float()).latents.to(io_dtype)
            ref_images = net.decode(latents.float()).sample
        flops = {"encode": conv_flops(net, lambda: net.encode(images.to(net.dtype))),
                 "decode": conv_flops(net, lambda: net.decode(latents.to(net.dtype)))}
        if stripped and not cuda:  # the complete model (with its GroupNorm branch), optimized
            names_here = [*names, "tinyae optimized (full model)"]
            builders["tinyae optimized (full model)"] = lambda: optimize(model, "auto")
        else:
            names_here = list(names)
        objs = {name: builders[name]() for name in names_here}
        entries = []
        for name in names_here:
            for what in ("encode", "decode"):
                obj = objs[name]
                entries.append((name, what, obj, (lambda o=obj: o.encode(images).latents) if what == "encode"
                                else (lambda o=obj: o.decode(latents).sample)))
        # the ceiling probes run in the same round robin, so the percentages compare like with like
        for name, dt in ceilings:
            fn, probe_flops = ceiling_probe(dt, dev, probe_size[name], 8 if cuda else 1)
            entries.append(("ceiling", name, probe_flops, fn))
        # round robin: every repeat times each contestant once, so load changes hit all of them alike; the timed
        # call follows an untimed call of the same operation unless cold
        times: dict[tuple[str, str], list[float]] = {(n, w): [] for n, w, _, _ in entries}
        with torch.inference_mode():
            for _, _, _, fn in entries:
                for _ in range(warmup):
                    fn()
            for _ in range(repeats):
                for name, what, _, fn in entries:
                    if not cold:
                        fn()
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    times[(name, what)].append(time.perf_counter() - t0)
        results["ceiling_by_size"][str(size)] = {}
        for name, what, obj, fn in entries:
            t = statistics.median(times[(name, what)])
            if name == "ceiling":
                results["ceiling_by_size"][str(size)][what] = round(obj / t / 1e9, 1)
                log(f"{size}^2 ceiling {what}: {obj / t / 1e9:.1f} GFLOP/s (in the round robin)")
                continue
            row = {"contestant": name, "op": what, "size": size, "median_s": t,
                   "times_s": [round(v, 4) for v in times[(name, what)]], "gflops": flops[what] / t / 1e9,
                   "precision": getattr(obj, "precision", "fp16" if cuda else "fp32")}
            if "full model" not in name:  # fidelity against tinyae eager float32 on the same network
                with torch.inference_mode():
                    out = fn()
                    got = out if what == "decode" else net.decode(out.float()).sample
                    row["psnr_db"] = psnr(got, ref_images)
            results["rows"].append(row)
            log(f"{size}^2 {what:6s} {name:32s} {t * 1000:9.1f} ms  {row['gflops']:7.1f} GFLOP/s"
                + (f"  PSNR {row['psnr_db']:.1f} dB" if "psnr_db" in row else ""))
        del objs, entries
    for name, dt in ceilings:  # alone again after the contestants; the better of the two is kept for reference
        again = best_conv(dt, dev, max(3, repeats))
        results["ceiling_alone_gflops"][name] = max(results["ceiling_alone_gflops"][name], again)
        log(f"ceiling {name} (after, alone): {again} GFLOP/s")
        per_size = [v[name] for v in results["ceiling_by_size"].values()]
        results["ceiling_gflops"][name] = round(statistics.median(per_size), 1)
    if hasattr(os, "getloadavg"):
        info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    _derive(results)
    return results


def _derive(results: dict[str, Any]) -> None:
    """Add the ratio against diffusers and the percentage of the ceiling to each row."""
    base = {(r["op"], r["size"]): r["median_s"] for r in results["rows"] if r["contestant"].startswith("diffusers")}
    for r in results["rows"]:
        b = base.get((r["op"], r["size"]))
        r["speedup_vs_diffusers"] = b / r["median_s"] if b else None
        c = results["ceiling_by_size"].get(str(r["size"]), results["ceiling_gflops"]).get(r["precision"])
        r["pct_of_ceiling"] = 100 * r["gflops"] / c if c else None
        alone = results.get("ceiling_alone_gflops", {}).get(r["precision"])
        r["pct_of_ceiling_alone"] = 100 * r["gflops"] / alone if alone else None


def format_markdown(results: dict[str, Any]) -> str:
    """The results as a markdown section (machine, ceiling, one table)."""
    m = results["machine"]
    lines = [f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads; "
             f"flags: {', '.join(m['cpu_flags']) or 'none'}), torch {m['torch']}, diffusers {m.get('diffusers')}, "
             f"onnxruntime {m.get('onnxruntime')}, openvino {m.get('openvino')}"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "") + "."]
    if "load_average_start" in m:
        lines.append(f"Load average at start {m['load_average_start']}, at end {m.get('load_average_end')}.")
    w = results["warmup"]
    lines.append(f"Batch {results['batch']}; median of {results['repeats']} runs after {w} warm-up "
                 f"run{'' if w == 1 else 's'}; round robin, each timed call "
                 + ("right after the other contestants' (--cold)." if results.get("cold") else
                    "right after an untimed call of the same operation (steady state)."))
    if results["model"]["stripped_groupnorm"]:
        lines.append("Network: taef2's weights without the GroupNorm branch (diffusers cannot express it), the same "
                     "for every contestant; \"(full model)\" rows run the complete taef2.")
    sizes = " and ".join(f"{s}²" for s in CEILING_SIZES)
    by_size = "; ".join(f"{size}²: " + ", ".join(f"{k} {v:.0f}" for k, v in vals.items())
                        for size, vals in results.get("ceiling_by_size", {}).items())
    alone = ", ".join(f"{k} {v:.0f}" for k, v in results.get("ceiling_alone_gflops", {}).items())
    lines += [f"Ceiling (64->64 3x3 convolution, channels_last, the best of {sizes}): timed in the same round robin "
              f"as the contestants, median GFLOP/s: {by_size}; alone before/after the contestants, the better "
              f"reading: {alone} GFLOP/s. \"% of ceiling\": against the round-robin ceiling of the same size / "
              "against the better lone reading.",
              "",
              "| size | op | contestant | precision | median ms | x diffusers | GFLOP/s | % of ceiling | PSNR dB |",
              "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        sp = f"{r['speedup_vs_diffusers']:.2f}" if r.get("speedup_vs_diffusers") else "-"
        pct = f"{r['pct_of_ceiling']:.0f}%" if r.get("pct_of_ceiling") is not None else "-"
        if r.get("pct_of_ceiling_alone") is not None:
            pct += f" / {r['pct_of_ceiling_alone']:.0f}%"
        ps = r.get("psnr_db")
        ps = "-" if ps is None else ("exact" if ps == float("inf") else f"{ps:.1f}")
        lines.append(f"| {r['size']}² | {r['op']} | {r['contestant']} | {r['precision']} | {r['median_s'] * 1000:.0f} "
                     f"| {sp} | {r['gflops']:.0f} | {pct} | {ps} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`tinyae bench [--model SOURCE..] [--sizes 512 1024] [--repeats N] [--warmup N] [--quick] [--json PATH]`."""
    parser = argparse.ArgumentParser(prog="tinyae bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", metavar="SOURCE",
                        help=f"variant, folder or file(s) (default {DEFAULT_SOURCE!r})")
    parser.add_argument("--image", metavar="PHOTO", help="the test image (resized); default: a smooth pattern")
    parser.add_argument("--random", metavar="VARIANT",
                        help="random weights with a variant's architecture (speed does not depend on the weights)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024], help="image sizes in pixels")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch/onnxruntime threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", nargs="+", metavar="CONTESTANT", help="run only these contestants")
    parser.add_argument("--quick", action="store_true", help="256^2 only, 3 runs after 1 warm-up (a smoke test)")
    parser.add_argument("--cold", action="store_true",
                        help="time each call right after the other contestants' (default: after an untimed call of "
                             "the same operation)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the markdown table to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.warmup = [256], 3, 1
    bad = [s for s in args.sizes if s < 64]
    if bad or args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("sizes must be >= 64, repeats >= 1, warmup >= 0, batch >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("tinyae bench: error: --device cuda but CUDA is not available on this machine", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # the same for every contestant
    source: Any = DEFAULT_SOURCE if not args.model else (
        args.model[0] if len(args.model) == 1 else tuple(args.model))
    try:
        if args.random:
            from ..nets.variants import variant_config

            torch.manual_seed(0)
            model = AutoencoderTiny(**variant_config(args.random)).eval()
        else:
            model = AutoencoderTiny.from_pretrained(source)
        f = model.spatial_scale_factor
        sizes = [s // f * f for s in args.sizes]
        results = run_bench(model, sizes, args.repeats, args.warmup, args.device, args.only, args.batch,
                            cold=args.cold, image=args.image)
    except (ValueError, ImportError, KeyError) as e:
        print(f"tinyae bench: error: {e}", file=sys.stderr)
        return 2
    text = format_markdown(results)
    print()
    print(text)
    from ..io.files import atomic_write

    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1), encoding="utf-8"))
    if args.markdown:
        atomic_write(args.markdown, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
