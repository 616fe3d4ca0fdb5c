"""`sdedit ui` as a running server: its command line, the file route, a burst of requests, and a real browser."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .helpers import stroke_png

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
QUEUE = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sdedit_cmd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdedit", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})


@pytest.mark.parametrize("args, message", [
    (["--listen"], "--listen exposes the app"),
    (["--auth", "alice"], "--auth must be USER:PASS"),
    (["--auth", ":secret"], "--auth must be USER:PASS"),
    (["--port", "70000"], "--port must be"),
    (["--queue-size", "0"], "--queue-size must be"),
    (["--model", "/no/such/model"], "no such model"),
])
def test_ui_refuses_unsafe_or_bad_options_in_one_line(args, message):
    r = sdedit_cmd("ui", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_listen_without_a_password_names_every_way_to_give_one():
    r = sdedit_cmd("ui", "--listen")
    assert r.returncode == 2 and all(way in r.stderr for way in ("SDEDIT_UI_AUTH", "--auth-file", "--auth USER:PASS"))


class Served(str):
    """The server's address, its process and its TMPDIR."""

    proc: subprocess.Popen
    tmp: Path


def start_server(tmp: Path, *args: str, env: dict | None = None) -> Served:
    """`sdedit ui` on a free port with TMPDIR=tmp, once it says it is running."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp),
           **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "sdedit", "ui", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "running on" not in line:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            pytest.fail(f"sdedit ui exited with {proc.returncode}")
    assert line.strip() == f"sdedit ui: running on http://127.0.0.1:{port}/ (Ctrl-C to stop)"
    served = Served(f"http://127.0.0.1:{port}/")
    served.proc, served.tmp = proc, tmp
    return served


def stop_server(served: Served) -> None:
    served.proc.terminate()
    try:
        served.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        served.proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the server's temporary files go under its own TMPDIR, so the tests can look
    served = start_server(tmp_path_factory.mktemp("ui-tmp"), "--queue-size", str(QUEUE))
    yield served
    stop_server(served)


def status_of(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_server_is_on_loopback_and_serves_the_page(server):
    code, body = status_of(server)
    assert code == 200 and b"sdedit" in body


@pytest.mark.parametrize("path", ["/etc/passwd", str(ROOT / "README.md"), str(ROOT / "src" / "sdedit" / "ui.py"),
                                  "../../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd"])
def test_file_route_serves_nothing_outside_the_app(server, path):
    code, body = status_of(f"{server}gradio_api/file={path}")
    assert code in (403, 404), (code, body[:80])
    assert b"root:" not in body and b"SDEdit" not in body


def editor_value(path: Path) -> dict:
    from gradio_client import handle_file

    return {"background": handle_file(str(path)), "layers": [], "composite": handle_file(str(path)), "id": None}


def test_a_burst_of_30_requests_gets_results_or_a_polite_busy(server, tmp_path):
    from gradio_client import Client

    painting = stroke_png(tmp_path / "p.png", (64, 64))
    client = Client(server, verbose=False)
    # each run is long enough (200 network calls) that the queue of QUEUE fills while the first one works
    args = dict(model="landscapes", t0=1.0, sampler="ddim", steps=200, repeats=1, samples=1, seed=0, grow=0,
                feather=0, api_name="/paint")

    def one(i: int) -> str:
        try:
            gallery, _ = client.predict(editor_value(painting), **{**args, "seed": i})
            return "done" if len(gallery) == 1 else f"wrong result {gallery!r}"
        except Exception as e:  # the client raises for a refused request; we classify it
            return f"refused: {e}"

    with ThreadPoolExecutor(30) as pool:
        outcomes = list(pool.map(one, range(30)))
    done = outcomes.count("done")
    busy = [o for o in outcomes if o.startswith("refused") and "queue is full" in o.lower()]
    print(f"burst of 30: {done} done, {len(busy)} busy")
    assert done + len(busy) == 30, [o for o in outcomes if o != "done" and o not in busy][:3]
    assert 1 <= done <= QUEUE + 1 and busy
    code, _ = status_of(server)  # still up and answering
    assert code == 200


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024


def test_an_upload_declaring_13000x13000_pixels_is_refused_before_it_is_decoded(server, tmp_path):
    from gradio_client import Client

    from .helpers import bomb_png

    bomb = bomb_png(tmp_path / "bomb.png", 13000, 13000)  # a few hundred bytes; 507 MB if decoded as RGB
    before = rss_mb(server.proc.pid)
    client = Client(server, verbose=False)
    with pytest.raises(Exception) as e:
        client.predict(editor_value(bomb), model="landscapes", t0=0.5, sampler="ddim", steps=2, repeats=1,
                       samples=1, seed=0, grow=0, feather=0, api_name="/paint")
    assert "/tmp" not in str(e.value) and "Traceback" not in str(e.value)
    assert "bomb.png: not a readable image" in str(e.value)  # the reason, in one line (not an empty error)
    grown = rss_mb(server.proc.pid) - before
    assert grown < 150, f"the server grew by {grown:.0f} MB"
    assert status_of(server)[0] == 200


def test_a_truncated_upload_is_refused_with_its_reason(server, tmp_path):
    from gradio_client import Client

    good = stroke_png(tmp_path / "good.png", (64, 64)).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(Exception) as e:
        Client(server, verbose=False).predict(editor_value(tmp_path / "cut.png"), model="landscapes", t0=0.5,
                                              sampler="ddim", steps=2, repeats=1, samples=1, seed=0, grow=0,
                                              feather=0, api_name="/paint")
    assert "cut.png: corrupt or truncated image" in str(e.value) and str(server.tmp) not in str(e.value)


def test_the_page_config_names_no_server_path(server):
    code, body = status_of(f"{server}config")
    assert code == 200 and b"components" in body
    assert str(server.tmp).encode() not in body and b"sdedit-ui-" not in body


def post_chunked(server: str, path: str, total: int, piece: int = 65536) -> bytes:
    """POST a body of `total` bytes without a Content-Length (chunked), stopping once the server answers;
    the status line."""
    port = int(server.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n".encode())
        sent = 0
        try:
            while sent < total and not select.select([s], [], [], 0)[0]:
                s.sendall(b"%x\r\n" % piece + b"a" * piece + b"\r\n")
                sent += piece
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while the body was still coming: its answer is read below
        return s.recv(4096).split(b"\r\n")[0]


def test_request_bodies_over_the_cap_are_refused_with_413_without_being_held(server):
    """Six 100 MB bodies (the hostile review held +0.8 GB of them): declared ones are refused from their
    Content-Length before any byte is read, streamed ones once 1 MB has come."""
    port = int(server.rstrip("/").rsplit(":", 1)[1])
    before = rss_mb(server.proc.pid)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000000\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 413 ")
    for _ in range(3):
        assert post_chunked(server, "/gradio_api/queue/join", 100_000_000).startswith(b"HTTP/1.1 413 ")
    grown = rss_mb(server.proc.pid) - before
    assert grown < 50, f"the server grew by {grown:.0f} MB"
    assert status_of(server)[0] == 200


def test_a_prompt_over_the_limit_is_refused_in_one_line(server, tmp_path):
    from gradio_client import Client

    with pytest.raises(Exception, match="prompt must be text of at most 1000 characters"):
        Client(server, verbose=False).predict(editor_value(stroke_png(tmp_path / "p.png", (64, 64))),
                                              model="landscapes", t0=0.5, sampler="ddim", steps=2, repeats=1,
                                              samples=1, seed=0, grow=0, feather=0, prompt="x" * 5000,
                                              api_name="/paint")


def test_the_outpaint_route_grows_an_image_and_refuses_bad_sides_in_one_line(server, tmp_path):
    from gradio_client import Client, handle_file

    small = stroke_png(tmp_path / "small.png", (32, 32))
    client = Client(server, verbose=False)
    args = dict(model="landscapes", t0=0.4, sampler="ddim", steps=3, repeats=1, samples=1, seed=0,
                api_name="/outpaint")
    gallery, _ = client.predict(handle_file(str(small)), 0, 16, 0, 8, "edge", **args)
    out = np.asarray(Image.open(gallery[0]["image"]))
    assert out.shape == (40, 48, 3) and np.array_equal(out[:32, :32], np.asarray(Image.open(small)))
    for sides, message in [((-5, 0, 0, 0), "less than minimum value 0"),  # Gradio's own check, then ours
                           ((0, 0, 0, 0), "at least one of left, right, top, bottom above 0")]:
        with pytest.raises(Exception) as e:
            client.predict(handle_file(str(small)), *sides, "edge", **args)
        assert message in str(e.value) and "\n" not in str(e.value) and "Traceback" not in str(e.value)


def asgi_call(app, path: str, body_parts: list[bytes], *, length: int | None = None, method: str = "POST",
              client: str = "10.0.0.1") -> tuple[int, int]:
    """One request through an ASGI app; (status, bytes of the body the inner app read)."""
    import asyncio

    parts = list(body_parts)
    status = [0]

    async def receive():
        body = parts.pop(0) if parts else b""
        return {"type": "http.request", "body": body, "more_body": bool(parts)}

    async def send(message):
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    headers = [] if length is None else [(b"content-length", str(length).encode())]
    scope = {"type": "http", "method": method, "path": path, "headers": headers, "client": (client, 1234)}
    asyncio.run(app(scope, receive, send))
    return status[0], getattr(app, "read", 0)


class Reader:
    """An inner app that reads the whole body, then answers 200 (or `status`)."""

    def __init__(self, status: int = 200):
        self.status, self.read = status, 0

    async def __call__(self, scope, receive, send):
        more = True
        while more:
            message = await receive()
            self.read += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def test_body_cap_refuses_declared_and_streamed_bodies_over_their_route_cap():
    from sdedit.frontends.ui_server import BodyCap

    def call(path, parts, length=None):
        inner = Reader()
        cap = BodyCap(inner, cap=1000, upload_cap=5000)
        status, _ = asgi_call(cap, path, parts, length=length)
        return status, inner.read

    assert call("/gradio_api/queue/join", [b"x" * 1000], length=1000) == (200, 1000)
    assert call("/gradio_api/queue/join", [b"x" * 1001], length=1001) == (413, 0)  # refused before reading
    assert call("/gradio_api/upload", [b"x" * 4000], length=4000) == (200, 4000)
    assert call("/gradio_api/component_server/", [b"x" * 5001], length=5001) == (413, 0)
    assert call("/gradio_api/queue/join", [b"x" * 400] * 2) == (200, 800)  # streamed, no length
    status, read = call("/gradio_api/queue/join", [b"x" * 400] * 100)
    assert status == 413 and read <= 800  # stopped at the first piece past the cap
    assert call("/x", [b""], length=-1)[0] == 400


def test_login_brake_counts_attempts_per_address_in_a_window_and_forgives_a_success():
    from sdedit.frontends.ui_server import LoginBrake

    now = [0.0]
    inner = Reader(status=400)
    brake = LoginBrake(inner, attempts=3, window=60.0, max_clients=2, clock=lambda: now[0])

    def attempt(client="10.0.0.1", path="/login"):
        return asgi_call(brake, path, [b"username=a&password=b"], client=client)[0]

    assert [attempt() for _ in range(4)] == [400, 400, 400, 429]
    assert attempt("10.0.0.2") == 400 and attempt(path="/config") == 400  # other addresses, other routes: free
    now[0] = 59.0
    assert attempt() == 429
    now[0] = 60.5  # the first attempts have aged out of the window
    inner.status = 200
    assert attempt() == 200 and not brake.failures["10.0.0.1"]  # a success forgives the address
    inner.status = 400
    for k in range(5):
        assert attempt(f"10.1.0.{k}") == 400
    assert list(brake.failures) == ["10.1.0.3", "10.1.0.4"]  # bounded memory: the most recent addresses


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def server_folders(tmp: Path) -> dict[str, Path]:
    """Folders as servers leave them: killed (its process gone), running, and some the sweep must not touch."""
    from sdedit.frontends.ui_server import OWNER_FILE

    folders = {name: tmp / f"sdedit-ui-{name}" for name in ("killed", "running", "no-owner-file", "reused-pid")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "upload.png").write_bytes(b"x")
    (folders["killed"] / OWNER_FILE).write_text(f"{dead_pid()} 123\n")
    (folders["running"] / OWNER_FILE).write_text(f"{os.getpid()}\n")
    (folders["reused-pid"] / OWNER_FILE).write_text(f"{os.getpid()} 1\n")  # our pid, but not our start time
    target = tmp / "elsewhere"
    target.mkdir()
    (target / OWNER_FILE).write_text(f"{dead_pid()}\n")
    folders["link"] = tmp / "sdedit-ui-link"
    folders["link"].symlink_to(target)
    folders["file"] = tmp / "sdedit-ui-file"
    folders["file"].write_text("a user's file")
    return folders


def test_stale_server_folders_are_removed_and_only_those():
    import tempfile

    from sdedit.frontends.ui_server import OWNER_FILE, remove_stale_folders, server_folder

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = server_folders(tmp)
        if os.geteuid() == 0:  # another user's folder, with a dead owner: not ours to remove
            folders["other-user"] = tmp / "sdedit-ui-other-user"
            folders["other-user"].mkdir()
            (folders["other-user"] / OWNER_FILE).write_text(f"{dead_pid()}\n")
            os.chown(folders["other-user"], 65534, 65534)
        assert sorted(remove_stale_folders(tmp)) == [folders["killed"], folders["reused-pid"]]
        assert [n for n, f in folders.items() if os.path.lexists(f)] == \
            [n for n in folders if n not in ("killed", "reused-pid")]
        assert (tmp / "elsewhere" / OWNER_FILE).exists()  # a link is never followed
        with server_folder(tmp) as mine:
            assert mine.name.startswith("sdedit-ui-") and not remove_stale_folders(tmp)
            assert (mine / OWNER_FILE).read_text().split()[0] == str(os.getpid())
        assert not mine.exists()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A server with a password, started over the folders that servers killed before it left."""
    tmp = tmp_path_factory.mktemp("ui-auth-tmp")
    left = server_folders(tmp)
    served = start_server(tmp, env={"SDEDIT_UI_AUTH": "alice:secret"})
    served.left = left
    yield served
    stop_server(served)


