"""Model loading refuses hostile files in one line before the expensive work: zip bombs, FIFOs, configs whose
compute or size is out of reach, configs that disagree with their weights, bad LoRAs, bad limit settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdedit import InputError, load_model
from sdedit.frontends.cli import main
from sdedit.loading.checkpoints import read_state_dict

from .conftest import DATA
from .helpers import stroke_png
from .tiny_sd import make_tiny_sd

BUNDLED = Path(__import__("sdedit").__file__).parent / "weights" / "landscapes"


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in a child process, so that a hang fails the test (timeout) instead of stopping the suite."""
    return subprocess.run([sys.executable, "-m", "sdedit", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def error_lines(stderr: str) -> list[str]:
    """stderr without progress bars (transformers draws one while loading a text encoder)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and "it/s]" not in ln]


def pixel_folder(folder: Path, **config) -> Path:
    """A copy of the bundled 64 px model with config values changed."""
    folder.mkdir()
    shutil.copy(BUNDLED / "diffusion_pytorch_model.safetensors", folder)
    cfg = json.loads((BUNDLED / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **config}))
    return folder


def rezip_deflated(src: Path, dst: Path) -> Path:
    """A torch.save archive re-written with every member deflate-compressed (torch.load reads such files)."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as b:
        for member in a.infolist():
            b.writestr(member.filename, a.read(member.filename))
    return dst


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    make_tiny_sd(root / "sd")
    return root / "sd"


def test_a_zip_bomb_checkpoint_is_refused_from_its_directory_before_decompressing(tmp_path, capsys, monkeypatch):
    torch.save({"w": torch.zeros(4_000_000)}, tmp_path / "raw.ckpt")  # 16 MB of zeros: deflates to ~16 KB
    bomb = rezip_deflated(tmp_path / "raw.ckpt", tmp_path / "bomb.ckpt")
    assert bomb.stat().st_size < 100_000
    assert torch.load(bomb, weights_only=True)["w"].shape == (4_000_000,)  # torch itself would inflate it whole
    good = stroke_png(tmp_path / "g.png")
    err = one_line_error(capsys, main(["edit", str(good), "--model", str(bomb), "--config", str(DATA / "tiny.yml"),
                                       "-o", str(tmp_path / "o")]))
    assert "bomb.ckpt" in err and "expand to 16.0 MB" in err and "data/0" in err
    # A compressed checkpoint that expands as weights do is read as it always was.
    compressed = rezip_deflated(DATA / "tiny.ckpt", tmp_path / "tiny-deflated.ckpt")
    plain = read_state_dict(DATA / "tiny.ckpt")
    assert {k: v.tolist() for k, v in read_state_dict(compressed).items()} == {k: v.tolist() for k, v in plain.items()}
    # The refusal comes from the archive's directory: torch.load is never reached.
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load ran on a zip bomb"))
    with pytest.raises(InputError, match="refused before decompressing"):
        read_state_dict(bomb)


@pytest.mark.parametrize("name, value", [("SDEDIT_MAX_PARAMETERS", "inf"), ("SDEDIT_MAX_PARAMETERS", "-1"),
                                         ("SDEDIT_MAX_PARAMETERS", "0"), ("SDEDIT_MAX_PARAMETERS", "2.5"),
                                         ("SDEDIT_MAX_PARAMETERS", "nan"), ("SDEDIT_MAX_TFLOPS", "inf"),
                                         ("SDEDIT_MAX_TFLOPS", "-1"), ("SDEDIT_MAX_TFLOPS", "lots")])
def test_limit_settings_must_be_positive_numbers(tmp_path, capsys, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    err = one_line_error(capsys, main(["edit", str(stroke_png(tmp_path / "g.png")), "-o", str(tmp_path / "o")]))
    assert f"{name} must be a positive" in err and repr(value) in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_fifo_in_a_model_folder_is_refused_without_hanging(tmp_path, tiny_sd):
    good = str(stroke_png(tmp_path / "g.png"))
    pixel = tmp_path / "pixel"
    pixel.mkdir()
    shutil.copy(BUNDLED / "diffusion_pytorch_model.safetensors", pixel)
    os.mkfifo(pixel / "config.json")
    r = run_cli("edit", good, "--model", str(pixel), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and error_lines(r.stderr) == [r.stderr.strip()], r.stderr
    assert "config.json is not a regular file" in r.stderr
    sd = tmp_path / "sd"
    shutil.copytree(tiny_sd, sd)
    (sd / "tokenizer" / "tokenizer.json").unlink()
    os.mkfifo(sd / "tokenizer" / "tokenizer.json")  # read by the tokenizer, deep inside transformers
    r = run_cli("edit", good, "--model", str(sd), "--prompt", "x", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "tokenizer.json is not a regular file" in r.stderr and \
        len(error_lines(r.stderr)) == 1, r.stderr


def test_a_pixel_config_is_bounded_by_the_compute_of_one_step(tmp_path, capsys, monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    from sdedit.families.pixel import unet_flops, unet_from_config

    # The estimate is the network's real cost: counted against torch's FLOP counter on the meta device.
    cfg = json.loads((BUNDLED / "config.json").read_text())
    with torch.device("meta"):
        net = unet_from_config(cfg)
        with FlopCounterMode(display=False) as counter:
            net(torch.empty(1, 3, 128, 128), torch.empty(1))
    assert 0.9 < unet_flops(net, 128) / counter.get_total_flops() < 1.15
    # A 64 px network configured for 1024 px: attention over 65536 pixels, about 6 TFLOPs a step.
    big = pixel_folder(tmp_path / "big", sample_size=1024)
    err = one_line_error(capsys, main(["edit", str(stroke_png(tmp_path / "g.png")), "--model", str(big),
                                       "-o", str(tmp_path / "o")]))
    assert "config.json: sample_size 1024 costs about 6.3 TFLOPs" in err and "SDEDIT_MAX_TFLOPS" in err
    (tmp_path / "big.yml").write_text((DATA / "tiny.yml").read_text().replace("image_size: 32", "image_size: 2048"))
    with pytest.raises(InputError, match="big.yml: image_size 2048 costs about"):
        load_model(DATA / "tiny.ckpt", config=tmp_path / "big.yml")
    # The compute is the only reason: with a higher limit the same folder loads (nothing is run here).
    monkeypatch.setenv("SDEDIT_MAX_TFLOPS", "10")
    assert load_model(big, device="cpu").resolution == 1024
    assert load_model("landscapes", device="cpu").resolution == 64


def test_text_encoder_configs_are_checked_before_building(tmp_path, capsys, tiny_sd):
    good = str(stroke_png(tmp_path / "g.png"))
    for change, message in (({"hidden_size": 65536, "intermediate_size": 262144}, "103.1 billion parameters"),
                            ({"hidden_size": 48}, "the config and the weights disagree")):
        sd = tmp_path / f"sd-{len(change)}"
        shutil.copytree(tiny_sd, sd)
        config = sd / "text_encoder" / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
        err = one_line_error(capsys, main(["edit", good, "--model", str(sd), "--prompt", "x",
                                           "-o", str(tmp_path / "o")]))
        assert message in err and "text_encoder" in err, err


@pytest.fixture(scope="module")
def wrong_lora(tiny_sd, tmp_path_factory):
    """A LoRA made for a UNet of other widths: its first down projection has 35 inputs, the tiny UNet's layer 32."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(tiny_sd / "unet"))
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k"], init_lora_weights=False))
    state = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    state = {k: torch.zeros(v.shape[0], v.shape[1] + 3) if ".lora_A." in k else v for k, v in state.items()}
    path = tmp_path_factory.mktemp("lora") / "wrong.safetensors"
    save_file(state, str(path))
    return path


def test_a_wrong_shaped_lora_is_one_line_naming_the_file_and_the_first_tensor(tmp_path, tiny_sd, wrong_lora):
    r = run_cli("edit", str(stroke_png(tmp_path / "g.png")), "--model", str(tiny_sd), "--prompt", "x",
                "--steps", "1", "--lora", str(wrong_lora), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "size mismatch" not in r.stderr, r.stderr
    assert len(error_lines(r.stderr)) == 1, r.stderr
    assert str(wrong_lora) in r.stderr and "lora_A.weight' has shape (4, 35), the model's layer needs (4, 32)" in \
        r.stderr and "unet.down_blocks.0." in r.stderr, r.stderr
    assert set(load_file(str(wrong_lora))) >= {k for k in r.stderr.split("'") if k.startswith("unet.")}
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_lora_files_are_checked_before_the_model_loads(tmp_path, capsys, monkeypatch, tiny_sd):
    import sdedit.loader

    os.mkfifo(tmp_path / "fifo.safetensors")
    (tmp_path / "unreadable.safetensors").write_bytes(b"x")
    (tmp_path / "unreadable.safetensors").chmod(0)
    cases = [(tmp_path / "missing.safetensors", "LoRA not found"), (tmp_path / "fifo.safetensors", "not a regular file")]
    if os.geteuid() != 0:  # root reads any file
        cases.append((tmp_path / "unreadable.safetensors", "cannot be read"))
    monkeypatch.setattr(sdedit.loader, "_load", lambda *a, **k: pytest.fail("the model loaded before the LoRA check"))
    for lora, message in cases:
        with pytest.raises(InputError, match=message):
            load_model(tiny_sd, loras=[str(lora)])
    monkeypatch.undo()
    # On the command line: the LoRA is named, not the model folder that does not exist either.
    err = one_line_error(capsys, main(["edit", str(stroke_png(tmp_path / "g.png")), "--model",
                                       str(tmp_path / "no-model"), "--prompt", "x", "--lora",
                                       str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "o")]))
    assert "LoRA not found" in err and "missing.safetensors" in err
