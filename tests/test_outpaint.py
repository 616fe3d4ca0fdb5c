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


# Hostile-input review of outpainting.

def test_outpainting_reads_16_bit_and_transparent_images_as_every_command_does(bundled):
    """The original is the RGB every command reads (images.to_rgb): 16-bit scaled down, not clipped to white;
    transparency on white, not its hidden colours."""
    from sdedit.images import to_rgb

    grey = np.asarray(landscape(3, 64).convert("L")).astype(np.uint16) * 257
    deep = Image.fromarray(grey)
    rgba = np.asarray(landscape(3, 64).convert("RGBA")).copy()
    rgba[32:, :, 3] = 0
    clear = Image.fromarray(rgba)
    for img in (deep, clear):
        want = np.asarray(to_rgb(img))
        for fill in ("edge", "noise"):
            assert np.array_equal(np.asarray(grow(img, Extension(right=8), fill))[:, :64], want)
        guide = prepare_outpaint(bundled, img, check_extension(right=8))
        assert np.array_equal(np.asarray(guide.full)[:, :64], want)
    assert np.asarray(to_rgb(deep)).mean() < 250  # not the white a plain convert("RGB") makes of it


@pytest.mark.parametrize("sides", [{"right": -5}, {}, {"top": 8.0}, {"left": True}, {"bottom": 8193}])
def test_an_extension_is_checked_however_it_is_made(bundled, sides):
    with pytest.raises(InputError):
        Extension(**sides)
    with pytest.raises(InputError):
        check_extension(**sides)


def test_a_canvas_over_the_limit_is_refused_by_every_public_function_before_allocating():
    e = Extension(right=8192, bottom=8192)
    with pytest.raises(InputError, match="over the limit"):
        strength_map((64, 64), e, 0.3, 16)
    with pytest.raises(InputError, match="over the limit"):
        grow(landscape(2, 64), e, "noise")


def test_a_bad_tile_is_refused_before_the_canvas_is_grown(bundled, monkeypatch):
    import sdedit.api

    def never(*args, **kwargs):
        raise AssertionError("the canvas was grown before the tile was checked")

    monkeypatch.setattr(sdedit.api, "grow", never)
    for tile, overlap in ((8, None), (64, 40), (60, None)):
        with pytest.raises(InputError):
            prepare_outpaint(bundled, landscape(2, 64), check_extension(right=8), tile=tile, tile_overlap=overlap)


def test_a_band_t0_below_half_the_maps_finest_level_is_refused(tmp_path, capsys, bundled):
    """The band's t0 is an 8-bit level: 0.0001 would start at 1/255 (39x) and be recorded as 0.0001."""
    from sdedit.outpainting import MIN_BAND_T0, check_band_t0

    landscape(2, 64).save(tmp_path / "small.png")
    code = main(["outpaint", str(tmp_path / "small.png"), "-o", str(tmp_path / "out"), "-q", "--right", "8",
                 "--t0", "0.0001", "--model", "no-such-model"])  # refused before the model loads
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--t0" in err and "0.002" in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="--t0"):
        prepare_outpaint(bundled, landscape(2, 64), check_extension(right=8), t0=0.001)
    assert check_band_t0(0.002) == 0.002 and check_band_t0(1) == 1.0
    for t0 in (MIN_BAND_T0, 0.002, 0.01, 0.3):  # the band's first level is within half a level of t0
        g = np.asarray(strength_map((30, 10), Extension(right=20), t0, 16))
        assert abs(g[0, 30] / 255 - t0) <= 0.5 / 255 + 1e-12


def test_an_outpaint_whose_box_is_the_whole_canvas_records_no_crop(bundled):
    out = outpaint(bundled, landscape(5, 64), left=8, top=8, steps=2, seed=0, progress=False)[0]
    meta = json.loads(out.info["sdedit"])
    assert out.size == (72, 72) and "crop" not in meta
    assert np.array_equal(np.asarray(out)[8:, 8:], np.asarray(landscape(5, 64)))


def test_the_noise_fills_seed_is_recorded():
    """Every sample's canvas is filled from the run's first seed: sample j (seed + j) is reproduced only with it."""
    model = load_model("landscapes", device="cpu", precision="fp32")
    outs = outpaint(model, landscape(5, 64), right=16, fill="noise", seed=7, num_samples=2, steps=1, progress=False)
    records = [json.loads(o.info["sdedit"])["outpaint"] for o in outs]
    assert [r["fill_seed"] for r in records] == [7, 7]
    edge = outpaint(model, landscape(5, 64), right=16, seed=7, steps=1, progress=False)[0]
    assert "fill_seed" not in json.loads(edge.info["sdedit"])["outpaint"]
