"""`tinyae export-onnx`: export encoder and decoder to ONNX, then check them in onnxruntime against torch."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..autoencoder import AutoencoderTiny
from ..engine.onnx import MIN_OPSET, export_onnx
from ..engine.onnx_backend import ONNX_TOLERANCE, check_onnx
from ..io.files import WeightsError


def main(argv: Sequence[str] | None = None) -> int:
    """`tinyae export-onnx --model SOURCE [SOURCE2] -o DIR [--opset N] [--overwrite] [--no-check]`.

    Exports, then runs both graphs in onnxruntime on a test input and prints the max abs difference against
    torch float32 (fails with exit status 1 above 1e-4). Returns the exit status.
    """
    parser = argparse.ArgumentParser(prog="tinyae export-onnx",
                                     description="Export encoder and decoder to ONNX (dynamic height/width).")
    parser.add_argument("--model", nargs="+", required=True, metavar="SOURCE",
                        help="variant name, folder, weights file, or an encoder and a decoder file")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in the output folder")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = parser.parse_args(argv)
    if len(args.model) > 2:
        parser.error("--model takes one source, or an encoder file and a decoder file")
    source = args.model[0] if len(args.model) == 1 else tuple(args.model)
    try:
        model = AutoencoderTiny.from_pretrained(source)
        paths = export_onnx(model, args.output, opset=args.opset, overwrite=args.overwrite)
    except (ValueError, FileExistsError, ImportError, OSError) as e:  # WeightsError is a ValueError
        print(f"tinyae export-onnx: error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, WeightsError) else 1
    for p in paths:
        print(f"wrote {p}")
    if args.no_check:
        return 0
    diffs = check_onnx(model, args.output)
    ok = all(d <= ONNX_TOLERANCE for d in diffs.values())
    for part, d in diffs.items():
        print(f"onnxruntime vs torch float32, {part}: max abs difference {d:.2e} "
              f"({'ok' if d <= ONNX_TOLERANCE else 'FAILED'}, tolerance {ONNX_TOLERANCE:.0e})")
    return 0 if ok else 1

export_onnx_main = main  # its name in tinyae.runtime
