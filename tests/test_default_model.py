"""The bundled default model: loads offline, and turns stroke paintings into images that follow them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdedit import edit, load_model, read_settings
from sdedit.loading.presets import bundled_path
from sdedit.frontends.cli import main
from sdedit.research.metrics import l2_distance

EXAMPLES = Path(__file__).parent.parent / "examples"


def total_variation(img) -> float:
    a = np.asarray(img, np.float64) / 255
    return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


def test_bundled_model_is_small_and_loads_offline():
    weights = bundled_path("landscapes") / "diffusion_pytorch_model.safetensors"
    assert 1e6 < weights.stat().st_size < 10e6
    model = load_model("landscapes")
    assert model.resolution == 64 and model.info["family"] == "vp"
    assert 2.0 < model.info["params_m"] < 2.5


def test_outputs_follow_their_strokes_and_are_neither_copies_nor_noise():
    model = load_model("landscapes")
    inputs = [EXAMPLES / "strokes-1.png", EXAMPLES / "strokes-2.png", EXAMPLES / "strokes-3.png"]
    guides = [edit(model, p, t0=1e-3, steps=1, seed=0, progress=False)[0] for p in inputs]  # ~ the inputs at 64 px
    rng = np.random.default_rng(0)
    noise_tv = total_variation(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8))
    for i, p in enumerate(inputs):
        outs = edit(model, p, t0=0.5, num_samples=2, seed=1, progress=False)
        for out in outs:
            own = l2_distance([out], [guides[i]])[0]
            others = [l2_distance([out], [g])[0] for j, g in enumerate(guides) if j != i]
            assert own < min(others), (p.name, own, others)  # follows its own strokes
            assert own > 2.0  # not a copy of the strokes
            assert total_variation(out) < 0.25 * noise_tv  # not noise
        assert l2_distance([outs[0]], [outs[1]])[0] > 1.0  # two seeds, two different images


def test_main_command_of_the_readme(tmp_path, capsys):
    out = tmp_path / "outputs"
    assert main(["edit", str(EXAMPLES / "landscape-strokes.png"), "-n", "4", "--seed", "0", "-o", str(out)]) == 0
    files = capsys.readouterr().out.split()
    assert len(files) == 4 and all(Path(f).is_file() for f in files)
    assert read_settings(files[0])["model"] == "landscapes"


def test_from_pure_noise_the_bundled_model_makes_a_picture_not_a_black_square(tmp_path):
    """Its config asks for D projected onto [-1, 1] (clip_denoised): without it, t0 >= 0.9 gave black images."""
    import json
    import shutil

    import torch

    model = load_model("landscapes", device="cpu", precision="fp32")
    assert model.info["clip_denoised"] is True
    with torch.no_grad():
        d = model.denoise(torch.randn(2, 3, 64, 64) * 150, torch.full((2,), 150.0))
    assert d.abs().max() <= 1.0
    strokes = EXAMPLES / "landscape-strokes.png"
    outs = [np.asarray(o, np.float64) for o in edit(model, strokes, t0=1.0, seed=0, num_samples=2, progress=False)]
    assert all(o.std() > 10 and o.mean() > 10 for o in outs)
    # the same weights without the fact: the released algorithm, D unprojected
    folder = tmp_path / "plain"
    shutil.copytree(bundled_path("landscapes"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["_sdedit"]["clip_denoised"]
    (folder / "config.json").write_text(json.dumps(cfg))
    plain = load_model(folder, device="cpu", precision="fp32")
    with torch.no_grad():
        assert plain.denoise(torch.randn(2, 3, 64, 64) * 150, torch.full((2,), 150.0)).abs().max() > 1.0
