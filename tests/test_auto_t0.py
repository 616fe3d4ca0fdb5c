"""t0 auto: per image, the largest t0 whose output stays within the faithfulness budget; and per-model defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sdedit import edit, load_model
from sdedit.api import prepare_guide, probe_l2
from sdedit.frontends.cli import main
from sdedit.research.landscapes import HELD_OUT_START, landscape
from sdedit.research.strokes import simulate_strokes
from sdedit.settings import DEFAULT_FAITHFULNESS_RMS, RunSettings, SettingError


@pytest.fixture(scope="module")
def model():
    return load_model("landscapes", device="cpu")


def painted_photo(i: int) -> Image.Image:
    """A held-out landscape with one small red block painted on it: a photo with a small change."""
    img = landscape(HELD_OUT_START + 500 + i, 64)
    img.paste((200, 60, 60), (20, 20, 30, 28))
    return img


def test_chosen_t0_meets_the_budget_and_a_slightly_larger_one_breaks_it(model):
    img = simulate_strokes(landscape(HELD_OUT_START + 501, 64))
    out = edit(model, img, t0="auto", seed=0, progress=False)[0]
    meta = json.loads(out.info["sdedit"])
    budget = DEFAULT_FAITHFULNESS_RMS * (3 * 64 * 64) ** 0.5
    assert meta["t0_auto"]["budget"] == pytest.approx(budget) and meta["t0_auto"]["l2"] <= budget
    t0 = meta["t0"]
    assert 0.05 < t0 < 1.0 and meta["steps"] == RunSettings(t0=t0).steps  # the sampler's default at that t0
    settings = model.run_settings(RunSettings(t0="auto", seed=0))
    guide, denoiser = prepare_guide(model, img), model.denoiser(settings)
    assert probe_l2(model, denoiser, guide, 0, settings, t0) == pytest.approx(meta["t0_auto"]["l2"], abs=1e-4)
    assert probe_l2(model, denoiser, guide, 0, settings, t0 + 0.05) > budget


def test_strokes_get_a_higher_t0_than_a_photo_with_a_small_change(model):
    for i in (1, 2):
        strokes = simulate_strokes(landscape(HELD_OUT_START + 500 + i, 64))
        t_strokes, t_photo = (json.loads(edit(model, img, t0="auto", seed=0, progress=False)[0].info["sdedit"])["t0"]
                              for img in (strokes, painted_photo(i)))
        assert t_strokes > t_photo + 0.05


def test_a_larger_budget_allows_a_larger_t0(model):
    img = painted_photo(1)
    t0s = [json.loads(edit(model, img, t0="auto", faithfulness=f, seed=0, progress=False)[0].info["sdedit"])["t0"]
           for f in (4.0, 16.0)]
    assert t0s[0] < t0s[1]


def test_settings_rules_for_auto_and_model_defaults(model):
    assert RunSettings(t0="auto").steps is None and RunSettings().t0 is None
    with pytest.raises(SettingError, match="auto"):
        RunSettings(t0=0.4, faithfulness=5.0)
    with pytest.raises(SettingError, match="positive"):
        RunSettings(t0="auto", faithfulness=0.0)
    assert RunSettings(t0="auto", faithfulness=3.0).with_(t0=0.3).faithfulness is None
    # no t0 given: the model's recommended one; steps given by the user stay
    model.recommended_t0 = 0.35
    try:
        resolved = model.run_settings(RunSettings(steps=7))
        assert (resolved.t0, resolved.steps, resolved.guidance) == (0.35, 7, 1.0)  # an unconditional model: no guidance
        out = edit(model, Image.new("RGB", (64, 64), (90, 120, 200)), seed=0, progress=False)[0]
        assert json.loads(out.info["sdedit"])["t0"] == 0.35
    finally:
        model.recommended_t0 = type(model).recommended_t0


def test_command_line_t0_auto(tmp_path, capsys):
    simulate_strokes(landscape(HELD_OUT_START + 502, 64)).save(tmp_path / "s.png")
    assert main(["edit", str(tmp_path / "s.png"), "--t0", "auto", "--faithfulness", "9", "--seed", "0", "-q",
                 "-o", str(tmp_path / "out")]) == 0
    meta = json.loads(Image.open(next((tmp_path / "out").glob("*.png"))).info["sdedit"])
    assert meta["t0_auto"]["budget"] == 9.0 and meta["t0_auto"]["l2"] <= 9.0
    for bad, words in ((["--t0", "0.4", "--faithfulness", "9"], "--faithfulness"), (["--t0", "often"], "--t0"),
                       (["--t0", "auto", "--faithfulness", "-1"], "--faithfulness")):
        assert main(["edit", str(tmp_path / "s.png"), *bad, "-o", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "bad").exists()


def test_the_command_line_says_which_t0_auto_chose_and_quiet_says_nothing(tmp_path, capsys):
    from sdedit.frontends.cli import main
    from sdedit.images import read_settings

    strokes = Path(__file__).resolve().parents[1] / "examples" / "landscape-strokes.png"
    assert main(["edit", str(strokes), "--t0", "auto", "--seed", "0", "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    meta = read_settings(next((tmp_path / "a").glob("*.png")))
    line = f"t0 auto: {meta['t0']:.4g} (probe L2 {meta['t0_auto']['l2']:.2f} within the budget " \
           f"{meta['t0_auto']['budget']:.2f})"
    assert line in out
    assert main(["edit", str(strokes), "--t0", "auto", "--seed", "0", "-q", "-o", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out == ""  # -q: nothing at all on success
