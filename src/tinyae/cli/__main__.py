"""`python -m tinyae.cli`."""

import sys

from . import main

sys.exit(main())
