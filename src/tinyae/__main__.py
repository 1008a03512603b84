"""`python -m tinyae ...`: the same as the `tinyae` command."""

import sys

from .cli import main

sys.exit(main())
