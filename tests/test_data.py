"""Built-in landscapes, simulated strokes, and the realism/faithfulness metrics."""

from __future__ import annotations

import json
import time

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


@pytest.mark.parametrize("flag, value, message", [
    ("--kernel", "0", "--kernel must be an odd number of pixels from 1 to"),
    ("--kernel", "-3", "--kernel must be an odd number of pixels from 1 to"),
    ("--kernel", "8", "--kernel must be an odd number of pixels from 1 to"),
    ("--kernel", "65", "from 1 to 63 (this image's shorter side), got 65"),
    ("--kernel", "2001", "from 1 to 63 (this image's shorter side), got 2001"),
    ("--kernel", "1e9", "invalid int value"),
    ("--colors", "0", "--colors must be a whole number from 1 to 256, got 0"),
    ("--colors", "257", "--colors must be a whole number from 1 to 256, got 257"),
    ("--colors", "-1", "--colors must be a whole number from 1 to 256"),
])
def test_strokes_options_out_of_range_are_refused_in_one_line(tmp_path, capsys, flag, value, message):
    src = tmp_path / "in.png"
    landscape(1, 64).resize((80, 64)).save(src)
    assert main(["strokes", str(src), "-o", str(tmp_path / "s.png"), flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s.png").exists()


def test_strokes_kernel_acts_and_is_recorded(tmp_path, capsys):
    from sdedit.errors import InputError
    from sdedit.images import read_settings

    src = tmp_path / "in.png"
    landscape(1, 64).save(src)
    for kernel in ("1", "63"):  # the whole range is accepted, and the kernel changes the painting
        assert main(["strokes", str(src), "-o", str(tmp_path / f"k{kernel}.png"), "--kernel", kernel,
                     "--colors", "4"]) == 0
        assert read_settings(tmp_path / f"k{kernel}.png") == {
            "made_by": "sdedit strokes", "colors": 4, "kernel": int(kernel), "median_at": "64x64",
            "median_kernel_there": int(kernel)}
    assert Image.open(tmp_path / "k1.png").tobytes() != Image.open(tmp_path / "k63.png").tobytes()
    with pytest.raises(InputError):
        simulate_strokes(landscape(1, 64), kernel=0)  # 0 is not "the default"


def test_paintings_up_to_the_papers_case_are_the_papers_method_exactly():
    for side in (64, 256):  # the default model's size, and the paper's (kernel 23)
        img = landscape(7, side)
        expected = img.filter(ImageFilter.MedianFilter(median_kernel(side))).quantize(
            colors=6, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB")
        assert simulate_strokes(img).tobytes() == expected.tobytes()


def test_median_filters_match_pillows_median():
    from sdedit.research.strokes import COUNT_STEP, _median_counted, _median_pillow

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (300, 41, 3), dtype=np.uint8))  # taller than one band of rows
    for k in (3, 11):  # Pillow's, band by band: the same pixels
        exact = img.filter(ImageFilter.MedianFilter(k))
        assert _median_pillow(img, k).tobytes() == exact.tobytes()
    for k in (13, 41):  # counted: the median's own bin of COUNT_STEP levels
        exact = np.asarray(img.filter(ImageFilter.MedianFilter(k)), np.int64)
        counted = np.asarray(_median_counted(img, k), np.int64)
        assert np.array_equal(counted // COUNT_STEP, exact // COUNT_STEP)
        assert np.abs(counted - exact).max() < COUNT_STEP
    flat = Image.new("RGB", (50, 40), (91, 141, 203))
    assert _median_counted(flat, 21).getcolors() == [(2000, (91, 141, 203))]  # a flat image keeps its colour


def test_a_large_photo_is_painted_at_a_bounded_area_with_the_same_result(monkeypatch):
    from sdedit.research import strokes
    from sdedit.research.metrics import layout_correlation

    img = landscape(7, 256).resize((320, 240), Image.Resampling.BICUBIC)
    direct = simulate_strokes(img)  # 76,800 pixels: the paper's method on the whole image
    assert json.loads(direct.info["sdedit"])["median_at"] == "320x240"
    monkeypatch.setattr(strokes, "WORK_AREA", 80 * 60)  # now the image is 16 times the working area
    reduced = simulate_strokes(img)
    info = json.loads(reduced.info["sdedit"])
    assert (info["kernel"], info["median_at"], info["median_kernel_there"]) == (23, "80x60", 5)
    assert reduced.size == img.size and len(reduced.getcolors()) <= 6
    # The same painting: the same large shapes, and nearly every pixel the colour the whole-image method gives it.
    assert layout_correlation([reduced], [direct])[0] > 0.97
    diff = np.abs(np.asarray(reduced, np.int64) - np.asarray(direct, np.int64)).max(-1)
    assert (diff <= 24).mean() > 0.9


def test_a_large_input_is_painted_at_its_size():
    from sdedit.research.strokes import WORK_AREA

    img = landscape(3, 400).resize((1600, 1200), Image.Resampling.BICUBIC)  # the paper's kernel here: 109 px
    out = simulate_strokes(img)
    w, h = map(int, json.loads(out.info["sdedit"])["median_at"].split("x"))
    assert out.size == img.size and len(out.getcolors()) <= 6 and w * h <= WORK_AREA
    counts = sorted(c for c, _ in out.getcolors())
    assert counts[-1] + counts[-2] < 0.9 * img.width * img.height  # regions, not one flat colour


def test_strokes_answers_sigterm_at_once(tmp_path):
    import signal
    import subprocess
    import sys

    src = tmp_path / "big.png"
    landscape(4, 400).resize((4000, 3000), Image.Resampling.BILINEAR).save(src, compress_level=1)
    out = tmp_path / "s.png"
    driver = ("import sys; from sdedit.frontends.cli import main; print('ready', flush=True); "
              "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", driver, "strokes", str(src), "-o", str(out), "--kernel", "2999"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # reading the image or filtering it
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # the largest kernel on the largest input: no C call outlives a signal
    finally:
        proc.kill()
    assert proc.returncode == 143 and "terminated" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]  # nothing written, no temporary left


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
