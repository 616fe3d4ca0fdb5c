"""The HTTP guards of `sdedit ui` as plain ASGI (no Gradio): a cap on request bodies, a brake on failed logins,
and the server's own temporary folder (those of servers that died are removed at the next start)."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..files import printable, process_alive, write_file

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

FOLDER_PREFIX = "sdedit-ui-"  # the server's temporary folder: uploads and results
OWNER_FILE = "server.pid"  # in that folder: "PID START" of the process that owns it
UPLOAD_ROUTES = ("/upload", "/component_server")  # where files arrive (Gradio's uploads, the image editor's blobs)


async def _answer(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A whole plain-text response."""
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class _Oversized(Exception):
    """A streamed body passed its cap."""


class BodyCap:
    """Refuse request bodies over a cap with 413: a declared Content-Length before any of the body is read, a
    streamed body (no length) as soon as what arrived passes the cap. Upload routes get their own, larger cap."""

    def __init__(self, app: App, *, cap: int, upload_cap: int) -> None:
        self.app = app
        self.cap = cap  # settings, prompts, login forms: JSON or a form of a few KB
        self.upload_cap = upload_cap  # one request of files

    def limit(self, path: str) -> int:
        """The cap of one route."""
        return self.upload_cap if path.rstrip("/").endswith(UPLOAD_ROUTES) else self.cap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cap = self.limit(scope["path"])
        refusal = f"request body over {cap:,} bytes: refused"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _answer(send, 400, "bad Content-Length")
            if int(declared) > cap:
                return await _answer(send, 413, refusal)
            return await self.app(scope, receive, send)  # the server stops reading at the declared length
        seen = 0
        over = started = False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > cap:
                over = True
                raise _Oversized(refusal)
            return message

        async def unless_over(message: Message) -> None:
            nonlocal started
            if over:
                return  # the app's own answer to a body it could not finish reading: ours replaces it
            started = True
            await send(message)

        try:
            await self.app(scope, counted, unless_over)
        except Exception:
            if not over:
                raise
            # the app saw _Oversized (perhaps wrapped by its framework): the 413 below is the answer
        if over and not started:
            await _answer(send, 413, refusal)


class LoginBrake:
    """Per client address, at most `attempts` logins in `window` seconds that did not succeed; more get 429.

    An attempt counts from the moment it arrives (so a burst sent at once is braked too) and is forgiven
    when it succeeds. Memory is bounded: at most `max_clients` addresses are remembered."""

    def __init__(self, app: App, *, attempts: int = 5, window: float = 60.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.attempts = attempts
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self.failures: dict[str, deque[float]] = {}  # client address -> times of its attempts not yet forgiven

    def _recent(self, client: str, now: float) -> deque[float]:
        """The client's attempts within the window, its record moved to the newest place."""
        times = self.failures.pop(client, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        self.failures[client] = times
        return times

    def _forget_old(self, now: float) -> None:
        """Drop addresses with no attempt in the window, then the least recent ones past max_clients."""
        for client in [c for c, t in self.failures.items() if not t or t[-1] <= now - self.window]:
            del self.failures[client]
        while len(self.failures) > self.max_clients:
            del self.failures[next(iter(self.failures))]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith("/login"):
            return await self.app(scope, receive, send)
        client = scope["client"][0] if scope.get("client") else ""
        now = self.clock()
        times = self._recent(client, now)
        if len(times) >= self.attempts:
            wait = max(1, int(times[0] + self.window - now + 1))
            return await _answer(send, 429, f"too many failed logins from this address: try again in {wait} s",
                                 [(b"retry-after", str(wait).encode())])
        times.append(now)
        self._forget_old(now)
        status = 0

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            if 200 <= status < 300 and client in self.failures:
                self.failures[client].clear()  # a good password forgives this address's earlier attempts


def _start_time(pid: int) -> str:
    """When a process started (clock ticks since boot, from /proc), to tell it from a later one given the same
    pid; '' where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read(4096).rsplit(b")", 1)[-1].split()
        return fields[19].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return ""


def _alive(pid: int, start: str) -> bool:
    """Whether the process that wrote an owner file still runs (a pid owned by another user counts as running)."""
    return process_alive(pid) and (not start or _start_time(pid) in ("", start))


def _owner(folder: Path) -> tuple[int, str] | None:
    """(pid, start) from a folder's owner file; None when it has no regular file that reads as one."""
    try:
        fd = os.open(folder / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # no owner file (or a link there): not a folder this rule may judge
    with os.fdopen(fd, "rb") as f:
        words = f.read(64).split() if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else []
    if not words or not words[0].isdigit():
        return None
    return int(words[0]), words[1].decode("ascii", "replace") if len(words) > 1 else ""


def remove_stale_folders(parent: Path) -> list[Path]:
    """Remove this user's server folders under parent whose owning process is gone; the folders removed.

    A folder is left alone unless it is a real folder (not a link), belongs to this user, and names in its
    owner file a process that no longer runs: a folder without that file may be another server's, starting."""
    removed = []
    for folder in sorted(parent.glob(FOLDER_PREFIX + "*")):
        try:
            st = folder.lstat()
        except FileNotFoundError:
            continue  # removed meanwhile
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        owner = _owner(folder)
        if owner is None or _alive(*owner):
            continue
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            continue  # another starting server removed it first
        except OSError as e:
            print(f"sdedit ui: cannot remove the stale folder {printable(folder)} ({e.strerror})", file=sys.stderr)
            continue
        removed.append(folder)
    return removed


@contextmanager
def server_folder(parent: Path | None = None) -> Iterator[Path]:
    """The server's own temporary folder, naming this process as its owner; removed on exit. Folders left by
    servers that died (kill -9, power loss) are removed first."""
    parent = Path(parent if parent is not None else tempfile.gettempdir())
    remove_stale_folders(parent)
    with tempfile.TemporaryDirectory(prefix=FOLDER_PREFIX, dir=parent) as tmp:
        pid = os.getpid()
        write_file(Path(tmp) / OWNER_FILE, lambda f: f.write(f"{pid} {_start_time(pid)}\n".encode()))
        yield Path(tmp)
