"""The one safe writer: every file the package writes goes through `write_file`.

Guarantees: a file appears whole or not at all (temporary file in the same folder, fsync,
then one link or rename); an existing name is never replaced unless asked, and a name that
is taken in any way (a file, a folder, a device, a dangling symlink) counts as taken; the
destination is never followed through a symlink, and a folder or device is never replaced;
the search for a free name is bounded; the temporary file is removed on any failure or
signal that unwinds the stack.  Output folders are probed before any work is done.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import InputError, SdeditError

MAX_FREE_NAMES = 10_000  # 'name-1' ... 'name-9999', then give up with an error
_ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EIO, errno.EDQUOT}  # the machine's fault (exit 1), not the user's


class WriteError(SdeditError):
    """The disk failed us (full, I/O error): exit 1, nothing half-written left behind."""

    exit_code = 1


def printable(text: object) -> str:
    """One line, safe for a terminal: control characters and undecodable file-name bytes shown escaped."""
    out = []
    for ch in str(text):
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8, kept by the file-system codec
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or 0x7F <= o < 0xA0 or 0xD800 <= o <= 0xDFFF:
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _os_error(e: OSError, what: str) -> SdeditError:
    """An OSError as a one-line error: exit 1 for the machine's failures, 2 for the user's paths."""
    message = f"{what}: {e.strerror or e}"
    return WriteError(message) if e.errno in _ENVIRONMENT_ERRORS else InputError(message)


def _taken_by_other_kind(path: Path) -> str | None:
    """'a folder', 'a device', ... when path exists as something other than a regular file or a symlink."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _os_error(e, f"cannot inspect {printable(path)}") from None
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return None
    return "a folder" if stat.S_ISDIR(mode) else "a device or special file"


def refuse_non_folder(folder: Path) -> None:
    """InputError if something other than a folder (a file, a device, a dangling link) has the output folder's name."""
    if os.path.lexists(folder) and not folder.is_dir():
        raise InputError(f"output folder {printable(folder)} exists and is not a folder")


# write_file's temporary: '.NAME.sdedit-PID.XXXXXXXX.tmp' (mkstemp's 8 characters); older versions wrote no PID
TEMPORARY = re.compile(r"\.(?P<name>.+?)\.(?:sdedit-(?P<pid>[0-9]{1,7})\.)?[a-z0-9_]{8}\.tmp")  # fullmatch
TEMPORARY_MIN_AGE_S = 600  # a writer's temporary is seconds old; one untouched this long is no live writer's


def _make_temporary(path: Path) -> tuple[int, str]:
    """write_file's temporary beside path, named as TEMPORARY says (its writer's pid inside)."""
    return tempfile.mkstemp(prefix=f".{path.name}.sdedit-{os.getpid()}.", suffix=".tmp", dir=path.parent)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts: never touch what may be live)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's, or no process id at all: never judged gone
    return True


def remove_dead_temporaries(folder: Path) -> int:
    """Delete the temporary files write_file left when its process was killed (kill -9, power loss): regular files
    of this user named as write_file names them, whose writing process is gone (not seen here) and which have
    not changed for TEMPORARY_MIN_AGE_S (a writer in another PID namespace or machine sharing the folder); returns
    how many."""
    n = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        m = TEMPORARY.fullmatch(entry.name)
        pid = None if m is None or m.group("pid") is None else int(m.group("pid"))
        if pid is None or pid == os.getpid() or process_alive(pid):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() \
                    and time.time() - info.st_mtime > TEMPORARY_MIN_AGE_S:
                os.unlink(entry.path)
                n += 1
        except FileNotFoundError:
            continue  # another run removed it first
    return n


def check_output_folder(folder: Path) -> Path:
    """Create the folder (and parents) and prove it takes files, before any work is spent; InputError if not.
    Temporaries of killed writers there are removed (remove_dead_temporaries)."""
    refuse_non_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sdedit-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        remove_dead_temporaries(folder)
    except OSError as e:
        raise _os_error(e, f"cannot write in the output folder {printable(folder)}") from None
    return folder


def check_output_file(path: Path) -> Path:
    """Prove before any work that write_file can write path: its folder takes files, the name is not a folder or
    device, and the temporary file's longer name fits the file system; InputError if not."""
    check_output_folder(path.parent)
    kind = _taken_by_other_kind(path)
    if kind is not None:
        raise InputError(f"{printable(path)} is {kind}; name a file to write")
    try:
        fd, probe = _make_temporary(path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise _os_error(e, f"cannot write {printable(path)}") from None
    return path


def _candidates(path: Path) -> list[Path]:
    return [path] + [path.with_name(f"{path.stem}-{n}{path.suffix}") for n in range(1, MAX_FREE_NAMES)]


def free_stem(stem: Path, suffixes: tuple[str, ...]) -> Path:
    """The first of stem, stem-1, ... under which no file with any of the suffixes exists (a set written together)."""
    for candidate in _candidates(stem):
        if not any(os.path.lexists(candidate.with_name(candidate.name + x)) for x in suffixes):
            return candidate
    raise InputError(f"no free name for {printable(stem)} after {MAX_FREE_NAMES} tries; choose another folder")


def open_regular(path: Path, flags: int) -> int:
    """A descriptor of the regular file at path, opened without following a symlink there and without blocking on a
    FIFO; InputError for a link, folder, FIFO or device (for files appended to in place, such as a manifest)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{printable(path)} is a symbolic link: refusing to read or write through it") from None
        if e.errno in (errno.ENXIO, errno.EISDIR):
            raise InputError(f"{printable(path)} is not a regular file") from None
        raise _os_error(e, f"cannot open {printable(path)}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{printable(path)} is not a regular file")
    return fd


def write_file(path: str | os.PathLike[str], write: Callable[[BinaryIO], object], *,
               overwrite: bool = False) -> Path:
    """Write through a temporary file and publish it whole; a taken name gets '-1', '-2', ... unless overwrite.

    With overwrite, an existing regular file or symlink at path is replaced (the link itself,
    never its target); a folder or device at path is an error either way.  Returns the path written.
    """
    path = Path(path)
    kind = _taken_by_other_kind(path)
    if kind is not None:
        raise InputError(f"{printable(path)} is {kind}; name a file to write")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = _make_temporary(path)
    except OSError as e:
        raise _os_error(e, f"cannot write in {printable(folder)}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; published files get the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)  # rename never follows a symlink at the destination
            return path
        for candidate in _candidates(path):
            if os.path.lexists(candidate):  # a dangling symlink is taken too
                continue
            try:
                os.link(tmp, candidate)  # fails if the name appeared meanwhile: no clobbering, even under a race
            except FileExistsError:
                continue
            os.unlink(tmp)
            return candidate
        raise InputError(f"no free name for {printable(path)} after {MAX_FREE_NAMES} tries; choose another name")
    except OSError as e:
        raise _os_error(e, f"cannot write {printable(path)}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
