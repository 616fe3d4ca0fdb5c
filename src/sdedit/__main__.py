"""python -m sdedit: the same as the `sdedit` command."""

import sys

from .frontends.cli import main

sys.exit(main())
