"""Compatibility: `tinyae.bench` is `tinyae.cli.bench` (the same module object, so patching either patches both);
`python -m tinyae.bench` still runs it."""

import sys

from .cli import bench as _module

if __name__ == "__main__":
    sys.exit(_module.main())
sys.modules[__name__] = _module