def test_a_server_starting_removes_the_folders_of_killed_servers(auth_server):
    assert not auth_server.left["killed"].exists() and auth_server.left["running"].exists()
    own = [f for f in auth_server.tmp.glob("sdedit-ui-*") if f.is_dir() and not f.is_symlink()
           and (f / "server.pid").is_file() and (f / "server.pid").read_text().split()[0] == str(auth_server.proc.pid)]
    assert len(own) == 1 and (own[0] / "gradio").is_dir()


def login(server: str, password: str, source: str = "127.0.0.1") -> tuple[int, dict]:
    """POST the login form from a loopback source address; (status, headers)."""
    import http.client

    port = int(server.rstrip("/").rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        conn.request("POST", "/login", body=f"username=alice&password={password}",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        r.read()
        return r.status, dict(r.getheaders())
    finally:
        conn.close()


def test_failed_logins_are_braked_per_client_address(auth_server):
    from sdedit.frontends.ui_server import LoginBrake

    limit = LoginBrake(None).attempts
    with ThreadPoolExecutor(30) as pool:  # 30 wrong passwords at once
        codes = list(pool.map(lambda _: login(auth_server, "wrong", "127.0.0.3")[0], range(30)))
    assert codes.count(400) == limit and codes.count(429) == 30 - limit, codes
    code, headers = login(auth_server, "secret", "127.0.0.3")  # even the right one waits now
    assert code == 429 and int(headers["retry-after"]) > 0
    assert login(auth_server, "secret", "127.0.0.4")[0] == 200  # another address is not braked


def test_sigterm_removes_the_servers_temporary_folder(tmp_path):
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path),
           "SDEDIT_UI_AUTH": "alice:secret"}
    proc = subprocess.Popen([sys.executable, "-m", "sdedit", "ui", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = proc.stdout.readline()
        while "running on" not in line and proc.poll() is None:
            line = proc.stdout.readline()
        assert list(tmp_path.glob("sdedit-ui-*")), "the server keeps its files in its own temporary folder"
        code, _ = status_of(f"http://127.0.0.1:{port}/gradio_api/info")
        assert code in (401, 403)  # the password came from SDEDIT_UI_AUTH, not from the command line
        proc.terminate()  # SIGTERM, as a service manager stops it
        assert proc.wait(timeout=30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(tmp_path.glob("sdedit-ui-*"))


def _browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    return sync_api.sync_playwright(), flags


def paint(page, selector: str, rows: list[float], color_button: int | None = None) -> None:
    """Drag the mouse across the middle of an editor's image in horizontal strokes (fractions of 200 px)."""
    canvas = page.locator(f"{selector} canvas").last
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for y in rows:
        page.mouse.move(cx - 90, cy - 100 + 200 * y)
        page.mouse.down()
        for k in range(1, 19):
            page.mouse.move(cx - 90 + 10 * k, cy - 100 + 200 * y, steps=2)
            page.wait_for_timeout(15)
        page.mouse.up()
        page.wait_for_timeout(100)


def test_browser_paints_strokes_and_gets_images(server, tmp_path):
    playwright, flags = _browser()
    with playwright as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                    args=flags)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(server)
        page.locator("#paint-canvas canvas").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.click("#paint-example")  # the bundled painting as a start, then strokes over it
        page.wait_for_timeout(2000)
        paint(page, "#paint-canvas", [0.1, 0.2, 0.3])
        page.click("#paint-go")
        page.locator("#results img").nth(3).wait_for(timeout=120_000)
        captions = page.locator("#results").inner_text()
        # the page starts at the model's recommended t0 (0.3 for the bundled model)
        assert "seed 0 | t0 0.3" in captions and "seed 3 | t0 0.3" in captions and "L2 to guide" in captions
        first = page.locator("#results img").first.get_attribute("src")
        assert "/gradio_api/file=" in first
        with urllib.request.urlopen(first if first.startswith("http") else server + first.lstrip("/")) as r:
            data = r.read()
        result = tmp_path / "result.png"
        result.write_bytes(data)
        img = Image.open(result)
        assert img.size == (64, 64) and "sdedit" in img.text  # the model's resolution, settings inside
        assert np.asarray(img.convert("RGB")).std() > 5  # an image, not a flat canvas
        page.screenshot(path=str(tmp_path / "app.png"))
        if os.environ.get("SDEDIT_UI_SCREENSHOT"):
            page.screenshot(path=os.environ["SDEDIT_UI_SCREENSHOT"])
        browser.close()


def test_browser_edits_an_uploaded_photo_only_where_painted(server, tmp_path):
    playwright, flags = _browser()
    photo = ROOT / "examples" / "edit-photo.png"
    with playwright as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                    args=flags)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(server)
        page.get_by_role("tab", name="Edit a photo").click()
        page.locator("#photo-canvas input[type=file]").set_input_files(str(photo))
        page.wait_for_timeout(2500)
        paint(page, "#photo-canvas", [0.55, 0.6])
        page.click("#photo-go")
        page.locator("#results img").nth(3).wait_for(timeout=120_000)
        src = page.locator("#results img").first.get_attribute("src")
        with urllib.request.urlopen(src if src.startswith("http") else server + src.lstrip("/")) as r:
            (tmp_path / "edited.png").write_bytes(r.read())
        if os.environ.get("SDEDIT_UI_SCREENSHOT"):
            page.screenshot(path=os.environ["SDEDIT_UI_SCREENSHOT"].replace(".png", "-photo.png"))
        browser.close()
    out = np.asarray(Image.open(tmp_path / "edited.png").convert("RGB")).astype(int)
    ref = np.asarray(Image.open(photo).convert("RGB")).astype(int)
    assert out.shape == ref.shape  # back at the photo's own size
    changed = np.abs(out - ref).sum(-1) > 0
    assert 0.005 < changed.mean() < 0.4  # edited, but only a band of it
    rows = np.nonzero(changed.any(1))[0]
    assert (out[: rows.min()] == ref[: rows.min()]).all() and (out[rows.max() + 1:] == ref[rows.max() + 1:]).all()
    assert rows.max() - rows.min() < 0.5 * ref.shape[0]  # the untouched rows are the photo, bit for bit


def test_a_port_in_use_is_a_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = sdedit_cmd("ui", "--port", str(s.getsockname()[1]))
    assert r.returncode == 2 and "pick one with --port" in r.stderr and len(r.stderr.strip().splitlines()) == 1
