"""The released command line: python main.py --config ... --sample --npy_name ... --t ... --ni."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from sdedit.frontends.released_cli import main, read_pair

from .conftest import DATA
from .test_reference import Payload

ROOT = Path(__file__).parent.parent


def make_input(folder: Path, order: str = "mask,img") -> torch.Tensor:
    img = torch.rand(3, 32, 32)
    mask = torch.ones(3, 32, 32)
    mask[:, :, :16] = 0  # released convention: 1 = keep, so the left half is edited
    (folder / "colab_demo").mkdir(exist_ok=True)
    pair = [mask, img] if order == "mask,img" else [img, mask[0]]
    torch.save(pair, folder / "colab_demo" / "lsun_tiny.pth")
    return img


def legacy(tmp_path: Path, *extra: str) -> int:
    return main(["--exp", str(tmp_path / "runs"), "--config", str(DATA / "tiny.yml"), "--ckpt", str(DATA / "tiny.ckpt"),
                 "--sample", "-i", "images", "--npy_name", str(tmp_path / "colab_demo" / "lsun_tiny"),
                 "--sample_step", "2", "--t", "20", *extra])


def test_released_layout_and_kept_region(tmp_path):
    img = make_input(tmp_path)
    old_umask = os.umask(0o027)  # folders follow the umask (0750 here), not a private 0700
    try:
        assert legacy(tmp_path, "--ni") == 0
    finally:
        os.umask(old_umask)
    out = tmp_path / "runs" / "image_samples" / "images"
    assert stat.S_IMODE(out.stat().st_mode) == 0o750 and stat.S_IMODE(out.parent.stat().st_mode) == 0o750
    names = sorted(p.name for p in out.iterdir())
    assert names == ["init_0.png", "init_1.png", "original_input.png", "samples_0.png", "samples_0.pth",
                     "samples_1.png", "samples_1.pth"]
    x = torch.load(out / "samples_1.pth", weights_only=True)
    assert x.shape == (2, 3, 32, 32)  # config sampling.batch_size copies
    assert torch.equal(x[..., 16:], (img * 2 - 1)[None, :, :, 16:].expand(2, -1, -1, -1))  # kept exactly
    assert not torch.equal(x[0, :, :, :16], x[1, :, :, :16])


def test_existing_folder_is_moved_aside_never_deleted(tmp_path, monkeypatch, capsys):
    make_input(tmp_path, order="img,mask")
    out = tmp_path / "runs" / "image_samples" / "images"
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("precious")
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    assert legacy(tmp_path) == 2  # asked, no answer: refuse
    assert (out / "mine.txt").read_text() == "precious" and len(list(out.iterdir())) == 1
    assert legacy(tmp_path, "--ni") == 0
    assert (out.parent / "images.old-1" / "mine.txt").read_text() == "precious"
    assert (out / "samples_1.png").exists()


def test_read_pair_orders_and_refuses_pickles(tmp_path):
    img, mask = torch.rand(3, 8, 8), torch.ones(8, 8)
    mask[0, 0] = 0
    for pair in ([mask, img], [img, mask], [mask.expand(3, -1, -1), img]):
        torch.save(pair, tmp_path / "p.pth")
        got_img, omega = read_pair(tmp_path / "p.pth")
        assert torch.equal(got_img, img) and omega.sum() == 1 and omega[0, 0] == 1
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump([Payload(str(tmp_path / "pwned")), img], f)
    from sdedit import InputError

    with pytest.raises(InputError, match="pickled code is refused"):
        read_pair(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("extra, message", [
    (["--npy_name", "nothing_here"], "input not found"),
    (["--t", "0"], "--t must be in 1..1000"),
    (["--config", "nope.yml"], "config not found"),
])
def test_bad_legacy_input_exits_2(tmp_path, capsys, extra, message):
    make_input(tmp_path)
    assert legacy(tmp_path, "--ni", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_main_py_runs_as_a_script(tmp_path):
    import subprocess
    import sys

    make_input(tmp_path)
    cmd = [sys.executable, str(ROOT / "main.py"), "--exp", "runs", "--config", str(DATA / "tiny.yml"),
           "--ckpt", str(DATA / "tiny.ckpt"), "--sample", "-i", "images", "--mask_image_file", "lsun_tiny",
           "--sample_step", "1", "--t", "5", "--ni"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs" / "image_samples" / "images" / "samples_0.png").exists()
