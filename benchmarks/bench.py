"""Encode/decode speed side by side (diffusers, tinyae eager/optimized, onnxruntime): see `tinyae bench --help`.

    PYTHONPATH=src python benchmarks/bench.py            # 512^2 and 1024^2, real taef2 weights from ../shared
    PYTHONPATH=src python benchmarks/bench.py --quick    # a 256^2 smoke run
"""

import sys

from tinyae.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
