"""`sdedit batch`: resumable through kills and Ctrl-C, identical across process counts, bad items reported."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdedit.frontends.batch import item_seed

from .conftest import DATA
from .helpers import bomb_png

MODEL = ["--model", str(DATA / "tiny.ckpt"), "--config", str(DATA / "tiny.yml"), "--steps", "3"]
ENV = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the command pins its own threads


def make_folder(root: Path, count: int = 50) -> tuple[Path, Path]:
    """count small images with one mask each (top half edited)."""
    rng = np.random.default_rng(0)
    inp, masks = root / "in", root / "masks"
    inp.mkdir()
    masks.mkdir()
    m = np.zeros((20, 20), np.uint8)
    m[:10] = 255
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(inp / f"item{i:03d}.png")
        Image.fromarray(m).save(masks / f"item{i:03d}.png")
    return inp, masks


def batch_cmd(inp: Path, out: Path, masks: Path | None, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sdedit", "batch", str(inp), "-o", str(out),
            *(["--masks", str(masks)] if masks else []), *MODEL, *extra]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith("manifest")}


def manifest_lines(out: Path) -> int:
    """Items finished (done or failed) in the manifests so far; a 'writing' line announces an item's files."""
    if not out.exists():
        return 0
    return sum(1 for p in out.glob("manifest*.jsonl") for line in p.read_text().splitlines()
               if '"status": "done"' in line or '"status": "failed"' in line)


