"""The released SDEdit command line, kept working: python main.py --config church.yml --sample --npy_name NAME --t 500 --ni."""

import sys

from sdedit.frontends.released_cli import main

if __name__ == "__main__":
    sys.exit(main())
