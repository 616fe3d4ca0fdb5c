"""python -m sdedit: the same as the `sdedit` command."""

import sys

from .cli import main

sys.exit(main())
