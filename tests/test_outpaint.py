"""Outpainting: the canvas, its fills and per-pixel t0, the original pixels bit for bit, a generated new region,
and one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdedit import InputError, load_model
from sdedit.api import outpaint, prepare_outpaint
from sdedit.frontends.cli import main
from sdedit.images import read_settings
from sdedit.outpainting import NEW_T0, Extension, check_extension, grow, strength_map
from sdedit.research.landscapes import landscape

from .helpers import random_image
from .tiny_sd import make_tiny_sd


@pytest.fixture(scope="module")
def bundled():
    return load_model("landscapes", device="cpu", precision="fp32")


def test_fills_keep_the_image_and_fill_the_rest_as_named():
    img = random_image((20, 12), seed=1)
    e = Extension(left=3, right=5, top=2, bottom=4)
    a = np.asarray(img)
    for fill in ("edge", "blur", "noise", "color"):
        c = np.asarray(grow(img, e, fill, seed=7))
        assert c.shape == (18, 28, 3) and np.array_equal(c[2:14, 3:23], a)
    edge = np.asarray(grow(img, e, "edge"))
    assert np.array_equal(edge[2:14, 23:], np.repeat(a[:, -1:], 5, axis=1))
    color = np.asarray(grow(img, e, "color"))
    assert np.abs(color[0, 0].astype(float) - a.reshape(-1, 3).mean(0)).max() <= 0.5
    noise = [np.asarray(grow(img, e, "noise", seed=s)) for s in (7, 7, 8)]
    assert np.array_equal(noise[0], noise[1]) and not np.array_equal(noise[0], noise[2])


def test_the_strength_map_keeps_the_original_and_rises_from_t0_at_the_seam_to_one():
    e = Extension(right=40)
    g = np.asarray(strength_map((30, 10), e, 0.3, 16)).astype(float) / 255
    assert g.shape == (10, 70) and (g[:, :30] == 0).all()
    assert g[:, 30] == pytest.approx(0.3, abs=1 / 255)  # the column next to the seam: the band's t0
    assert (g[:, 47:] == NEW_T0).all()  # past the band: generated
    assert (np.diff(g[0, 30:]) >= 0).all() and len(np.unique(g[g > 0])) <= 8


def test_outpainting_the_bundled_model_grows_the_canvas_keeps_every_pixel_and_generates_the_rest(bundled):
    small = landscape(5, 64)
    out = outpaint(bundled, small, right=64, bottom=32, seed=0, progress=False)[0]
    a = np.asarray(out).astype(float)
    assert out.size == (128, 96)
    assert np.array_equal(np.asarray(out)[:64, :64], np.asarray(small))  # bit for bit
    new = a[:, 64:]
    assert new.std() > 5  # not flat
    own = np.abs(np.diff(np.asarray(small).astype(float), axis=1)).mean()
    assert np.abs(np.diff(new, axis=1)).mean() < 4 * own + 2  # a picture, not noise
    meta = json.loads(out.info["sdedit"])
    assert meta["t0"] == NEW_T0 and meta["strength_map"] and meta["tile"] == 64
    assert meta["outpaint"] == {"left": 0, "right": 64, "top": 0, "bottom": 32, "fill": "edge", "band": 16,
                                "t0": 0.3, "input_size": [64, 64]}


def test_outpainting_a_latent_model_keeps_the_original_pixels(tmp_path):
    make_tiny_sd(tmp_path / "sd")
    model = load_model(tmp_path / "sd", device="cpu", precision="fp32")
    img = random_image((40, 32), seed=3)
    for kw in ({}, {"tile": 32, "tile_overlap": 16}):
        out = outpaint(model, img, left=24, top=8, seed=1, steps=2, prompt="a lake", progress=False, **kw)[0]
        assert out.size == (64, 40)
        assert np.array_equal(np.asarray(out)[8:, 24:], np.asarray(img))


def test_the_command_line_outpaints_and_records_it(tmp_path, capsys):
    landscape(2, 64).save(tmp_path / "small.png")
    assert main(["outpaint", str(tmp_path / "small.png"), "--right", "64", "--bottom", "32", "-o",
                 str(tmp_path / "out"), "--seed", "4", "--steps", "4", "--fill", "blur", "--color-match"]) == 0
    (path,) = (tmp_path / "out").iterdir()
    meta = read_settings(path)
    assert path.name == "small_outpaint_s4.png" and Image.open(path).size == (128, 96)
    assert meta["outpaint"]["fill"] == "blur" and meta["color_match"] is True
    assert capsys.readouterr().out.strip() == str(path)


@pytest.mark.parametrize("args,needle", [
    ([], "at least one of"), (["--right", "-4"], "--right must be"), (["--right", "9000"], "--right must be"),
    (["--right", "8", "--fill", "lava"], "invalid choice"), (["--right", "8", "--band", "0"], "band"),
    (["--right", "8", "--t0", "auto"], "t0"), (["--right", "8", "--tile", "8"], "below"),
    (["--right", "8", "--tile-overlap", "8"], "needs --tile"),
])
def test_bad_outpainting_is_one_line_and_exit_2(tmp_path, capsys, args, needle):
    landscape(2, 64).save(tmp_path / "small.png")
    code = main(["outpaint", str(tmp_path / "small.png"), "-o", str(tmp_path / "out"), "-q", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_canvas_over_the_pixel_limit_is_refused_before_anything_is_allocated(bundled):
    with pytest.raises(InputError, match="over the limit"):
        prepare_outpaint(bundled, landscape(2, 64), check_extension(right=8192, bottom=8192))
    with pytest.raises(InputError, match="t0 auto"):
        prepare_outpaint(bundled, landscape(2, 64), check_extension(right=8), t0="auto")
