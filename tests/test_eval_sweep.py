"""`sdedit eval` and `sdedit sweep` run end to end on a small model and write what they promise."""

from __future__ import annotations

import csv
import json

import pytest

from PIL import Image

from sdedit.frontends.cli import main
from sdedit.research.landscapes import landscape

from .conftest import DATA

TINY = ["--model", str(DATA / "tiny.ckpt"), "--config", str(DATA / "tiny.yml")]


def test_eval_writes_tables(tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["eval", *TINY, "--n", "6", "--t0", "0.2", "0.6", "0.20", "--sampler", "ddim", "dpm++2m", "--steps", "3",
            "-o", str(out)]  # 0.2 twice: one row
    assert main(args) == 0
    rows = json.loads((out / "eval.json").read_text())
    assert [r["what"] for r in rows[:2]] == ["stroke inputs", "originals of the strokes"]
    runs = rows[2:]
    assert [(r["t0"], r["nfe"]) for r in runs] == [(0.2, 3), (0.6, 3)] * 2
    assert all(r["l2_mean"] > 0 and r["seconds_per_image"] > 0 for r in runs)
    assert rows[0]["l2_mean"] == 0.0  # the strokes are their own guide
    with open(out / "eval.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert "| stroke inputs |" in (out / "eval.md").read_text()
    before = (out / "eval.json").read_bytes()
    assert main(args[:-2] + ["-o", str(out)]) == 0  # a second run never replaces the first
    assert (out / "eval.json").read_bytes() == before and (out / "eval-1.json").is_file()


def test_eval_bad_input(tmp_path, capsys):
    assert main(["eval", *TINY, "--t0", "1.5", "-o", str(tmp_path)]) == 2
    assert main(["eval", *TINY, "--data", str(tmp_path / "none"), "-o", str(tmp_path)]) == 2


def test_sweep_writes_grid_and_plot(tmp_path, capsys):
    src = tmp_path / "in.png"
    landscape(5, 48).save(src)
    real = tmp_path / "real"
    real.mkdir()
    for i in range(20):  # KID needs at least 20 real images to scale its features by
        landscape(100 + i, 32).save(real / f"{i}.png")
    args = ["sweep", str(src), *TINY, "--t0", "0.1", "0.9", "--sampler", "ddpm", "ddim", "--steps", "2", "-n", "4",
            "--real", str(real), "-o", str(tmp_path / "out"), "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    grid = Image.open(tmp_path / "out" / "in-sweep-grid.png")
    assert grid.size[0] > 3 * 128 and grid.size[1] >= 8 * 128  # input + 2 t0 columns, 2 samplers x 4 samples
    assert Image.open(tmp_path / "out" / "in-sweep-plot.png").size[0] >= 500
    lines = [ln for ln in out.splitlines() if "t0=" in ln]
    assert len(lines) == 4 and all("KID" in ln for ln in lines)
    # Faithfulness falls with t0: L2 at t0 = 0.9 is larger than at 0.1 for each sampler.
    l2 = {(ln.split()[0], ln.split()[1]): float(ln.split("L2")[1].split(",")[0]) for ln in lines}
    assert l2[("ddpm", "t0=0.90")] > l2[("ddpm", "t0=0.10")]
    assert l2[("ddim", "t0=0.90")] > l2[("ddim", "t0=0.10")]


def test_feature_choice_falls_back_offline(monkeypatch):
    import sys
    import types

    import torch

    from sdedit.research.metrics import InceptionUnavailable, feature_extractor

    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # not installed
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    name, extract = feature_extractor("auto")
    assert name == "random-cnn" and extract(torch.zeros(2, 3, 16, 16, dtype=torch.uint8)).shape == (2, 902)
    with pytest.raises(InceptionUnavailable):
        feature_extractor("inception")

    class FakeInception:  # installed, weights present: auto picks it
        def __init__(self, name, feats):
            assert name == "inception-v3-compat" and feats == ["2048"]

        def eval(self):
            return self

        def __call__(self, u8):
            return (torch.ones(len(u8), 2048),)

    mod = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    mod.FeatureExtractorInceptionV3 = FakeInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", mod)
    name, extract = feature_extractor("auto")
    assert name == "inception" and extract(torch.zeros(3, 3, 8, 8, dtype=torch.uint8)).shape == (3, 2048)


def test_masked_eval_compares_paste_backs_with_seam_and_colour_metrics(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", *TINY, "--masked", "--n", "6", "--t0", "0.6", "--steps", "3", "-o", str(out)]) == 0
    rows = {r["what"].split(",")[0]: r for r in json.loads((out / "eval.json").read_text())[2:]}
    assert set(rows) == {"hard mask", "feathered mask", "strength map"}
    assert rows["hard mask"]["colour_shift"] == 0.0  # outside a hard mask every pixel is the input's
    assert rows["feathered mask"]["colour_shift"] > 0 and rows["strength map"]["colour_shift"] > 0
    assert all(r["seam_jump"] is not None and r["layout"] is not None for r in rows.values())
    assert "seam jump" in (out / "eval.md").read_text()


def test_layout_sharpness_and_seam_metrics_on_known_images():
    import numpy as np
    from PIL import ImageFilter

    from sdedit.research.metrics import layout_correlation, seam_metrics, sharpness

    img = landscape(10_000_123, 64)
    assert layout_correlation([img], [img])[0] == pytest.approx(1.0)
    flipped = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    assert layout_correlation([flipped], [img])[0] < 0.5  # sky below, ground above: the layout is gone
    assert sharpness([img.filter(ImageFilter.GaussianBlur(2))])[0] < 0.6 * sharpness([img])[0]
    with pytest.raises(ValueError, match="3x3"):
        sharpness([img.resize((2, 5))])  # no interior pixel: no Laplacian

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    assert seam_metrics(img, img, mask) == (0.0, 0.0)
    pasted = img.copy()
    pasted.paste((255, 0, 255), (16, 16, 48, 48))  # a flat magenta square: a hard seam, nothing outside changed
    jump, shift = seam_metrics(pasted, img, mask)
    assert jump > 50 and shift == 0.0
    tinted = Image.fromarray(np.clip(np.asarray(img, np.int16) + [10, 0, 0], 0, 255).astype(np.uint8))
    _, shift = seam_metrics(tinted, img, mask)  # everything 10 redder (where not clipped)
    assert 5 < shift <= 10


def test_edge_sharpness_scores_edges_not_noise():
    import numpy as np
    from PIL import ImageFilter

    from sdedit.research.metrics import edge_sharpness, sharpness

    # Known answer: a vertical step of height h in a 64x64 grey image has Sobel magnitude h/2 in the two columns
    # beside it (128 pixels) and 0 elsewhere; the strongest 5% are 205 pixels.
    step = np.zeros((64, 64), np.uint8)
    step[:, 32:] = 100
    assert edge_sharpness([Image.fromarray(step)])[0] == pytest.approx(128 / 205 * 50)
    img = landscape(10_000_123, 64)
    noisy = Image.fromarray(np.clip(np.rint(np.asarray(img, np.float64) + np.random.default_rng(0).normal(
        0, 2, (64, 64, 3))), 0, 255).astype(np.uint8))
    # Two grey levels of noise: the Laplacian score jumps, the edge score hardly moves; blur lowers both.
    assert sharpness([noisy])[0] > 1.15 * sharpness([img])[0]
    assert edge_sharpness([noisy])[0] == pytest.approx(edge_sharpness([img])[0], rel=0.02)
    assert edge_sharpness([img.filter(ImageFilter.GaussianBlur(0.7))])[0] < 0.9 * edge_sharpness([img])[0]
    with pytest.raises(ValueError, match="3x3"):
        edge_sharpness([img.resize((2, 5))])
