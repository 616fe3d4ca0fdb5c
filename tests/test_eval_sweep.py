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
    assert all("kid_se" in r for r in rows)  # recorded (None here: 6 real images are too few to scale features by)
    assert "warning: KID from 6 generated and 6 real images" in capsys.readouterr().err
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
            "--real", str(real), "-o", str(tmp_path / "out")]
    assert main(args) == 0
    out, err = capsys.readouterr()
    grid = Image.open(tmp_path / "out" / "in-sweep-grid.png")
    assert grid.size[0] > 3 * 128 and grid.size[1] >= 8 * 128  # input + 2 t0 columns, 2 samplers x 4 samples
    assert Image.open(tmp_path / "out" / "in-sweep-plot.png").size[0] >= 500
    lines = [ln for ln in out.splitlines() if "t0=" in ln]
    assert len(lines) == 4 and all("KID" in ln for ln in lines)
    for ln in lines:  # each KID with its standard error: "KID 0.1234 +- 0.0567"
        mean, se = ln.split("KID")[1].split("+-")
        assert float(se) > 0 and float(mean) == float(mean)
    assert "warning: KID from 4 generated and 20 real images is mostly noise" in err
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


def test_eval_records_kid_standard_error_and_warns_only_below_the_threshold(tmp_path, capsys, monkeypatch):
    from sdedit.research import metrics

    args = ["eval", *TINY, "--n", "20", "--t0", "0.5", "--steps", "1"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr()
    rows = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert len(rows) == 3 and all(r["kid_se"] > 0 and r["kid_std"] > 0 for r in rows)
    with open(tmp_path / "a" / "eval.csv") as f:
        assert [float(r["kid_se"]) for r in csv.DictReader(f)] == [r["kid_se"] for r in rows]
    assert f"{rows[2]['kid_mean']:.4f} +- {rows[2]['kid_se']:.4f}" in printed.out  # printed beside the KID
    md = (tmp_path / "a" / "eval.md").read_text()
    assert "KID (mean +- s.e.)" in md and f"{rows[0]['kid_se']:.4f}" in md
    warning = "warning: KID from 20 generated and 20 real images is mostly noise"
    assert metrics.MIN_KID_SAMPLES > 20 and warning in printed.err and warning in md

    monkeypatch.setattr(metrics, "MIN_KID_SAMPLES", 20)  # 20 a side is now enough: no warning
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr()
    assert "warning" not in printed.err and "warning" not in (tmp_path / "b" / "eval.md").read_text()


def test_sweep_warns_only_below_the_threshold(tmp_path, capsys, monkeypatch):
    from sdedit.research import metrics

    src = tmp_path / "in.png"
    landscape(5, 48).save(src)
    real = tmp_path / "real"
    real.mkdir()
    for i in range(20):
        landscape(100 + i, 32).save(real / f"{i}.png")
    monkeypatch.setattr(metrics, "MIN_KID_SAMPLES", 4)
    assert main(["sweep", str(src), *TINY, "--t0", "0.5", "--steps", "1", "-n", "4", "--real", str(real), "-o",
                 str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert "+-" in out and "warning" not in err


def test_kid_standard_error_matches_the_spread_of_repeated_draws():
    import numpy as np
    import torch

    from sdedit.research.metrics import kid_score

    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny products: threads only wait for each other
    try:
        for shift in (0.0, 0.5):  # one distribution (KID 0) and two (KID > 0)
            scores = [kid_score(torch.randn(40, 8, generator=g, dtype=torch.float64),
                                torch.randn(40, 8, generator=g, dtype=torch.float64) + shift, subsets=10, seed=i)
                      for i in range(30)]
            spread = float(np.std([k.mean for k in scores]))  # how much KID really varies from draw to draw
            se = float(np.mean([k.se for k in scores]))
            assert 0.6 * spread < se < 2.0 * spread, (shift, spread, se)  # the jackknife errs on the safe side
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("command", ["sweep", "eval"])
def test_outputs_are_checked_before_the_model_loads(tmp_path, capsys, monkeypatch, command):
    import sdedit.loader

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(sdedit.loader, "load_model", no_loading)
    src = tmp_path / "in.png"
    landscape(5, 48).save(src)
    long_name = tmp_path / ("x" * 245 + ".png")  # its output names would pass the file system's 255 bytes
    landscape(5, 48).save(long_name)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "in-sweep-grid.png").mkdir()
    (tmp_path / "file").write_text("mine")
    cases = {"sweep": [([str(src), "-o", "/proc/sdedit-x"], "cannot write in the output folder"),
                       ([str(src), "-o", str(tmp_path / "file")], "is not a folder"),
                       ([str(src), "-o", str(tmp_path / "taken")], "in-sweep-grid.png is a folder"),
                       ([str(long_name), "-o", str(tmp_path / "o")], "File name too long")],
             "eval": [(["-o", "/proc/sdedit-x"], "cannot write in the output folder"),
                      (["-o", str(tmp_path / "file")], "is not a folder")]}
    for extra, message in cases[command]:
        assert main([command, *TINY, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("args, message", [
    (["eval", "--colors", "0"], "--colors must be a whole number from 1 to 256"),
    (["eval", "--colors", "257"], "--colors must be a whole number from 1 to 256"),
    (["eval", "--n", "1"], "--n must be a whole number of images from 2 to"),
    (["eval", "--n", "1000000000"], "--n must be a whole number of images from 2 to"),
    (["eval", "--n", "-3"], "--n must be"),
    (["eval", "--steps", "0"], "--steps must be"),
    (["eval", "--repeats", "-1"], "--repeats must be"),
    (["eval", "--seed", "-1"], "--seed must be"),
    (["eval", "--seed", str(2**63 - 2), "--n", "2"], "--seed must be"),
    (["eval", "--t0", "nan"], "--t0"),
    (["eval", "--t0", "inf"], "--t0"),
    (["eval", "--threads", "0"], "--threads must be"),
    (["sweep", "IN", "--t0", "0"], "--t0: must be a number in (0, 1]"),
    (["sweep", "IN", "--t0", "nan"], "--t0: must be a number in (0, 1]"),
    (["sweep", "IN", "--t0=-inf"], "--t0: must be a number in (0, 1]"),
    (["sweep", "IN", "--t0", *(str(i / 100) for i in range(1, 60))], "--t0 takes at most 50 values"),
    (["sweep", "IN", "-n", "0"], "-n must be"),
    (["sweep", "IN", "-n", "100000000"], "-n must be"),
    (["sweep", "IN", "--steps", "0"], "--steps must be"),
    (["sweep", "IN", "--steps", "1e9"], "invalid int value"),
    (["sweep", "IN", "--seed", "-5"], "--seed must be"),
    (["sweep", "IN", "--threads", "-1"], "--threads must be"),
])
def test_numeric_options_out_of_range_are_refused_in_one_line(tmp_path, capsys, monkeypatch, args, message):
    import sdedit.loader

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(sdedit.loader, "load_model", no_loading)
    src = tmp_path / "in.png"
    landscape(5, 48).save(src)
    args = [str(src) if a == "IN" else a for a in args]
    assert main([*args, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_every_option_of_every_command_has_help():
    import argparse

    from sdedit.frontends.cli import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parsers = [("sdedit", parser), *commands.choices.items()]
    missing = [(name, action.option_strings or action.dest) for name, sub in parsers
               for action in sub._actions if not isinstance(action, argparse._HelpAction) and not action.help]
    assert len(commands.choices) >= 10 and missing == []
