"""Compatibility: `tinyae.bench` is now `tinyae.cli.bench` (the harness) and `tinyae.cli.bench_measure` (timing,
the convolution ceiling, machine facts); `python -m tinyae.bench` still runs it."""

import sys

from ._compat import reexport
from .cli import bench as _bench, bench_measure as _measure

reexport(globals(), _measure)
reexport(globals(), _bench)
if __name__ == "__main__":
    sys.exit(_bench.main())
