"""Image and mask input: every mode, EXIF rotation, the resize/crop policy, hostile files, atomic PNGs with settings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit import InputError, edit, read_settings, save_png
from sdedit.images import as_pil, fit_box, load_guide, open_image, to_model_size, to_rgb

from .conftest import gaussian_model
from .helpers import bomb_png


def test_modes_become_rgb():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent: white
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("L", (4, 4), 100)).getpixel((0, 0)) == (100, 100, 100)
    p = Image.new("P", (4, 4))
    p.putpalette([10, 20, 30] * 256)
    assert to_rgb(p).getpixel((0, 0)) == (10, 20, 30)
    sixteen = Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16))
    assert to_rgb(sixteen).getpixel((0, 0)) == (127, 127, 127)  # scaled (32767 / 257), not clipped to 255


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    shown = open_image(tmp_path / "r.jpg")
    assert shown.size == (20, 40)
    assert shown.getpixel((10, 2))[0] > 200  # red now at the top
    Image.new("L", (40, 20), 255).save(tmp_path / "m.png")  # a mask painted on the stored (unturned) pixels
    with pytest.raises(InputError, match="EXIF orientation"):
        load_guide(tmp_path / "r.jpg", tmp_path / "m.png")


def test_a_floating_point_image_or_mask_with_nan_is_refused(tmp_path):
    """NaN used to become 0 (keep everything) with a numpy warning."""
    a = np.full((8, 8), 0.5, np.float32)
    a[2, 3] = np.nan
    Image.fromarray(a, "F").save(tmp_path / "nan.tif")
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    for image, mask in ((tmp_path / "nan.tif", None), (tmp_path / "in.png", tmp_path / "nan.tif")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(InputError, match="NaN"):
                load_guide(image, mask)


def test_resize_policy():
    assert fit_box((300, 200), "crop") == (50, 0, 250, 200)
    assert fit_box((300, 200), "stretch") == (0, 0, 300, 200)
    img = Image.new("RGB", (300, 200))
    img.paste((255, 255, 255), (0, 0, 50, 200))  # white band cropped away
    small = to_model_size(img, 32, "crop")
    assert small.size == (32, 32) and max(small.getpixel((0, 16))) == 0


def test_hostile_files(tmp_path):
    with pytest.raises(InputError, match="not a readable image|over the limit"):
        open_image(bomb_png(tmp_path / "bomb.png"))
    with pytest.raises(InputError, match="over the limit"):
        open_image(bomb_png(tmp_path / "big.png", 8000, 8000), max_pixels=10_000_000)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError):
        open_image(tmp_path / "junk.png")
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(InputError):
        open_image(tmp_path / "cut.png")
    with pytest.raises(InputError, match="not found"):
        open_image(tmp_path / "none.png")


def test_arrays_are_checked():
    assert as_pil(torch.rand(3, 8, 8), "image").size == (8, 8)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        as_pil(torch.rand(3, 8, 8) * 3, "image")
    with pytest.raises(InputError, match="shape"):
        as_pil(torch.rand(5, 8, 8, 2), "image")


def test_mask_of_another_size_is_refused():
    with pytest.raises(InputError, match="same size"):
        edit(gaussian_model(), np.zeros((8, 8, 3), np.uint8), mask=np.zeros((8, 9), np.uint8), progress=False)


def test_soft_mask_blends_and_outputs_carry_settings(tmp_path):
    model = gaussian_model()
    img = np.full((32, 32, 3), 200, np.uint8)
    soft = np.full((32, 32), 128, np.uint8)
    soft[:, :8] = 0
    out = edit(model, img, mask=soft, t0=0.5, steps=4, seed=7, progress=False, sampler="ddim")[0]
    arr = np.asarray(out)
    assert np.array_equal(arr[:, :8], img[:, :8])
    assert not np.array_equal(arr[:, 8:], img[:, 8:])
    path = save_png(out, tmp_path / "o.png")
    again = save_png(out, tmp_path / "o.png")
    assert again.name == "o-1.png" and path.read_bytes() == again.read_bytes()
    s = read_settings(path)
    assert s["seed"] == 7 and s["t0"] == 0.5 and s["steps"] == 4 and s["sampler"] == "ddim"
    assert s["model"] == "gaussian" and s["repeats"] == 1 and "sdedit_version" in s
    assert not list(tmp_path.glob(".*.tmp"))
