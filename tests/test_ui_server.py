"""`sdedit ui` as a running server: its command line, the file route, a burst of requests, and a real browser."""

from __future__ import annotations

import os
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


class Served(str):
    """The server's address, and its process."""

    proc: subprocess.Popen


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    tmp = tmp_path_factory.mktemp("ui-tmp")  # the server's temporary files go here, so the test can look
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "sdedit", "ui", "--port", str(port), "--queue-size", str(QUEUE)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "running on" not in line:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            pytest.fail(f"sdedit ui exited with {proc.returncode}")
    assert line.strip() == f"sdedit ui: running on http://127.0.0.1:{port}/ (Ctrl-C to stop)"
    served = Served(f"http://127.0.0.1:{port}/")
    served.proc = proc
    yield served
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


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
    grown = rss_mb(server.proc.pid) - before
    assert grown < 150, f"the server grew by {grown:.0f} MB"
    assert status_of(server)[0] == 200


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
