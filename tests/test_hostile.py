"""Hostile and careless input, by class: output paths, file names, configs, limits, signals, concurrent runs.

Every case must end in exit 2 (bad input) or 1 (runtime failure) with one line on stderr and
no traceback, within a bound of time and memory, writing nothing outside the output named and
replacing no file of the user's.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit.errors import InputError
from sdedit.frontends.cli import main
from sdedit.frontends.released_cli import main as released_main

from .conftest import DATA
from .helpers import stroke_png
from .test_reference import Payload

TINY = ["--model", str(DATA / "tiny.ckpt"), "--config", str(DATA / "tiny.yml")]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def one_line_error(capsys, code: int, expected: int = 2) -> str:
    err = capsys.readouterr().err.strip()
    assert code == expected, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdedit", *args], capture_output=True, text=True, timeout=timeout,
                          env=env or ENV)


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --- Output paths: one safe writer for every command -------------------------------------------------------------


@pytest.mark.parametrize("command", ["edit", "strokes", "sweep"])
def test_a_dangling_symlink_at_an_output_name_is_a_taken_name_not_a_hang(tmp_path, command):
    good = stroke_png(tmp_path / "good.png", (32, 32))
    out = tmp_path / "o"
    out.mkdir()
    names = {"edit": "good_t0.50_dpm++2m-sde_s1.png", "strokes": "s.png", "sweep": "good-sweep-grid.png"}
    link = out / names[command]
    link.symlink_to(tmp_path / "nonexistent-target.png")
    args = {"edit": ["edit", str(good), *TINY, "--steps", "1", "--seed", "1", "-o", str(out), "-q"],
            "strokes": ["strokes", str(good), "-o", str(link)],
            "sweep": ["sweep", str(good), *TINY, "--t0", "0.5", "-n", "1", "--steps", "1", "-o", str(out), "-q"]}
    start = time.monotonic()
    r = run_cli(*args[command], timeout=60)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - start < 60
    assert link.is_symlink() and not (tmp_path / "nonexistent-target.png").exists()  # not followed, not replaced
    assert (out / link.name.replace(".png", "-1.png")).is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("target, message", [
    ("folder", "is a folder"), ("/dev/null", "ending in .png"), ("x.jpg", "ending in .png"),
    ("fifo.png", "device or special file"),
])
def test_strokes_output_must_be_a_png_file_name(tmp_path, capsys, target, message):
    good = stroke_png(tmp_path / "good.png", (32, 32))
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo.png")
    path = target if target.startswith("/") else str(tmp_path / target)
    if target == "folder":
        path = str(tmp_path / "folder")
        os.rename(path, path + ".png")
        path += ".png"
    before = tree(tmp_path)
    for extra in ([], ["--overwrite"]):
        err = one_line_error(capsys, main(["strokes", str(good), "-o", path, *extra]))
        assert message in err
    assert tree(tmp_path) == before and Path("/dev/null").is_char_device()


def test_edit_overwrite_never_replaces_a_folder_and_output_problems_come_before_sampling(tmp_path, capsys):
    good = stroke_png(tmp_path / "good.png", (32, 32))
    out = tmp_path / "o"
    (out / "good_t0.50_dpm++2m-sde_s1.png").mkdir(parents=True)
    err = one_line_error(capsys, main(["edit", str(good), *TINY, "--seed", "1", "--steps", "1", "-o", str(out),
                                       "--overwrite", "-q"]))
    assert "is a folder" in err and (out / "good_t0.50_dpm++2m-sde_s1.png").is_dir()
    (tmp_path / "file").write_text("mine")
    for bad_out in (tmp_path / "file", tmp_path / "file" / "sub", Path("/proc/sdedit-cannot-write-here")):
        start = time.monotonic()
        err = one_line_error(capsys, main(["edit", str(good), *TINY, "--steps", "500", "-n", "64", "-o",
                                           str(bad_out), "-q"]))
        assert time.monotonic() - start < 20, "refused only after sampling"
    assert (tmp_path / "file").read_text() == "mine"


def test_many_samples_stream_to_disk_in_bounded_memory_and_sigterm_keeps_finished_files(tmp_path):
    good = stroke_png(tmp_path / "good.png", (64, 64))
    out = tmp_path / "o"
    script = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    r = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "sdedit", "edit", str(good), "-n", "240",
                        "--steps", "1", "--seed", "0", "-o", str(out), "-q"], capture_output=True, text=True,
                       timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-500:]
    peak_mb = int(r.stdout.strip().splitlines()[-1]) / 1024
    assert len(list(out.glob("*.png"))) == 240
    assert peak_mb < 1500, f"peak {peak_mb:.0f} MB for 240 samples"  # (each file is fsynced: 1000 take ~90 s here)

    # A long run stopped by SIGTERM keeps every finished file whole and leaves no temporary file.
    out2 = tmp_path / "o2"
    proc = subprocess.Popen([sys.executable, "-m", "sdedit", "edit", str(good), "-n", "1000", "--steps", "20",
                             "--seed", "0", "-o", str(out2), "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out2.glob("*.png"))) < 8:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "sdedit: terminated"
    kept = list(out2.glob("*.png"))
    assert 8 <= len(kept) < 1000
    for p in kept:
        Image.open(p).load()  # whole PNGs
    assert not [p.name for p in out2.iterdir() if not p.name.endswith(".png")]


# --- File names: bytes-safe and printed safely ---------------------------------------------------------------------


def test_file_names_that_are_not_utf8_or_hold_escape_sequences(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    weird = [os.fsdecode(b"caf\xe9.png"), "bell\x07\x1b[31mred.png", "plain.png"]
    for i, name in enumerate(weird):
        stroke_png(inp / name, (32, 32), seed=i)
    r = run_cli("batch", str(inp), "-o", str(tmp_path / "out"), *TINY, "--steps", "1")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    assert "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout + r.stderr
    r = run_cli("edit", str(inp / weird[1]), *TINY, "--steps", "1", "-o", str(tmp_path / "e"))  # prints the path
    assert r.returncode == 0 and "\\x1b[31m" in r.stdout and "\x1b" not in r.stdout + r.stderr
    r = run_cli("edit", str(inp / "missing\x1b]0;pwned\x07.png"), *TINY, "-o", str(tmp_path / "e"))
    assert r.returncode == 2 and "\x1b" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --- Batch: one run per folder, and the user's files are theirs ----------------------------------------------------


def test_a_second_batch_on_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    stroke_png(inp / "a.png", (32, 32))
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running batch holds
    try:
        r = run_cli("batch", str(inp), "-o", str(out), *TINY, "--steps", "1", "-q")
    finally:
        os.close(fd)
    assert r.returncode == 2 and "another sdedit batch is writing" in r.stderr
    assert list(out.iterdir()) == []


def test_batch_never_overwrites_an_output_the_user_changed(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    stroke_png(inp / "a.png", (32, 32))
    out = tmp_path / "out"
    args = ["batch", str(inp), "-o", str(out), *TINY, "--steps", "1", "-q"]
    assert run_cli(*args).returncode == 0
    (out / "a.png").write_bytes(b"my retouched version")
    r = run_cli(*args, "--t0", "0.3")  # new settings: the item is redone, but its output is no longer ours
    assert r.returncode == 1 and "not written by this batch" in r.stderr
    assert (out / "a.png").read_bytes() == b"my retouched version"


@pytest.mark.parametrize("extra, message", [(["--batch-size", "0"], "--batch-size must be"),
                                            (["--threads", "100000"], "--threads must be from 1 to"),
                                            (["-n", "0"], "-n must be")])
def test_batch_settings_are_refused_once_before_any_item(tmp_path, extra, message):
    inp = tmp_path / "in"
    inp.mkdir()
    stroke_png(inp / "a.png", (32, 32))
    r = run_cli("batch", str(inp), "-o", str(tmp_path / "out"), *TINY, *extra)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# --- Configs and checkpoints: checked before memory is spent, every error naming its file -------------------------


def unet_folder(folder: Path, config: dict, weights: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", **config}))
    save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def child_peak_mb(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    script = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
              "sys.stderr.write(r.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
              "sys.exit(r.returncode)")
    r = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "sdedit", *args], capture_output=True,
                       text=True, timeout=120, env=ENV)
    return r, int(r.stdout.strip().splitlines()[-1]) / 1024


def test_a_config_describing_a_huge_network_is_refused_before_allocating(tmp_path):
    good = stroke_png(tmp_path / "good.png", (32, 32))
    huge = unet_folder(tmp_path / "huge", {"sample_size": 16, "block_out_channels": [2048] * 4,
                                            "down_block_types": ["DownBlock2D"] * 4,
                                            "up_block_types": ["UpBlock2D"] * 4}, {"x": torch.zeros(4)})
    r, peak = child_peak_mb(["edit", str(good), "--model", str(huge), "-o", str(tmp_path / "o")])
    assert r.returncode == 2 and str(huge / "diffusion_pytorch_model.safetensors") in r.stderr, r.stderr
    assert peak < 2000, f"{peak:.0f} MB"
    (tmp_path / "big.yml").write_text((DATA / "tiny.yml").read_text().replace("  ch: 32", "  ch: 1024"))
    r, peak = child_peak_mb(["edit", str(good), "--model", str(DATA / "tiny.ckpt"), "--config",
                             str(tmp_path / "big.yml"), "-o", str(tmp_path / "o")])
    assert r.returncode == 2 and "tiny.ckpt" in r.stderr and peak < 2000, (r.stderr, peak)
    env_limit = run_cli("edit", str(good), "--model", str(huge), "-o", str(tmp_path / "o"),
                        env={**ENV, "SDEDIT_MAX_PARAMETERS": "1e6"})
    assert env_limit.returncode == 2 and "over the limit" in env_limit.stderr and "SDEDIT_MAX_PARAMETERS" in \
        env_limit.stderr


def released_config(tmp_path: Path, old: str, new: str) -> Path:
    text = (DATA / "tiny.yml").read_text()
    assert old in text, old
    path = tmp_path / "bad.yml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("old, new", [
    ("num_diffusion_timesteps: 1000", "num_diffusion_timesteps: 0"), ("ch_mult:\n  - 1\n  - 2\n  - 2", "ch_mult: []"),
    ("image_size: 32", "image_size: abc"), ("  ch: 32", "  ch: -4"), ("image_size: 32", "image_size: 100000"),
    ("beta_start: 0.0001", "beta_start: 2.0"), ("model:", "model: !!python/object/apply:os.system ['echo']\nx:"),
])
def test_bad_released_config_values_are_input_errors_naming_the_file(tmp_path, capsys, old, new):
    cfg = released_config(tmp_path, old, new)
    err = one_line_error(capsys, main(["edit", str(stroke_png(tmp_path / "g.png")), "--model", str(DATA / "tiny.ckpt"),
                                       "--config", str(cfg), "-o", str(tmp_path / "o")]))
    assert "bad.yml" in err or "tiny.ckpt" in err


@pytest.mark.parametrize("change", [{"sample_size": "abc"}, {"norm_num_groups": 0}, {"block_out_channels": []},
                                    {"sample_size": 10**7}, {"layers_per_block": -1}])
def test_bad_diffusers_config_values_are_input_errors_naming_the_file(tmp_path, capsys, change):
    cfg = json.loads((Path(__import__("sdedit").__file__).parent / "weights" / "landscapes" / "config.json").read_text())
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**cfg, **change}))
    src = Path(__import__("sdedit").__file__).parent / "weights" / "landscapes" / "diffusion_pytorch_model.safetensors"
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(src.read_bytes())
    err = one_line_error(capsys, main(["edit", str(stroke_png(tmp_path / "g.png")), "--model", str(folder),
                                       "-o", str(tmp_path / "o")]))
    assert "config.json" in err or "diffusion_pytorch_model.safetensors" in err  # the config, or the weights' misfit


@pytest.mark.parametrize("batch_size", ["0", "abc", "null", "-2"])
def test_released_command_line_bad_batch_size_and_paths_leave_earlier_results_alone(tmp_path, capsys, batch_size):
    cfg = released_config(tmp_path, "batch_size: 2", f"batch_size: {batch_size}")
    img, mask = torch.rand(3, 32, 32), torch.ones(32, 32)
    torch.save([mask, img], tmp_path / "pair.pth")
    results = tmp_path / "exp" / "image_samples" / "images"
    results.mkdir(parents=True)
    (results / "earlier.png").write_bytes(b"earlier results")
    args = ["--config", str(cfg), "--ckpt", str(DATA / "tiny.ckpt"), "--exp", str(tmp_path / "exp"), "--sample",
            "--npy_name", str(tmp_path / "pair.pth"), "--t", "5", "--sample_step", "1", "--ni"]
    err = one_line_error(capsys, released_main(args))
    assert "bad.yml" in err
    for escape in (str(tmp_path / "elsewhere"), "../../outside", "~"):
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        one_line_error(capsys, released_main([*args[:2], str(DATA / "tiny.yml"), *args[3:], "-i",
                                              escape if escape != "~" else str(Path.home())]))
    assert tree(tmp_path / "exp") == {"image_samples", "image_samples/images", "image_samples/images/earlier.png"}
    assert (tmp_path / "elsewhere").is_dir() and Path.home().is_dir()


def test_a_released_run_that_fails_midway_keeps_the_earlier_results(tmp_path, capsys, monkeypatch):
    import sdedit.frontends.released_cli as released

    img, mask = torch.rand(3, 32, 32), torch.ones(32, 32)
    mask[:, :16] = 0
    torch.save([mask, img], tmp_path / "pair.pth")
    results = tmp_path / "exp" / "image_samples" / "images"
    results.mkdir(parents=True)
    (results / "earlier.png").write_bytes(b"earlier results")

    def broken(*a, **k):
        raise FloatingPointError("the denoiser returned NaN")

    monkeypatch.setattr("sdedit.engine.editing.edit_tensors", broken)
    code = released.main(["--config", str(DATA / "tiny.yml"), "--ckpt", str(DATA / "tiny.ckpt"), "--exp",
                          str(tmp_path / "exp"), "--sample", "--npy_name", str(tmp_path / "pair.pth"), "--t", "5",
                          "--sample_step", "1", "--ni"])
    one_line_error(capsys, code, expected=1)
    assert tree(tmp_path / "exp") == {"image_samples", "image_samples/images", "image_samples/images/earlier.png"}


def test_loader_errors_name_the_file_and_say_what_is_wrong(tmp_path, capsys):
    good = str(stroke_png(tmp_path / "g.png"))
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes((Path(__import__("sdedit").__file__).parent / "weights" / "landscapes" /
                       "diffusion_pytorch_model.safetensors").read_bytes()[:5000])
    err = one_line_error(capsys, main(["edit", good, "--model", str(trunc), "--config", str(DATA / "tiny.yml")]))
    assert "trunc.safetensors" in err and "pickle" not in err and "safetensors" in err
    evil = tmp_path / "evil.ckpt"
    torch.save({"w": Payload(str(tmp_path / "pwned"))}, evil)
    err = one_line_error(capsys, main(["edit", good, "--model", str(evil), "--config", str(DATA / "tiny.yml")]))
    assert "evil.ckpt" in err and "weights_only" not in err and not (tmp_path / "pwned").exists()
    for args, message in ((["download", "../../etc"], "not a Hub repository id"),
                          (["edit", good, *TINY, "--device", "meta"], "unknown device")):
        assert message in one_line_error(capsys, main(args))


def test_training_input_errors(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        stroke_png(folder / f"{i}.png", (16, 16), seed=i)
    err = one_line_error(capsys, main(["train", "--data", str(folder), "-o", str(tmp_path / "a"), "--size", "16",
                                       "--widths", "8,16", "--max-steps", "1", "-q"]))
    assert "--widths" in err
    run = tmp_path / "run"
    (run / "training").mkdir(parents=True)
    (run / "training" / "state.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    err = one_line_error(capsys, main(["train", "-o", str(run), "--resume", "-q"]))
    assert "state.safetensors" in err
    small = ["--data", str(folder), "--size", "16", "--widths", "16,16", "--attn-res", "8", "--batch-size", "2",
             "--layers-per-block", "1", "-q"]
    assert main(["train", "-o", str(tmp_path / "ok"), *small, "--max-steps", "1"]) == 0
    capsys.readouterr()
    err = one_line_error(capsys, main(["train", "-o", str(tmp_path / "ok"), *small, "--size", "32",
                                       "--max-steps", "2", "--resume"]))
    assert "--size 32 differs" in err


def test_eval_never_prints_a_number_that_is_not_one(tmp_path, capsys):
    assert main(["eval", *TINY, "--n", "4", "--t0", "0.5", "--steps", "2", "-o", str(tmp_path / "ev")]) == 0
    captured = capsys.readouterr()
    rows = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert all(r["kid_mean"] is None for r in rows) and "undefined" in captured.out
    assert "at least 20 real images" in captured.err


# --- A model folder's own facts (_sdedit in config.json) ------------------------------------------------------------


@pytest.mark.parametrize("facts", [{"recommended_t0": "0.3"}, {"recommended_t0": None}, {"recommended_t0": 5},
                                   {"recommended_t0": [0.3]}, {"recommended_t0": True}, {"recommended_t0": float("nan")},
                                   {"recommended_t0": 0}, {"recommended_t0": "auto"}, [0.3], "0.3", None, 7])
def test_bad_sdedit_facts_in_a_model_config_are_input_errors_naming_the_file(tmp_path, capsys, facts):
    import shutil

    from sdedit.loader import recommended_t0_of
    from sdedit.loading.presets import bundled_path

    folder = tmp_path / "model"
    shutil.copytree(bundled_path("landscapes"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["_sdedit"] = {**config["_sdedit"], **facts} if isinstance(facts, dict) else facts
    (folder / "config.json").write_text(json.dumps(config))
    good = stroke_png(tmp_path / "good.png", (32, 32))
    err = one_line_error(capsys, main(["edit", str(good), "--model", str(folder), "--steps", "1", "-o",
                                       str(tmp_path / "o"), "-q"]))
    assert str(folder / "config.json") in err and "_sdedit" in err and "or 'auto'" not in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(InputError, match="_sdedit"):  # what the web app shows before loading
        recommended_t0_of(folder)


def test_a_model_config_without_sdedit_facts_recommends_the_default_t0(tmp_path):
    import shutil

    from sdedit.loader import recommended_t0_of
    from sdedit.loading.presets import bundled_path
    from sdedit.settings import DEFAULT_T0

    folder = tmp_path / "model"
    shutil.copytree(bundled_path("landscapes"), folder)
    config = json.loads((folder / "config.json").read_text())
    assert recommended_t0_of(folder) == config["_sdedit"]["recommended_t0"]
    del config["_sdedit"]["recommended_t0"]
    (folder / "config.json").write_text(json.dumps(config))
    assert recommended_t0_of(folder) == DEFAULT_T0
    del config["_sdedit"]
    (folder / "config.json").write_text(json.dumps(config))
    assert recommended_t0_of(folder) == DEFAULT_T0


# --- Training from another run's weights: every --init-from problem before any data is made ------------------------


def test_init_from_problems_are_refused_before_the_data_is_made(tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file, save_file

    from sdedit.research import training

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        stroke_png(folder / f"{i}.png", (16, 16), seed=i)
    small = ["--data", str(folder), "--size", "16", "--widths", "16,16", "--attn-res", "8", "--batch-size", "2",
             "--layers-per-block", "1", "--max-steps", "1", "-q"]
    base = tmp_path / "base"
    assert main(["train", "-o", str(base), *small]) == 0
    capsys.readouterr()
    weights = load_file(base / "diffusion_pytorch_model.safetensors")

    def variant(name: str, change) -> Path:
        import shutil

        shutil.copytree(base, tmp_path / name, ignore=shutil.ignore_patterns("training"))
        change(tmp_path / name)
        return tmp_path / name

    def wrong_shape(f: Path) -> None:
        key = next(k for k, v in weights.items() if v.ndim == 4)
        save_file({**weights, key: torch.zeros(3, 3, 3, 3)}, f / "diffusion_pytorch_model.safetensors")

    def huge_header(f: Path) -> None:  # a header declaring a 2^40-element tensor, with no data behind it
        header = json.dumps({k: {"dtype": "F32", "shape": [2**20, 2**20] if i == 0 else list(v.shape),
                                 "data_offsets": [0, 4]} for i, (k, v) in enumerate(weights.items())}).encode()
        (f / "diffusion_pytorch_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)

    sources = {
        "nonexistent": (tmp_path / "nope", "not a folder"),
        "other network": (base, "differs"),  # used below with --layers-per-block 2
        "config not json": (variant("badjson", lambda f: (f / "config.json").write_text("{not json")), "config.json"),
        "no weights": (variant("noweights", lambda f: (f / "diffusion_pytorch_model.safetensors").unlink()),
                       "diffusion_pytorch_model.safetensors"),
        "wrong shape": (variant("wrongshape", wrong_shape), "is (3, 3, 3, 3)"),
        "missing tensor": (variant("missing", lambda f: save_file(dict(list(weights.items())[1:]),
                                                                  f / "diffusion_pytorch_model.safetensors")),
                           "no tensor"),
        "corrupt": (variant("corrupt", lambda f: (f / "diffusion_pytorch_model.safetensors").write_bytes(
            b"\xff" * 8 + b"{")), "safetensors"),
        "huge header": (variant("huge", huge_header), "safetensors"),
    }

    def no_data(*_args, **_kwargs):
        raise AssertionError("the data was made before --init-from was checked")

    monkeypatch.setattr(training, "load_folder", no_data)
    monkeypatch.setattr(training, "synthetic_data", no_data)
    for case, (source, message) in sources.items():
        out = tmp_path / f"out-{case.replace(' ', '-')}"
        extra = ["--layers-per-block", "2"] if case == "other network" else []
        start = time.monotonic()
        err = one_line_error(capsys, main(["train", "-o", str(out), *small, *extra, "--init-from", str(source)]))
        assert message in err and "--init-from" in err, (case, err)
        assert time.monotonic() - start < 30 and not out.exists(), case
    monkeypatch.undo()
    # A good source starts the run from its weights; resuming that run needs the source no longer.
    _, start_weights = training.initial_weights(training.TrainConfig(size=16, widths=(16, 16), attn_res=(8,),
                                                                     layers_per_block=1, init_from=str(base)))
    assert all(torch.equal(start_weights[k], weights[k].float()) for k in weights)
    run = tmp_path / "run"
    assert main(["train", "-o", str(run), *small, "--init-from", str(base)]) == 0
    moved = base.rename(tmp_path / "moved")
    assert main(["train", "-o", str(run), *small[:-3], "--max-steps", "2", "--init-from", str(base), "--resume",
                 "-q"]) == 0
    assert moved.is_dir()


# --- Masks that leave nothing to edit --------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--mask", "--strength-map"])
@pytest.mark.parametrize("crop", [[], ["--crop-to-mask"], ["--crop-to-mask", "0"]])
def test_an_all_black_mask_returns_the_whole_photo_exactly_not_a_thumbnail(tmp_path, capsys, flag, crop):
    big = stroke_png(tmp_path / "big.png", (200, 120))  # larger than the tiny model: crop-to-mask by default
    Image.new("L", (200, 120), 0).save(tmp_path / "black.png")
    out = tmp_path / "o"
    assert main(["edit", str(big), flag, str(tmp_path / "black.png"), *crop, *TINY, "--steps", "1", "--seed", "0",
                 "-o", str(out), "-q"]) == 0
    (result,) = out.glob("*.png")  # a keep-everything mask returns the input, bit for bit, at its own size
    assert np.array_equal(np.asarray(Image.open(result).convert("RGB")), np.asarray(Image.open(big).convert("RGB")))


def test_nothing_to_edit_in_the_api_composite_and_batch(tmp_path, capsys):
    from sdedit.api import edit, prepare_guide
    from sdedit.loader import load_model

    model = load_model(str(DATA / "tiny.ckpt"), config=str(DATA / "tiny.yml"))
    img = Image.new("RGB", (300, 40), (9, 9, 9))
    for kwargs in ({"mask": Image.new("L", img.size, 0)}, {"strength_map": Image.new("L", img.size, 0)},
                   {"mask": Image.new("L", img.size, 0), "mask_grow": 8, "mask_feather": 8, "crop_to_mask": True}):
        (out,) = edit(model, img, steps=1, seed=0, progress=False, **kwargs)
        assert np.array_equal(np.asarray(out), np.asarray(img))
    one = Image.new("L", img.size, 0)
    one.putpixel((299, 39), 255)  # one pixel in a corner of a wide image: still edited, in a box inside the image
    guide = prepare_guide(model, img, one, crop_to_mask=True)
    box = guide.frame.box
    assert guide.frame.whole_input and 0 <= box[0] < 299 < box[2] <= 300 and 0 <= box[1] < 39 < box[3] <= 40
    # composite: a fully transparent patch pastes nothing
    bg = stroke_png(tmp_path / "bg.png", (64, 48))
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    err = one_line_error(capsys, main(["composite", str(bg), str(tmp_path / "clear.png"), "--at", "5,5", *TINY,
                                       "--steps", "1", "-o", str(tmp_path / "c"), "-q"]))
    assert "transparent" in err and not (tmp_path / "c").exists()
    # batch: an all-black mask's item is done, and its output is its input, bit for bit
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    for name, fill in (("a", 0), ("b", 255)):
        stroke_png(tmp_path / "in" / f"{name}.png", (64, 48))
        Image.new("L", (64, 48), fill).save(tmp_path / "masks" / f"{name}.png")
    assert main(["batch", str(tmp_path / "in"), "--masks", str(tmp_path / "masks"), *TINY, "--steps", "1", "-o",
                 str(tmp_path / "b"), "-q"]) == 0
    records = {r["input"]: r for r in map(json.loads, (tmp_path / "b" / "manifest.jsonl").read_text().splitlines())}
    assert records["a.png"]["status"] == "done" and records["b.png"]["status"] == "done"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b" / "a.png").convert("RGB")),
                          np.asarray(Image.open(tmp_path / "in" / "a.png").convert("RGB")))


@pytest.mark.parametrize("padding", ["-5", "4097", "99999999999999999999"])
def test_crop_padding_out_of_range_says_the_range(tmp_path, capsys, padding):
    good = stroke_png(tmp_path / "good.png", (32, 32))
    mask = stroke_png(tmp_path / "mask.png", (32, 32))
    err = one_line_error(capsys, main(["edit", str(good), "--mask", str(mask), "--crop-to-mask", padding, *TINY, "-o",
                                       str(tmp_path / "o"), "-q"]))
    assert "from 0 to 4096" in err and not (tmp_path / "o").exists()


ROOT = Path(__file__).resolve().parents[1]
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + \
    "data: {category: *i}\n"


@pytest.mark.parametrize("content, message", [
    (BOMB, "aliases"), ("data: [1, 2]\nmodel: [3]\ndiffusion: {}\n", "not a released SDEdit/DDIM config"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "cannot read config"), ("- just\n- a list\n", "expected a YAML mapping"),
])
def test_configs_with_aliases_deep_nesting_or_wrong_types_are_one_line_in_bounded_memory(tmp_path, content, message):
    """A 700-byte YAML of nested aliases grew to gigabytes when a value was formatted; aliases are refused."""
    import resource

    from sdedit.loading.released_format import read_config

    path = tmp_path / "cfg.yml"
    path.write_text(content)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match=message) as e:
        read_config(path)
    assert len(str(e.value)) < 500 and "\n" not in str(e.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KB: no expansion
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(path), "--npy_name", "x"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-500:]


def test_a_config_that_is_a_fifo_is_refused_without_hanging(tmp_path):
    from sdedit.loading.released_format import read_config

    fifo = tmp_path / "cfg.yml"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_config(fifo)


@pytest.mark.parametrize("flag, value, message", [
    ("-n", "1000000000", "-n must be an integer from 1 to 10000"),
    ("--steps", "1000000000", "--steps must be an integer from 1 to 10000"),
    ("--repeats", "1000", "--repeats must be an integer from 1 to 100"),
    ("--batch-size", "100000", "--batch-size must be an integer from 1 to 4096"),
])
def test_counts_are_bounded_before_any_work(tmp_path, capsys, flag, value, message):
    start = time.monotonic()
    assert main(["edit", str(ROOT / "examples" / "landscape-strokes.png"), flag, value, "-o", str(tmp_path / "o"),
                 "-q"]) == 2
    assert message in capsys.readouterr().err and time.monotonic() - start < 10
    assert not (tmp_path / "o").exists()


def test_an_uncached_preset_without_a_reachable_hub_fails_fast_in_one_line(tmp_path):
    """Offline without HF_HUB_OFFLINE: one short connection attempt, then the cache only (no minute of retries)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens on port 9
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "sdedit", "edit", str(ROOT / "examples" / "landscape-strokes.png"),
                        "--model", "church", "-o", str(tmp_path / "o"), "-q"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-800:]
    assert "not in the Hugging Face cache" in r.stderr and "no connection to it within 3 s" in r.stderr
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("fmt", ["PCX", "SGI", "TGA", "EPS"])
def test_only_the_listed_image_formats_are_decoded_whatever_the_name(tmp_path, fmt):
    from sdedit.images import open_image

    path = tmp_path / "looks-like.png"
    if fmt == "EPS":
        path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    else:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(path, format=fmt)
    with pytest.raises(InputError, match="not a readable image"):
        open_image(path)
    Image.new("RGB", (8, 8)).save(tmp_path / "real.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "phone.jpg", format="MPO")  # a phone's multi-picture JPEG
    assert open_image(tmp_path / "real.png").size == (8, 8) and open_image(tmp_path / "phone.jpg").size == (8, 8)
    (tmp_path / "junk.png").write_bytes(b"\x00" * 64)  # no decoder accepts it: every listed one is asked
    with pytest.raises(InputError, match="not a readable image"):
        open_image(tmp_path / "junk.png")
