"""What every command-line front-end shares: one-line usage errors, and errors turned into exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import InputError, SdeditError
from ..files import printable


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see `{self.prog} --help`)")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every `finally` runs (temporary files and folders go)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def quiet_libraries() -> None:
    """-q: the libraries' own progress bars and advisory logs off (transformers' "Loading weights" bars, diffusers'
    and huggingface_hub's), set before they are imported (they read these once) and, if already imported, now."""
    os.environ.update(HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error",
                      TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def hide_unactionable_warnings() -> None:
    """Warnings a user cannot act on stay hidden, with or without -q."""
    # torch's note that bf16 autocast cannot use its fused rms_norm (FLUX, SD3): about speed, nothing to act on
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight", category=UserWarning)
    # diffusers' own FLUX ControlNet class builds a FluxPosEmbed it has deprecated: a note to diffusers, not to a user
    warnings.filterwarnings("ignore", message=".*FluxPosEmbed.*deprecated", category=FutureWarning)


@contextlib.contextmanager
def quiet_stdout(quiet: bool) -> Iterator[None]:
    """-q: nothing on standard output (the saved paths, summaries); errors and warnings still go to stderr."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def fit_for(model: Any, fit: str | None) -> str:
    """--fit's value: it acts on square (pixel) models only; a latent model given one refuses it."""
    if fit is not None and not model.square:
        raise InputError(f"--fit applies to square (pixel) models; {model.name} takes the whole input: leave it out")
    return fit or "crop"


def say(text: object, *, err: bool = False) -> None:
    """Print one line safely: file names with control characters or undecodable bytes are shown escaped."""
    print(printable(text), file=sys.stderr if err else sys.stdout, flush=True)


class Writer:
    """Saves files on a few threads while the next batch samples (fsync waits overlap), in order, at most `pending`
    in flight so memory stays bounded; leaving the block waits for every file and re-raises the first error."""

    def __init__(self, pending: int = 8):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sdedit-save")
        self.queue: list[Any] = []
        self.pending = pending

    def __enter__(self) -> Writer:
        return self

    def submit(self, save: Callable[[], object]) -> None:
        """Queue one save; print each saved path, in submission order."""
        self.queue.append(self.pool.submit(save))
        while len(self.queue) > self.pending or (self.queue and self.queue[0].done()):
            error = self.queue[0].exception()
            if error is not None:
                raise error  # stop sampling; leaving the block still reports the saves that were written
            say(self.queue.pop(0).result())

    def __exit__(self, *exc: object) -> None:
        """Wait for every save and print each saved path, also when one failed (a full disk, say): the files that
        were written are reported; then the first error is raised (saves not started after a failure are dropped)."""
        failing = exc[0] is not None
        if failing:
            self.pool.shutdown(wait=True, cancel_futures=True)
        error: BaseException | None = None
        try:
            for future in self.queue:
                if future.cancelled():
                    continue
                e = future.exception()
                if e is None:
                    say(future.result())
                elif error is None:
                    error = e
        finally:
            self.queue.clear()
            self.pool.shutdown(wait=True)
        if error is not None and not failing:
            raise error


def one_line(e: BaseException) -> str:
    """An error message on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(e).split())


def run_guarded(body: Callable[[], int], prog: str) -> int:
    """Run a command body, turning errors into one line on stderr and an exit code (SDEDIT_DEBUG=1: traceback).

    SIGTERM unwinds like Ctrl-C (exit 143), so nothing half-written or temporary is left behind.
    """
    previous = signal.signal(signal.SIGTERM, _raise_terminated) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        return body()
    except SdeditError as e:
        if os.environ.get("SDEDIT_DEBUG"):
            traceback.print_exc()
        say(f"{prog}: error: {one_line(e)}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        say(f"{prog}: interrupted", err=True)
        return 130
    except BrokenPipeError:  # the reader went away (`sdedit models | head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Terminated:
        say(f"{prog}: terminated", err=True)
        return 143
    except Exception as e:  # reported, not swallowed: one line and exit 1
        if os.environ.get("SDEDIT_DEBUG"):
            traceback.print_exc()
        say(f"{prog}: error: {type(e).__name__}: {one_line(e)} (set SDEDIT_DEBUG=1 for a traceback)", err=True)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
