"""`sdedit composite`: the patch pasted where asked, its alpha as the mask, everything else the scene's own pixels."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sdedit import read_settings
from sdedit.compositing import composite, paste_patch
from sdedit.frontends.cli import main
from sdedit.images import grow_and_feather

from .conftest import gaussian_model


def scene_and_patch() -> tuple[Image.Image, Image.Image]:
    scene = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    patch = Image.new("RGBA", (10, 8), (0, 0, 0, 0))
    patch.paste((250, 20, 20, 255), (2, 2, 8, 6))  # a red block inside a transparent margin
    return scene, patch


def test_patch_alpha_is_the_mask_and_the_rest_is_kept_exactly():
    scene, patch = scene_and_patch()
    pasted, mask = paste_patch(scene, patch, (30, 20), scale=2.0)
    m = np.asarray(mask) > 0
    assert m[24:32, 34:46].all()  # the opaque 6x4 block, scaled by 2, at (30, 20) + 2 * (2, 2)
    assert not m[:20].any() and not m[36:].any() and not m[:, :30].any() and not m[:, 50:].any()  # inside the box
    assert m.sum() < 20 * 16  # the transparent margin is not masked (beyond the resampling's soft edge)
    assert np.abs(np.asarray(pasted, float)[25:31, 35:45] - (250, 20, 20)).mean() < 8  # (Lanczos-scaled edges)
    outs = composite(gaussian_model(), scene, patch, at=(30, 20), scale=2.0, mask_grow=1, mask_feather=2, t0=0.9,
                     steps=4, seed=0, num_samples=2, progress=False)
    for out in outs:
        assert out.size == scene.size
        far = np.asarray(grow_and_feather(mask, 1, 2)) == 0  # outside the patch's mask, grown and feathered
        assert far.sum() > 1000
        assert (np.asarray(out)[far] == np.asarray(scene)[far]).all()
        assert np.abs(np.asarray(out, float)[m] - (250, 20, 20)).mean() > 5  # the patch was edited


def test_composite_command_and_its_errors(tmp_path, capsys):
    scene, patch = scene_and_patch()
    scene.save(tmp_path / "scene.png")
    patch.save(tmp_path / "patch.png")
    base = ["composite", str(tmp_path / "scene.png"), str(tmp_path / "patch.png"), "--steps", "2", "-q",
            "-o", str(tmp_path / "o")]
    assert main([*base, "--at", "5,5", "--seed", "3"]) == 0
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["scene_composite_t0.30_s3.png"]  # the bundled model's recommended t0
    meta = read_settings(tmp_path / "o" / "scene_composite_t0.30_s3.png")
    assert meta["seed"] == 3 and meta["composite"] == {"background": "scene.png", "patch": "patch.png", "at": [5, 5],
                                                       "scale": 1.0}  # everything that made the output is recorded
    assert main([*base, "--at", "5,5", "-n", "2"]) == 0  # a random seed: recorded, and the second output's is next
    seeds = sorted(read_settings(p)["seed"] for p in (tmp_path / "o").iterdir() if not p.name.endswith("_s3.png"))
    assert len(seeds) == 2 and seeds[1] == seeds[0] + 1
    for bad in (["--at", "5"], ["--at", "500,500"], ["--at", "5,5", "--scale", "0"]):
        assert main([*base, *bad]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
