"""What every command-line front-end shares: one-line usage errors, and errors turned into exit codes."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

from ..errors import InputError, SdeditError


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see `{self.prog} --help`)")


def run_guarded(body: Callable[[], int], prog: str) -> int:
    """Run a command body, turning errors into one line on stderr and an exit code (SDEDIT_DEBUG=1: traceback)."""
    try:
        return body()
    except SdeditError as e:
        if os.environ.get("SDEDIT_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # reported, not swallowed: one line and exit 1
        if os.environ.get("SDEDIT_DEBUG"):
            traceback.print_exc()
        print(f"{prog}: error: {type(e).__name__}: {e} (set SDEDIT_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
