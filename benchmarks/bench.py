"""Encode/decode speed side by side (diffusers, tinyae eager/optimized, onnxruntime, OpenVINO): `tinyae bench --help`.

    PYTHONPATH=src python benchmarks/bench.py            # 512^2 and 1024^2, real taef2 weights and photo from ../shared
    PYTHONPATH=src python benchmarks/bench.py --quick    # a 256^2 smoke run

This script (not the installed package) knows where the repository's shared material lives: it adds
`--model` (the real TAEF2 pair) and `--image` (astronaut.png) from ../shared unless given.
"""

import sys
from pathlib import Path

from tinyae.cli.bench import main

SHARED = Path(__file__).resolve().parents[2] / "shared"

if __name__ == "__main__":
    argv = sys.argv[1:]
    pair = [str(SHARED / "weights" / f) for f in ("taef2_encoder.pth", "taef2_decoder.pth")]
    if "--model" not in argv and "--random" not in argv and all(Path(p).is_file() for p in pair):
        argv += ["--model", *pair]
    if "--image" not in argv and (SHARED / "images" / "astronaut.png").is_file():
        argv += ["--image", str(SHARED / "images" / "astronaut.png")]
    sys.exit(main(argv))
