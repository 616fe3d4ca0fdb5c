"""Built-in landscapes, simulated strokes, and the realism/faithfulness metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from sdedit.frontends.cli import main
from sdedit.research.landscapes import HELD_OUT_START, landscape, landscapes
from sdedit.research.metrics import image_features, kid, l2_distance, standardize
from sdedit.research.strokes import median_kernel, simulate_strokes


def test_landscapes_are_seeded_and_varied():
    a, b = landscape(3, 64), landscape(3, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    batch = landscapes(0, 24, 32)
    assert batch.shape == (24, 32, 32, 3) and batch.dtype == np.uint8
    flat = batch.reshape(24, -1).astype(float)
    # No two images alike, and a real spread of colours (skies, grounds, times of day).
    dists = np.sqrt(((flat[:, None] - flat[None]) ** 2).mean(-1))
    assert dists[np.triu_indices(24, 1)].min() > 5
    means = batch.reshape(24, -1, 3).mean(1)
    assert means.std(0).min() > 15
    assert landscape(HELD_OUT_START, 64).size == (64, 64)


def test_strokes_have_few_colours_and_flat_regions():
    img = landscape(7, 256)
    s = simulate_strokes(img, colors=6)
    assert s.size == img.size and len(s.getcolors(1 << 16)) <= 6
    assert median_kernel(256) == 23 and median_kernel(64) == 7 and median_kernel(10) == 3
    with pytest.raises(ValueError):
        simulate_strokes(img, colors=0)


def test_strokes_command(tmp_path, capsys):
    src = tmp_path / "in.png"
    landscape(1, 64).save(src)
    assert main(["strokes", str(src), "-o", str(tmp_path / "s.png"), "--colors", "3"]) == 0
    assert main(["strokes", str(src), "-o", str(tmp_path / "s.png"), "--colors", "3"]) == 0
    written = capsys.readouterr().out.split()
    assert [p.split("/")[-1] for p in written] == ["s.png", "s-1.png"]
    assert len(Image.open(written[0]).getcolors(1 << 16)) <= 3
    assert main(["strokes", str(tmp_path / "none.png"), "-o", str(tmp_path / "x.png")]) == 2


def test_l2_distance_is_the_euclidean_norm():
    black, white = Image.new("RGB", (16, 16)), Image.new("RGB", (16, 16), (255, 255, 255))
    assert l2_distance([white, black], [black, black]) == pytest.approx([np.sqrt(16 * 16 * 3), 0.0])


def test_kid_ranks_obviously_better_images_better():
    reals = [landscape(HELD_OUT_START + i, 64) for i in range(80)]
    others = [landscape(HELD_OUT_START + 500 + i, 64) for i in range(80)]
    blurred = [im.filter(ImageFilter.GaussianBlur(1.5)) for im in others]
    strokes = [simulate_strokes(im) for im in others]
    rng = np.random.default_rng(0)
    noisy = [Image.fromarray(np.clip(np.asarray(im) + rng.normal(0, 30, (64, 64, 3)), 0, 255).astype(np.uint8))
             for im in others]
    ref, *sets = standardize(image_features(reals), *(image_features(s) for s in (others, blurred, strokes, noisy)))
    scores = [kid(ref, f, subsets=50, subset_size=60)[0] for f in sets]
    assert scores == sorted(scores), scores
    assert abs(scores[0]) < 0.5 * scores[1]


def test_kid_is_unbiased_and_sees_a_shift():
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(400, 10, generator=g, dtype=torch.float64) for _ in range(2))
    same, same_std = kid(a, b, subsets=50, subset_size=200)
    shifted, _ = kid(a, b + 0.5, subsets=50, subset_size=200)
    assert abs(same) < 2 * same_std / 50**0.5 + 0.01  # zero within its error bar
    assert shifted > 10 * max(abs(same), same_std)
