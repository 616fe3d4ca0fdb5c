"""--color-match: CIELAB both ways, the reference's statistics inside the region, kept pixels exact, and the flag."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit import edit, load_model
from sdedit.color_match import lab_to_rgb, match_colors, rgb_to_lab
from sdedit.frontends.cli import main
from sdedit.research.landscapes import landscape


def test_lab_round_trip_and_known_values():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    assert torch.allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-6)
    white, red = torch.ones(1, 3, 1, 1), torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    assert rgb_to_lab(white).flatten().tolist() == pytest.approx([100.0, 0.0, 0.0], abs=0.01)
    assert rgb_to_lab(red).flatten().tolist() == pytest.approx([53.24, 80.09, 67.20], abs=0.05)  # sRGB red


def test_the_region_takes_the_references_mean_and_spread():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=gen) * 0.6 - 0.5  # darker, in gamut
    ref = torch.rand(2, 3, 16, 16, generator=gen) * 0.6 - 0.1
    region = torch.zeros(2, 1, 16, 16)
    region[:, :, 4:12, 4:12] = 1
    out = match_colors(x, ref, region)
    inside = region.bool().expand(-1, 3, -1, -1)
    lab_out, lab_ref = rgb_to_lab(out), rgb_to_lab(ref)
    for row in range(2):
        got = lab_out[row][inside[row]].view(3, -1)
        want = lab_ref[row][inside[row]].view(3, -1)
        assert torch.allclose(got.mean(1), want.mean(1), atol=1e-3)
        assert torch.allclose(got.std(1, unbiased=False), want.std(1, unbiased=False), atol=1e-3)
    empty = match_colors(x, ref, torch.zeros(2, 1, 16, 16))
    assert torch.equal(empty, x)


def test_a_masked_looped_edit_with_colour_matching_keeps_every_unmasked_pixel(tmp_path):
    model = load_model("landscapes", device="cpu", precision="fp32")
    img = landscape(8, 64)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:50, 10:40] = 255
    out = edit(model, img, mask=Image.fromarray(mask), t0=0.4, repeats=3, seed=1, color_match=True,
               progress=False)[0]
    assert np.array_equal(np.asarray(out)[mask == 0], np.asarray(img)[mask == 0])
    assert json.loads(out.info["sdedit"])["color_match"] is True
    plain = edit(model, img, mask=Image.fromarray(mask), t0=0.4, repeats=3, seed=1, progress=False)[0]
    assert "color_match" not in json.loads(plain.info["sdedit"])
    assert not np.array_equal(np.asarray(out), np.asarray(plain))


def test_edit_help_lists_color_match(capsys):
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    assert "--color-match" in capsys.readouterr().out


# Hostile-input review of colour matching.

def test_a_flat_reference_gives_its_colour_not_its_zero_spread():
    """A uniform guide (or a one-colour stroke) has no spread to match: scaling by its 0 would flatten the output
    into the guide, undoing the edit; the output takes its mean only."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=gen) * 0.4 - 0.3
    flat = torch.tensor([[-0.1, 0.2, -0.2], [0.0, 0.0, 0.0]]).view(2, 3, 1, 1).expand(-1, -1, 16, 16)
    out = match_colors(x, flat)
    lab_x, lab_out, lab_ref = rgb_to_lab(x), rgb_to_lab(out), rgb_to_lab(flat)
    assert torch.allclose(lab_out.mean((2, 3)), lab_ref.mean((2, 3)), atol=0.5)  # gamut clipping aside
    assert (lab_out.std((2, 3)) > 0.5 * lab_x.std((2, 3))).all()
    for image in (x, flat):  # a flat output, or both flat: nothing to scale, no NaN
        assert torch.isfinite(match_colors(flat, image)).all()


def test_colour_matching_a_flat_masked_stroke_keeps_the_edit():
    model = load_model("landscapes", device="cpu", precision="fp32")
    img = np.asarray(landscape(8, 64)).copy()
    img[16:48, 16:48] = (40, 160, 40)  # a flat stroke, exactly under the mask
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    out = edit(model, Image.fromarray(img), mask=Image.fromarray(mask), t0=0.6, steps=4, seed=1, color_match=True,
               progress=False)[0]
    inside = np.asarray(out).astype(float)[16:48, 16:48]
    assert inside.std((0, 1)).min() > 5  # generated, not the stroke given back
    assert np.abs(inside.mean((0, 1)) - (40, 160, 40)).max() < 20  # in the stroke's colour
    assert np.array_equal(np.asarray(out)[mask == 0], img[mask == 0])


def test_rows_of_different_guides_in_one_batch_are_each_matched_to_their_own_guide():
    """Each row's reference and region are its own: batched together or one by one, the same outputs."""
    from sdedit.api import iter_edits, prepare_guide
    from sdedit.settings import RunSettings

    from .conftest import gaussian_model
    from .helpers import random_image

    model = gaussian_model(resolution=32)
    masks = [np.zeros((32, 32), np.uint8) for _ in range(2)]
    masks[0][5:20, 5:20] = 255
    masks[1][10:30, 2:12] = 255
    bright = Image.fromarray((np.asarray(random_image((32, 32), 2)) // 4 + 150).astype(np.uint8))
    guides = [prepare_guide(model, img, Image.fromarray(m)) for img, m in zip((random_image((32, 32), 1), bright),
                                                                               masks, strict=True)]
    run = RunSettings(t0=0.5, steps=4, repeats=3, color_match=True, batch_size=2, seed=0)
    together = [np.asarray(o) for o in iter_edits(model, guides, [3, 9], run, progress=False)]
    alone = [np.asarray(o) for o in iter_edits(model, guides, [3, 9], run.with_(batch_size=1), progress=False)]
    plain = [np.asarray(o) for o in iter_edits(model, guides, [3, 9], run.with_(color_match=False), progress=False)]
    for a, b, c in zip(together, alone, plain, strict=True):
        assert np.array_equal(a, b) and not np.array_equal(a, c)
