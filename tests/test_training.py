"""`sdedit train`: a folder of images, exact resume (also after a kill), and a checkpoint `sdedit edit` uses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sdedit import load_model
from sdedit.frontends.cli import main
from sdedit.images import read_settings
from sdedit.research import training
from sdedit.research.landscapes import landscapes
from sdedit.research.training import PREVIEW_STEPS, Landscapes, TrainConfig, preview_steps, read_training_meta, train

SMALL = ["--size", "16", "--widths", "16,16", "--attn-res", "8", "--layers-per-block", "1", "--batch-size", "4"]


@pytest.fixture()
def folder(tmp_path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(d / f"{i}.png")
    (d / "notes.txt").write_text("not an image")
    return d


def small_cfg(folder: Path, **kw) -> TrainConfig:
    return TrainConfig(data=str(folder), size=16, widths=(16, 16), attn_res=(8,), layers_per_block=1, norm_groups=8,
                       batch_size=4, **kw)


def test_resume_continues_exactly(folder, tmp_path):
    train(small_cfg(folder, max_steps=6), tmp_path / "straight", progress=False)
    train(small_cfg(folder, max_steps=3), tmp_path / "split", progress=False)
    train(small_cfg(folder, max_steps=6), tmp_path / "split", resume=True, progress=False)
    a = load_file(str(tmp_path / "straight" / "training" / "state.safetensors"))
    b = load_file(str(tmp_path / "split" / "training" / "state.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("opt.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    meta = read_training_meta(tmp_path / "split" / "training" / "state.safetensors")
    assert meta["state"]["step"] == 6 and meta["state"]["images"] == 24
    assert [step for step, _ in meta["state"]["losses"]] == [1, 2, 3, 4, 5, 6]  # a short run's curve: every step
    for name in ("loss.png", "samples.png"):
        assert Image.open(tmp_path / "split" / "training" / name).size[0] > 16
    assert read_settings(tmp_path / "split" / "training" / "samples.png")["steps"] == PREVIEW_STEPS  # no budget
    # The EMA weights moved away from the raw weights and from their start.
    assert not torch.equal(a["ema.conv_in.weight"], a["model.conv_in.weight"])


def test_killed_run_resumes_and_edit_uses_it(folder, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "SDEDIT_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "sdedit", "train", "--data", str(folder), "-o", str(out), *SMALL,
           "--max-steps", "100000", "--save-every", "0", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "training" / "state.safetensors"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (state.is_file() and read_training_meta(state)["state"]["step"] >= 3):
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    step = read_training_meta(state)["state"]["step"]
    assert step >= 3
    assert main(["train", "--data", str(folder), "-o", str(out), *SMALL, "--max-steps", str(step + 2), "--resume",
                 "-q"]) == 0
    assert read_training_meta(state)["state"]["step"] == step + 2
    model = load_model(out)
    assert model.resolution == 16 and model.info["format"] == "diffusers"
    img = folder / "0.png"
    assert main(["edit", str(img), "--model", str(out), "--steps", "3", "-o", str(tmp_path / "edits"), "-q"]) == 0
    assert len(list((tmp_path / "edits").glob("*.png"))) == 1


def test_refuses_to_train_over_a_folder(folder, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    assert main(["train", "--data", str(folder), "-o", str(out), *SMALL, "--max-steps", "1", "-q"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nothing"), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert main(["train", "-o", str(tmp_path / "o2"), "--resume", "-q"]) == 2
    assert (out / "mine.txt").read_text() == "x"
    # something else with the output's name: a file, a dangling link; refused at once, left as it was
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("afile", "dangling"):
        assert main(["train", "--data", str(folder), "-o", str(tmp_path / name), *SMALL, "--max-steps", "1", "-q"]) == 2
        assert "exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "mine" and not (tmp_path / "nowhere").exists()


def test_cosine_schedule_warms_up_then_decays_to_zero(folder, tmp_path, capsys):
    from sdedit.research.training import learning_rate

    const = small_cfg(folder, lr=1e-3, warmup=10)
    cos = small_cfg(folder, lr=1e-3, warmup=10, lr_schedule="cosine", max_steps=110)
    assert learning_rate(const, 4) == pytest.approx(5e-4) and learning_rate(const, 100) == pytest.approx(1e-3)
    assert learning_rate(cos, 4) == pytest.approx(5e-4 * 0.5 * (1 + np.cos(np.pi * 4 / 110)))
    assert learning_rate(cos, 55) == pytest.approx(5e-4)  # half-way down the cosine
    assert learning_rate(cos, 109) < 1e-6 and learning_rate(cos, 110) == 0.0
    lrs = [learning_rate(cos, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # The optimizer really runs at that rate, and a cosine run without an end is refused before any work.
    train(small_cfg(folder, lr=1e-3, warmup=2, lr_schedule="cosine", max_steps=4), tmp_path / "run", progress=False)
    meta = read_training_meta(tmp_path / "run" / "training" / "state.safetensors")
    assert meta["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 3 / 4)))
    assert main(["train", "--data", str(folder), "-o", str(tmp_path / "o"), *SMALL, "--lr-schedule", "cosine",
                 "-q"]) == 2
    assert "--max-steps" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["train", "--data", str(folder), "-o", str(tmp_path / "o"), *SMALL, "--lr-schedule", "linear",
                 "--max-steps", "3", "-q"]) == 2
    assert "constant, cosine" in capsys.readouterr().err and not (tmp_path / "o").exists()
    for steps in ("0", "-3"):  # nothing to train is an input error, not an empty model
        assert main(["train", "--data", str(folder), "-o", str(tmp_path / "o"), *SMALL, "--max-steps", steps,
                     "-q"]) == 2
        assert "--max-steps must be a whole number from 1 to" in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


def test_ema_warms_up_from_random_weights_and_keeps_trained_ones(folder, tmp_path):
    """From random weights the EMA forgets its start ((1 + n) / (10 + n) caps the decay: after one step it is
    0.1 start + 0.9 weights); from trained weights (--init-from) it keeps them at the full decay."""
    import json

    def one_step(out: Path, **kw) -> tuple[dict, dict]:
        train(small_cfg(folder, max_steps=1, ema_decay=0.75, lr=1e-2, **kw), out, progress=False)
        return load_file(str(out / "training" / "state.safetensors")), load_file(
            str(out / "diffusion_pytorch_model.safetensors"))

    first, _ = one_step(tmp_path / "random")
    # the random start, re-made from the same seed (initial weights do not touch the global RNG)
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    start = UNet2DModel(**small_cfg(folder).unet_config()).state_dict()
    key = "conv_in.weight"
    moved = first[f"model.{key}"]
    assert not torch.equal(moved, start[key])
    torch.testing.assert_close(first[f"ema.{key}"], 0.1 * start[key] + 0.9 * moved)

    source = tmp_path / "random"
    assert json.loads((source / "config.json").read_text())["_sdedit"]["trained_steps"] == 1
    cont, _ = one_step(tmp_path / "continued", init_from=str(source))
    src = load_file(str(source / "diffusion_pytorch_model.safetensors"))
    moved = cont[f"model.{key}"]
    assert not torch.equal(moved, src[key].float())
    torch.testing.assert_close(cont[f"ema.{key}"], 0.75 * src[key].float() + 0.25 * moved)


@pytest.mark.parametrize("args, message", [
    (["--size", "4096"], "--size must be a whole number from 8 to 512, got 4096"),
    (["--size", "0"], "--size must be"),
    (["--size", "60"], "--size 60 must be a multiple of 8"),
    (["--batch-size", "100000"], "--batch-size must be"),
    (["--batch-size", "1024", "--size", "128", "--attn-res", "16"], "pixels a step"),
    (["--num-images", "1000000", "--size", "256", "--attn-res", "32"], "GiB of landscapes"),
    (["--minutes", "inf"], "--minutes must be a number > 0"),
    (["--minutes", "0"], "--minutes must be a number > 0"),
    (["--lr", "nan"], "--lr must be"),
    (["--lr", "5"], "--lr must be"),
    (["--max-steps", "99999999999"], "--max-steps must be"),
    (["--save-every", "-1"], "--save-every must be"),
    (["--seed", "-1"], "--seed must be"),
    (["--layers-per-block", "100"], "--layers-per-block must be"),
    (["--widths", "16,16,16,16,16,16,16"], "--widths must be 1 to 6"),
    (["--widths", "4096"], "--widths must be"),
    (["--size", "16", "--widths", "16,16", "--attn-res", "32"], "--attn-res 32 is no level's resolution"),
])
def test_numbers_are_bounded_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    """A number out of its bounds is refused in one line (exit 2) before any data is made or anything written."""
    def no_work(*_args, **_kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(training, "synthetic_data", no_work)
    monkeypatch.setattr(training, "Trainer", no_work)
    assert main(["train", "-o", str(tmp_path / "o"), *args, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_a_bad_output_folder_fails_before_the_data_is_made(tmp_path, capsys, monkeypatch):
    def no_work(*_args, **_kwargs):
        raise AssertionError("the data was made before the output folder was checked")

    monkeypatch.setattr(training, "synthetic_data", no_work)
    monkeypatch.setattr(training, "load_folder", no_work)
    (tmp_path / "afile").write_text("mine")
    assert main(["train", "-o", str(tmp_path / "afile" / "run"), *SMALL, "--max-steps", "1", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "afile" in err and len(err.splitlines()) == 1
    assert (tmp_path / "afile").read_text() == "mine"


def test_landscapes_are_made_as_batches_draw_them_then_cached(tmp_path):
    data = Landscapes(5, 16, tmp_path / "cache")
    assert len(data) == 5 and data.made == 0  # nothing made up front
    eager = torch.from_numpy(landscapes(0, 5, 16)).permute(0, 3, 1, 2)
    batch = data[torch.tensor([3, 1, 3])]
    assert torch.equal(batch, eager[[3, 1, 3]]) and data.made == 2
    assert not (tmp_path / "cache").exists()  # cached only once complete
    assert torch.equal(data[torch.tensor([0, 2, 4])], eager[[0, 2, 4]]) and data.made == 5
    cached = Landscapes(5, 16, tmp_path / "cache")
    assert cached.made == 5 and torch.equal(cached[torch.arange(5)], eager)


def test_minutes_bound_the_whole_command(folder, tmp_path, capsys):
    """--minutes covers the preview and the writing: a budget too short for more trains one step and samples the
    preview in the steps that fit (at least one), recorded in its metadata; every phase says what it does."""
    assert preview_steps(None, 32, 60.0) == PREVIEW_STEPS and preview_steps(3.0, 32, None) == PREVIEW_STEPS
    assert preview_steps(3.0, 32, 60.0) == 30  # a forward pass of 16 images: a third of a 32-image step
    assert preview_steps(1000.0, 32, 60.0) == 1
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), "-o", str(out), *SMALL, "--minutes", "0.001"]) == 0
    meta = read_training_meta(out / "training" / "state.safetensors")
    assert meta["state"]["step"] == 1
    assert read_settings(out / "training" / "samples.png")["steps"] < PREVIEW_STEPS
    err = capsys.readouterr().err
    for phase in ("data: 20 images", "training in", "preview: 16 samples", "wrote"):
        assert phase in err, phase
