"""The `sdedit` command: outputs, metadata, no clobbering, and one-line errors with exit 2 for every bad input."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdedit import read_settings
from sdedit.frontends.cli import main

from .conftest import DATA
from .helpers import bomb_png, mask_png, stroke_png
from .test_reference import Payload

TINY = ["--model", str(DATA / "tiny.ckpt"), "--config", str(DATA / "tiny.yml")]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_edit_writes_pngs_with_settings_and_never_overwrites(tmp_path, capsys):
    src, mask = stroke_png(tmp_path / "in.png"), mask_png(tmp_path / "m.png")
    out = tmp_path / "out"
    args = ["edit", str(src), "--mask", str(mask), *TINY, "--t0", "0.3", "--steps", "4", "-n", "2", "--seed", "5",
            "-o", str(out), "--sampler", "dpm++2m"]
    assert main(args) == 0
    first = capsys.readouterr().out.split()  # the saved paths, one per line
    assert [Path(p).name for p in first] == ["in_t0.30_dpm++2m_s5.png", "in_t0.30_dpm++2m_s6.png"]
    s = read_settings(first[1])
    assert (s["seed"], s["t0"], s["steps"], s["sampler"], s["repeats"]) == (6, 0.3, 4, "dpm++2m", 1)
    before = {p: Path(p).read_bytes() for p in first}
    assert main(args) == 0
    second = capsys.readouterr().out.split()
    assert set(second).isdisjoint(first) and all(Path(p).exists() for p in second)
    assert all(Path(p).read_bytes() == b for p, b in before.items())  # untouched
    assert Path(second[0]).read_bytes() == before[first[0]]  # same seed, same image


def test_temporaries_of_killed_writers_are_removed_by_the_next_command_and_nothing_else(tmp_path):
    """kill -9 during a save leaves '.NAME.PID.XXXXXXXX.tmp'; any later command writing to that folder removes those
    whose process is gone (only batch used to, and only its own outputs)."""
    from sdedit.files import write_file

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that is gone
    gone = out / f".in_t0.30_ddim_s1.png.sdedit-{dead.pid}.ab12cd_9.tmp"
    live = out / f".x.png.sdedit-{os.getppid()}.ab12cd_9.tmp"  # a writer still running
    old_style, user = out / ".x.png.ab12cd_9.tmp", out / f".notes.{dead.pid}.ab12cd_9.tmp"  # the user's own
    fresh = out / f".z.png.sdedit-{dead.pid}.ab12cd_9.tmp"  # just written: maybe a writer this machine cannot see
    huge, newline = out / ".x.png.sdedit-99999999999999999999.ab12cd_9.tmp", out / f".x.png.sdedit-{dead.pid}.ab12cd_9.tmp\n"
    link = out / f".y.png.sdedit-{dead.pid}.zz12cd_9.tmp"
    for p in (gone, live, old_style, user, fresh, huge, newline):
        p.write_bytes(b"x")
        if p is not fresh:
            os.utime(p, (1e9, 1e9))  # untouched for years
    link.symlink_to(user)
    write_file(tmp_path / "probe.bin", lambda f: f.write(b"1"))  # the writer's own temporary carries its pid
    src = stroke_png(tmp_path / "in.png")
    assert main(["edit", str(src), *TINY, "--steps", "1", "-q", "-o", str(out)]) == 0
    assert not gone.exists() and all(p.exists() for p in (live, old_style, user, fresh, huge, newline))
    assert link.is_symlink()


def test_an_output_name_too_long_for_the_file_system_is_refused_before_sampling(tmp_path, capsys, monkeypatch):
    import sdedit.api

    src = stroke_png(tmp_path / ("p" * 200 + ".png"))  # a legal input name; its output name is not
    monkeypatch.setattr(sdedit.api, "iter_edits", lambda *a, **k: pytest.fail("sampled before the check"))
    assert main(["edit", str(src), *TINY, "--steps", "1", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "too long" in err and not list((tmp_path / "o").iterdir())


def test_the_writer_reports_every_file_it_wrote_even_when_another_save_failed(capsys):
    """A full disk used to leave an earlier (or concurrent) output written but never reported."""
    import threading

    from sdedit.frontends.common import Writer

    gate = threading.Event()

    def full_disk() -> str:
        gate.wait(5)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        with Writer() as writer:
            writer.submit(lambda: "a.png")
            writer.submit(full_disk)
            writer.submit(lambda: "c.png")  # saved on another thread while the second waits
            gate.set()
    assert capsys.readouterr().out.split() == ["a.png", "c.png"]


def test_quiet_prints_nothing_on_success_for_every_command_that_writes_files(tmp_path, capsys):
    src, mask = stroke_png(tmp_path / "in.png"), mask_png(tmp_path / "m.png")
    folder = tmp_path / "folder"
    folder.mkdir()
    stroke_png(folder / "a.png")
    runs = {
        "edit": ["edit", str(src), "--mask", str(mask), *TINY, "--steps", "2", "-o", str(tmp_path / "e")],
        "composite": ["composite", str(src), str(src), "--scale", "0.5", "--at", "8,8", *TINY, "--steps", "2", "-o",
                      str(tmp_path / "c")],
        "batch": ["batch", str(folder), *TINY, "--steps", "2", "-o", str(tmp_path / "b")],
        "outpaint": ["outpaint", str(src), "--right", "8", *TINY, "--steps", "2", "-o", str(tmp_path / "o")],
    }
    for command, args in runs.items():
        assert main([*args, "-q"]) == 0, command
        printed = capsys.readouterr()
        assert (printed.out, printed.err) == ("", ""), (command, printed)
    assert [len(list((tmp_path / d).glob("*.png"))) for d in "ecbo"] == [1, 1, 1, 1]


def bad_cases(tmp_path: Path) -> dict[str, list[str]]:
    good = stroke_png(tmp_path / "good.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    small_mask = mask_png(tmp_path / "small_mask.png", (10, 10))
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"conv_in.weight": Payload(str(tmp_path / "pwned"))}, f)
    base = ["-o", str(tmp_path / "out"), "-q"]
    return {
        "corrupt image": ["edit", str(corrupt), *TINY, *base],
        "declared 30000x30000": ["edit", str(bomb_png(tmp_path / "bomb.png")), *TINY, *base],
        "missing image": ["edit", str(tmp_path / "none.png"), *TINY, *base],
        "mask of another size": ["edit", str(good), "--mask", str(small_mask), *TINY, *base],
        "pickle posing as checkpoint": ["edit", str(good), "--model", str(evil), "--config", str(DATA / "tiny.yml"),
                                        *base],
        "t0 of 0": ["edit", str(good), *TINY, "--t0", "0", *base],
        "t0 of 1.5": ["edit", str(good), *TINY, "--t0", "1.5", *base],
        "steps 0": ["edit", str(good), *TINY, "--steps", "0", *base],
        "repeats 0": ["edit", str(good), *TINY, "--repeats", "0", *base],
        "unknown model": ["edit", str(good), "--model", "no/such/model.ckpt", *base],
        "unknown flag": ["edit", str(good), "--bogus", *base],
        "bad t0 text": ["edit", str(good), *TINY, "--t0", "half", *base],
        # accepted and ignored, once: each acts on something not given
        "crop-to-mask without a mask": ["edit", str(good), *TINY, "--crop-to-mask", *base],
        "strength levels without a map": ["edit", str(good), *TINY, "--strength-levels", "4", *base],
        "guidance for an unconditional model": ["edit", str(good), *TINY, "--guidance", "3", *base],
    }


CASES = ["corrupt image", "declared 30000x30000", "missing image", "mask of another size",
         "pickle posing as checkpoint", "t0 of 0", "t0 of 1.5", "steps 0", "repeats 0", "unknown model",
         "unknown flag", "bad t0 text", "crop-to-mask without a mask", "strength levels without a map",
         "guidance for an unconditional model"]


def test_cases_are_all_listed(tmp_path):
    assert sorted(bad_cases(tmp_path)) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    args = bad_cases(tmp_path)[case]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.png").write_bytes(b"user file")
    before = snapshot(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("sdedit: error:")
    assert snapshot(tmp_path) == before  # nothing written, nothing touched
    assert not (tmp_path / "pwned").exists()  # no code ran


def test_nan_in_sampler_is_exit_1_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import sdedit.families.pixel as dn

    monkeypatch.setattr(dn.EpsDenoiser, "eps", lambda self, x, t: torch.full_like(x, float("nan")))
    out = tmp_path / "out"
    assert main(["edit", str(stroke_png(tmp_path / "in.png")), *TINY, "-o", str(out), "-q", "--steps", "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NaN" in err
    assert not out.exists() or not list(out.iterdir())


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_console_entry_point_and_models_listing(tmp_path):
    r = run("-m", "sdedit", "models", cwd=tmp_path)
    assert r.returncode == 0 and "church" in r.stdout and "google/ncsnpp-ffhq-1024" in r.stdout
    r = run("-m", "sdedit", "edit", str(bomb_png(tmp_path / "b.png")), *TINY, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = run("-m", "sdedit", "edit", str(stroke_png(tmp_path / "s.png")), "--model", "church", cwd=tmp_path)
    assert r.returncode == 1 and "church" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
