"""The `tinyae` command line: encode, decode, roundtrip, convert, info (one module each, over the shared job runner
in `runner.py` and the model loading in `models.py`), and the forwarded commands (bench, export-onnx, train, eval,
encode-dataset, decode-dataset). A thin layer over the Python API. See docs/cli.md.

Exit status: 0 when everything succeeded, 1 when anything failed (each failure is one line on stderr), 2 for a
usage error, 130 when interrupted. No traceback unless --debug.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Sequence

from .common import (  # noqa: F401 (re-exported: the forwarded commands and users import them from here)
    DEFAULT_MAX_PIXELS, DEFAULT_MODEL, IMAGE_FORMATS, LATENT_FORMATS, MODEL_ENV, PIL_FORMATS, CliError, _kb, _on_sigterm,
    _one_line, _positive, run_guarded)
from .convert import cmd_convert
from .decode import cmd_decode
from .encode import cmd_encode
from .info import cmd_info
from .models import (  # noqa: F401
    PRECISION_CHOICES, Runner, _optimized, _resolve_device, _resolve_dtype, default_model, identify_variant, load_model,
    model_fingerprint, model_source, prepare_runner, resolve_files)
from .roundtrip import cmd_roundtrip
from .runner import (  # noqa: F401
    Job, Reporter, check_output_folder, collect, finish, handle_existing, plan_outputs, save_image)

FORWARDED = {"bench": ("tinyae.cli.bench", "main"), "export-onnx": ("tinyae.cli.export_onnx", "main"),
             "encode-dataset": ("tinyae.dataset.cli", "main"), "decode-dataset": ("tinyae.dataset.cli", "decode_main"),
             "train": ("tinyae.train.cli", "main"), "eval": ("tinyae.train.evaluate", "main")}


def forward(command: str, argv: list[str]) -> int:
    """`tinyae bench ...` / `tinyae export-onnx ...`: hand the rest of argv to the module that implements it."""
    import importlib

    module, func = FORWARDED[command]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            print(f"tinyae: error: `tinyae {command}` needs {module}, which this installation lacks", file=sys.stderr)
            return 1
        raise
    if not hasattr(mod, func):
        print(f"tinyae: error: `tinyae {command}` needs {module}.{func}, which this installation lacks",
              file=sys.stderr)
        return 1
    return int(getattr(mod, func)(argv) or 0)


# ---------------------------------------------------------------------------------------------- parser
_EPILOGS = {
    "encode": """examples:
  tinyae encode photos/ -o latents/                       one .safetensors per image (float latents)
  tinyae encode a.jpg b.png -o latents/ --format png      8-bit latent PNGs (a.latent.png, b.latent.png)
  tinyae encode photo.jpg -o photo.safetensors --model taesdxl
  tinyae encode photos/ -o latents/ --resume              skip the outputs a previous run completed
  tinyae encode photos/ -o latents/ --model enc.pth,dec.pth""",
    "decode": """examples:
  tinyae decode latents/ -o decoded/                      the model the files record (else $TINYAE_MODEL, taef2)
  tinyae decode a.safetensors -o a.png
  tinyae decode latents/ -o decoded/ --format webp --quality 90""",
    "roundtrip": """examples:
  tinyae roundtrip photos/                                PSNR, SSIM, bits per pixel of the 8-bit latent PNG
  tinyae roundtrip a.png b.png -o compare/ --json         + side-by-side and decoded images, JSON report""",
    "convert": """examples:
  tinyae convert taef2_encoder.pth,taef2_decoder.pth out/taef2-diffusers --to diffusers
  tinyae convert out/taef2-diffusers out/original --to original         taef2_encoder/decoder.safetensors
  tinyae convert taesd comfy/taesd.safetensors --to comfyui               ComfyUI's vae_approx file
  tinyae convert weights/ model.safetensors --to safetensors --dtype float16""",
    "info": """examples:
  tinyae info taef2_encoder.pth,taef2_decoder.pth
  tinyae info out/taef2-diffusers --json
  tinyae info latents/astronaut.safetensors               a latent file: shape, variant, original size""",
}


_MODEL_HELP = (f"variant name (taesd, taesdxl, taesd3, taef1, taef2, taesana), hub id, folder, weights file, or "
               f"ENCODER_FILE,DECODER_FILE (default: ${MODEL_ENV}, else {DEFAULT_MODEL})")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document (machine-readable) on stdout")
    common.add_argument("--debug", action="store_true", help="show tracebacks")

    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument("--force", action="store_true", help="overwrite existing outputs")
    batch.add_argument("--resume", action="store_true",
                       help="skip outputs that exist (they are complete: every output is written atomically)")

    compute = argparse.ArgumentParser(add_help=False)
    compute.add_argument("--model", "-m", help=_MODEL_HELP)
    compute.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, "
                         "mps (default: auto)")
    compute.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                         help="model dtype (auto: float16 on cuda, float32 elsewhere)")
    compute.add_argument("--batch-size", type=_positive, default=4, help="images per model call (default 4)")
    compute.add_argument("--tile", action="store_true", help="encode/decode in tiles (model.enable_tiling())")
    compute.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                         help="what runs the model (default torch)")
    compute.add_argument("--precision", default="auto", choices=list(PRECISION_CHOICES),
                         help="auto (default: the fastest precision that keeps >= 40 dB PSNR against fp32 on real "
                              "photos on this device; `tinyae info` says which), fp32 / bf16 / fp16 (optimize()), "
                              "or exact (the eager float32 network, diffusers' exact function)")
    compute.add_argument("--max-pixels", type=_positive, default=DEFAULT_MAX_PIXELS,
                         help=f"refuse images above this many pixels before reading them (default "
                              f"{DEFAULT_MAX_PIXELS:,}); --stream has no limit")

    p = argparse.ArgumentParser(prog="tinyae", description="Tiny AutoEncoders (the TAESD family): encode images "
                                "to diffusion latents and back, measure, convert weights.",
                                epilog="`tinyae COMMAND --help` shows each command's options and examples.")
    from .._version import __version__

    p.add_argument("--version", action="version", version=f"tinyae {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    s = sub.add_parser("encode", parents=[common, batch, compute], formatter_class=raw, epilog=_EPILOGS["encode"],
                       help="images -> latent files", description="Encode images (files or folders) to latents.")
    s.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (or a file for one input)")
    s.add_argument("--format", choices=list(LATENT_FORMATS), default="safetensors",
                   help="safetensors (float latents, default) or png (8-bit latent PNG)")
    s.add_argument("--stream", action="store_true",
                   help="read each PNG in row bands (memory flat in image size; RGB PNGs whose sides are multiples "
                        "of the scale factor)")
    s.set_defaults(run=cmd_encode)

    s = sub.add_parser("decode", parents=[common, batch, compute], formatter_class=raw, epilog=_EPILOGS["decode"],
                       help="latent files -> images", description="Decode latent files (or folders of them).")
    s.add_argument("inputs", nargs="+", metavar="LATENTS_OR_DIRS")
    s.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (or a file for one input)")
    s.add_argument("--format", choices=list(IMAGE_FORMATS), default="png", help="image format (default png)")
    s.add_argument("--quality", type=_positive, default=95, help="jpg/webp quality 1-100 (default 95)")
    s.add_argument("--stream", action="store_true",
                   help="write each PNG row band by row band (memory flat in image size; png, RGB, no alpha)")
    s.add_argument("--frames", action="store_true",
                   help="video latents: write each video as a folder of PNG frames (OUT/NAME/000000.png)")
    s.set_defaults(run=cmd_decode)

    s = sub.add_parser("roundtrip", parents=[common, batch, compute], formatter_class=raw,
                       epilog=_EPILOGS["roundtrip"], help="measure encode+decode quality on images",
                       description="Encode and decode images; report PSNR and SSIM against the source (float "
                       "latents), and the 8-bit latent PNG's size (bits per source pixel) and PSNR.")
    s.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS")
    s.add_argument("-o", "--output", metavar="OUT", help="write <name>.compare.png (source | decoded) and "
                   "<name>.decoded.png here")
    s.set_defaults(run=cmd_roundtrip)

    s = sub.add_parser("convert", parents=[common], formatter_class=raw, epilog=_EPILOGS["convert"],
                       help="convert weights between formats", description="Convert weights to another layout.")
    s.add_argument("src", metavar="SRC", help=_MODEL_HELP.split(" (default")[0])
    s.add_argument("dst", metavar="DST", help="folder (diffusers, original) or .safetensors file (comfyui, "
                   "safetensors; a folder gets <name>.safetensors)")
    s.add_argument("--to", required=True, choices=["diffusers", "original", "comfyui", "safetensors"])
    s.add_argument("--name", help="file name base for original/comfyui/safetensors (default: the variant, or tae)")
    s.add_argument("--pth", action="store_true", help="original layout as .pth instead of .safetensors")
    s.add_argument("--dtype", default="keep", choices=["keep", "float32", "float16", "bfloat16"],
                   help="dtype of the written tensors (default: keep the source's)")
    s.add_argument("--force", action="store_true", help="overwrite existing files")
    s.set_defaults(run=cmd_convert)

    s = sub.add_parser("info", parents=[common], formatter_class=raw, epilog=_EPILOGS["info"],
                       help="describe weights (or a latent file)",
                       description="Variant, latent channels, scale factor, parameters, dtype, sha256, formats.")
    s.add_argument("src", metavar="SRC", help=_MODEL_HELP.split(" (default")[0] + ", or a latent file")
    s.set_defaults(run=cmd_info)

    sub.add_parser("bench", help="benchmarks (tinyae bench --help)", add_help=False)
    sub.add_parser("export-onnx", help="export to ONNX (tinyae export-onnx --help)", add_help=False)
    sub.add_parser("encode-dataset", help="image collection -> latent shards (resumable; --help)", add_help=False)
    sub.add_parser("decode-dataset", help="latent shards -> images, for spot checks (--help)", add_help=False)
    sub.add_parser("train", help="distil a TAE from a teacher VAE (tinyae train --help)", add_help=False)
    sub.add_parser("eval", help="PSNR/SSIM of a TAE on a folder (tinyae eval --help)", add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in FORWARDED:
        return forward(args_list[0], args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    try:
        return run_guarded(lambda: args.run(args), args.debug,
                           "outputs written so far are complete (rerun with --resume)")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
