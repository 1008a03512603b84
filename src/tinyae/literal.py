"""Compatibility: `tinyae.literal` is `tinyae.nets.literal` (the same module object, so patching either patches both);
`python -m tinyae.literal` still runs it."""

import sys

from .nets import literal as _module

if __name__ == "__main__":
    sys.exit(_module.main())
sys.modules[__name__] = _module