def kill_after(cmd: list[str], out: Path, lines: int) -> None:
    """Start a batch and SIGKILL it once its manifest has `lines` lines (mid-item, at whatever moment)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while manifest_lines(out) < lines and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(lines).uniform(0.0, 0.15))  # land somewhere inside the next item
    proc.kill()
    proc.wait()


def test_item_seeds_come_from_seed_and_name_only():
    assert item_seed(0, "a.png") == item_seed(0, "a.png") != item_seed(1, "a.png")
    assert item_seed(0, "a.png") != item_seed(0, "b.png") and 0 <= item_seed(5, "x") < 2**31


def test_killed_twice_and_resumed_equals_an_uninterrupted_run(tmp_path):
    inp, masks = make_folder(tmp_path)
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert subprocess.run(batch_cmd(inp, ref, masks), env=ENV, capture_output=True).returncode == 0
    first, second = sorted(random.Random(7).sample(range(5, 45), 2))
    kill_after(batch_cmd(inp, out, masks), out, first)
    kill_after(batch_cmd(inp, out, masks), out, second)
    r = subprocess.run(batch_cmd(inp, out, masks), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "| 50 | 50 | 0 | 0 |" in r.stdout
    got, want = files(out), files(ref)
    assert sorted(got) == sorted(want) and len(got) == 50  # exactly the 50 outputs, no temporaries
    assert all(got[k] == want[k] for k in want)  # byte for byte
    assert not list(out.glob(".*"))
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["input"] for r in records if r["status"] == "done"} == {f"item{i:03d}.png" for i in range(50)}


def test_two_processes_write_the_same_files_as_one(tmp_path):
    inp, masks = make_folder(tmp_path, 12)
    one, two = tmp_path / "one", tmp_path / "two"
    assert subprocess.run(batch_cmd(inp, one, masks), env=ENV, capture_output=True).returncode == 0
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(29500 + os.getpid() % 1000), *batch_cmd(inp, two, masks)[1:]], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert files(one) == files(two) and len(files(two)) == 12
    assert sorted(p.name for p in two.glob("manifest*")) == ["manifest.0.jsonl", "manifest.1.jsonl"]


def test_ctrl_c_finishes_the_item_flushes_and_exits_130_then_resumes(tmp_path):
    inp, masks = make_folder(tmp_path, 40)
    out = tmp_path / "out"
    proc = subprocess.Popen(batch_cmd(inp, out, masks), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while manifest_lines(out) < 3 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "stopping after the current item" in err
    statuses = [json.loads(x)["status"] for x in (out / "manifest.jsonl").read_text().splitlines()]
    done = statuses.count("done")
    assert 3 <= done < 40 and statuses == ["writing", "done"] * done  # each item announced, then finished
    assert len(files(out)) == done and not list(out.glob(".*"))  # every finished item, nothing half-done
    r = subprocess.run(batch_cmd(inp, out, masks), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and f"skipped (done before) {done}" in r.stdout


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    inp, _ = make_folder(tmp_path, 40)
    out = tmp_path / "out"
    # one item per network batch, so that the second Ctrl-C comes while an item is being computed
    proc = subprocess.Popen(batch_cmd(inp, out, None, "--steps", "300", "--batch-size", "1"), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while manifest_lines(out) < 1 and proc.poll() is None:
        time.sleep(0.01)
    item_seconds = next(r["seconds"] for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
                        if r["status"] == "done")
    # well inside the second item (a Ctrl-C between items stops the run cleanly, and a second one would then
    # come during the interpreter's shutdown, which has given the default handler back)
    time.sleep(0.25 * item_seconds)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    took = time.monotonic() - t
    assert proc.returncode == 130 and took < 0.5 * item_seconds, (proc.returncode, took, item_seconds)
    assert not list(out.glob(".*")) and len(files(out)) == 1  # the abandoned item left nothing behind


def test_bad_items_are_skipped_with_reasons_and_the_exit_code_says_so(tmp_path):
    inp, _ = make_folder(tmp_path, 3)
    (inp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    good = (inp / "item000.png").read_bytes()
    (inp / "truncated.png").write_bytes(good[: len(good) // 2])
    bomb_png(inp / "huge.png", 8000, 8000)  # 64 MP: over our 50 MP limit
    Image.new("CMYK", (20, 20), (10, 200, 30, 0)).save(inp / "cmyk.jpg")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(inp / "deep16.png")
    (inp / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    r = subprocess.run(batch_cmd(inp, out, None), env=ENV, capture_output=True, text=True)
    assert r.returncode == 1
    records = {json.loads(x)["input"]: json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()}
    assert {k for k, v in records.items() if v["status"] == "failed"} == {"corrupt.png", "truncated.png", "huge.png"}
    assert "over the limit" in records["huge.png"]["reason"]
    assert {k for k, v in records.items() if v["status"] == "done"} == {"item000.png", "item001.png", "item002.png",
                                                                        "cmyk.jpg",
                                                                        "deep16.png"}
    assert "| 8 | 5 | 3 | 0 |" in r.stdout and "failed: huge.png" in r.stderr


def test_never_overwrites_a_file_it_did_not_write_and_redoes_changed_settings(tmp_path):
    inp, masks = make_folder(tmp_path, 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "item001.png").write_bytes(b"mine")
    r = subprocess.run(batch_cmd(inp, out, masks), env=ENV, capture_output=True, text=True)
    assert r.returncode == 1 and "not written by this batch" in r.stderr
    assert (out / "item001.png").read_bytes() == b"mine"
    before = (out / "item000.png").read_bytes()
    r = subprocess.run(batch_cmd(inp, out, masks, "--t0", "0.8"), env=ENV, capture_output=True, text=True)
    assert "done 2" in r.stdout and (out / "item000.png").read_bytes() != before  # new settings: redone


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_output_folder_must_be_apart_from_the_input(tmp_path, where):
    inp, _ = make_folder(tmp_path, 1)
    out = {"same": inp, "inside": inp / "out", "around": tmp_path}[where]
    r = subprocess.run(batch_cmd(inp, out, None), env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "must not be, contain or lie inside" in r.stderr
    assert sorted(p.name for p in inp.iterdir()) == ["item000.png"]


@pytest.mark.parametrize("extra, message", [(["--prompt", "a cat"], "not text-conditioned"),
                                            (["--guidance", "nan"], "--guidance must be"),
                                            (["--t0", "1.5"], "--t0: must be in (0, 1]")])
def test_bad_settings_fail_once_before_any_item(tmp_path, extra, message):
    inp, _ = make_folder(tmp_path, 2)
    r = subprocess.run(batch_cmd(inp, tmp_path / "out", None, *extra), env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing created for a run that cannot start


def test_items_batched_together_equal_items_edited_one_at_a_time():
    """Different guides in one network batch, each with its own seed, give the bytes each gives alone."""
    from sdedit.api import iter_edits, prepare_guide
    from sdedit.settings import RunSettings

    from .conftest import gaussian_model

    model = gaussian_model()
    rng = np.random.default_rng(0)
    guides = [prepare_guide(model, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
    settings = RunSettings(t0=0.6, steps=4, num_samples=2, batch_size=8, seed=0)
    seeds = [item_seed(0, f"item{i}.png") for i in range(5)]
    together = list(iter_edits(model, guides, seeds, settings, progress=False))
    alone = [img for g, s in zip(guides, seeds) for img in
             iter_edits(model, [g], [s], settings.with_(batch_size=1), progress=False)]
    assert len(together) == 10
    for a, b in zip(together, alone):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(together[0]), np.asarray(together[2]))


@pytest.mark.parametrize("plant", ["symlink", "dangling", "fifo", "folder"])
def test_a_manifest_name_taken_by_a_link_fifo_or_folder_is_refused_and_nothing_written_through_it(tmp_path, plant):
    """The manifest is appended in place, so it is opened without following links and only as a regular file."""
    inp, masks = make_folder(tmp_path, 2)
    out, target = tmp_path / "out", tmp_path / "precious.txt"
    out.mkdir()
    target.write_text("line one\nhalf a line")
    manifest = out / "manifest.jsonl"
    {"symlink": lambda: manifest.symlink_to(target), "dangling": lambda: manifest.symlink_to(tmp_path / "nowhere"),
     "fifo": lambda: os.mkfifo(manifest), "folder": lambda: manifest.mkdir()}[plant]()
    r = subprocess.run(batch_cmd(inp, out, masks), env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "manifest.jsonl" in r.stderr
    assert target.read_text() == "line one\nhalf a line" and not (tmp_path / "nowhere").exists()
    assert not list(out.glob("*.png"))


def test_a_batch_killed_after_publishing_an_output_but_before_recording_it_finishes_on_rerun(tmp_path):
    """Intent is recorded before a file is published: the state a kill -9 between the two leaves (the file there,
    its item not 'done') is recognised by the file's hash, and the rerun redoes the item instead of refusing it."""
    inp, masks = make_folder(tmp_path, 3)
    out = tmp_path / "out"
    assert subprocess.run(batch_cmd(inp, out, masks), env=ENV, capture_output=True).returncode == 0
    want = files(out)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["status"] for r in records] == ["writing", "done"] * 3
    (out / "manifest.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # killed before the last 'done'
    r = subprocess.run(batch_cmd(inp, out, masks), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "| 3 | 3 | 0 | 0 |" in r.stdout
    assert files(out) == want
    last = json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "done" and last["input"] == records[-1]["input"]


def test_manifest_lines_of_any_other_shape_are_ignored_with_one_warning_and_never_followed(tmp_path):
    """Malformed lines (edited by hand, another tool's) used to stop the batch with an exception name."""
    inp, masks = make_folder(tmp_path, 2)
    out = tmp_path / "out"
    assert subprocess.run(batch_cmd(inp, out, masks), env=ENV, capture_output=True).returncode == 0
    want = files(out)
    bad = ['["a list"]', '{"input": ["item000.png"], "status": "done"}', '{"input": "item000.png", "status": 3}',
           '{"input": "item000.png", "status": "done", "outputs": "item000.png"}',
           '{"input": "item001.png", "status": "done", "outputs": [{"file": "../../secret", "sha256": "0"}]}',
           '{"input": "item000.png", "status": "done", "params": [1], "input_sha256": {}}',
           '{"input": "item001.png", "status": "done", "outputs": [{"file": "%s.png", "sha256": "0"}]}' % ("x" * 300),
           "[" * 100000 + "]" * 100000, "not json"]
    with open(out / "manifest.jsonl", "a") as f:
        f.write("\n".join(bad) + "\n")
    r = subprocess.run(batch_cmd(inp, out, masks), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "9 manifest line(s) are not records of this tool" in r.stderr and "Error" not in r.stderr
    assert "| 2 | 2 | 0 | 0 |" in r.stdout and files(out) == want


def test_masks_folder_with_unmasked_and_corrupt_images(tmp_path):
    """An image without a mask fails by default (saying --unmasked edit), or is edited whole with it; a corrupt
    image is reported as unreadable, not as missing its mask."""
    inp, masks = make_folder(tmp_path, 3)
    (masks / "item002.png").unlink()  # item002 has no mask
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    r = subprocess.run(batch_cmd(inp, out, masks), env=ENV, capture_output=True, text=True)
    assert r.returncode == 1
    records = {json.loads(line)["input"]: json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()}
    assert records["item002.png"]["status"] == "failed" and "--unmasked edit" in records["item002.png"]["reason"]
    assert records["broken.png"]["status"] == "failed" and "not a readable image" in records["broken.png"]["reason"]
    r = subprocess.run(batch_cmd(inp, out, masks, "--unmasked", "edit"), env=ENV, capture_output=True, text=True)
    assert r.returncode == 1  # broken.png still fails
    records = {json.loads(line)["input"]: json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()}
    assert records["item002.png"]["status"] == "done"
    settings = json.loads(Image.open(out / "item002.png").info["sdedit"])
    assert settings["masked"] is False
    assert json.loads(Image.open(out / "item000.png").info["sdedit"])["masked"] is True


def test_only_this_batchs_own_stray_temporaries_are_swept(tmp_path):
    """A kill leaves '.NAME.png.XXXXXXXX.tmp'; the next run removes those of its own outputs and nothing else."""
    inp, masks = make_folder(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    ours = out / ".item000.png.ab12cd_9.tmp"
    ours.write_bytes(b"half a png")
    kept = [out / ".draft.png.v2.tmp", out / ".notes.png.ab12cd_9.tmp", out / ".item001.png.ab12cd_9.tmp.bak"]
    for k in kept:
        k.write_text("user's")
    folder_named_so = out / ".item001.png.zz12cd_9.tmp"
    folder_named_so.mkdir()
    r = subprocess.run(batch_cmd(inp, out, masks), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not ours.exists() and all(k.read_text() == "user's" for k in kept) and folder_named_so.is_dir()
