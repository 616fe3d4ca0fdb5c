"""Crop-to-mask: a large photo is edited in its mask's box at the model's resolution and returned whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sdedit import edit, load_model
from sdedit.crops import mask_box
from sdedit.errors import InputError
from sdedit.frontends.cli import main

from .helpers import random_image
from .tiny_sd import make_tiny_sd


def photo(size: tuple[int, int]) -> Image.Image:
    """A smooth gradient with fine random texture: detail that survives only a mild resize."""
    w, h = size
    ramp = np.linspace(40, 200, w)[None, :, None] * np.ones((h, 1, 3))
    texture = np.asarray(random_image(size, seed=3), float)
    return Image.fromarray((0.6 * ramp + 0.4 * texture).astype(np.uint8))


def square_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


def detail(img: Image.Image, box: tuple[int, int, int, int]) -> float:
    """Mean absolute difference between neighbouring pixels inside box (high-frequency content)."""
    a = np.asarray(img.crop(box).convert("L"), float)
    return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


def test_mask_box_pads_squares_grows_to_the_model_and_stays_inside():
    size = (1600, 1200)
    assert mask_box(Image.new("L", size, 0), 32, 64, True) is None  # nothing to edit
    box = mask_box(square_mask(size, (1000, 300, 1060, 340)), 32, 64, True)
    assert box == (968, 258, 1092, 382)  # 60x40 + 2 x 32 -> a 124 square, centred on the mask
    assert mask_box(square_mask(size, (100, 100, 110, 110)), 0, 64, True) == (73, 73, 137, 137)  # model size
    assert mask_box(square_mask(size, (0, 0, 10, 10)), 16, 64, True) == (0, 0, 64, 64)  # shifted inside
    assert mask_box(square_mask(size, (1590, 1190, 1600, 1200)), 16, 64, False) == (1536, 1136, 1600, 1200)
    assert mask_box(square_mask(size, (100, 500, 1500, 520)), 10, 64, False) == (90, 478, 1510, 542)  # any aspect
    assert mask_box(square_mask(size, (100, 500, 1500, 520)), 10, 64, True) == (90, 0, 1510, 1200)  # cut to fit
    two = square_mask(size, (100, 100, 120, 120))
    two.paste(255, (300, 200, 320, 220))
    assert mask_box(two, 0, 64, True) == (100, 50, 320, 270)  # one box covering both regions


def test_large_photo_edited_at_the_models_resolution_in_the_masks_box():
    model = load_model("landscapes", device="cpu")
    img = photo((1600, 1200))
    mask = square_mask(img.size, (1000, 300, 1060, 360))
    run = dict(t0=0.5, steps=5, seed=0, progress=False)
    out = edit(model, img, mask=mask, **run)[0]  # on by default: the photo is larger than the model
    assert out.size == img.size
    keep = np.asarray(mask) == 0
    assert (np.asarray(out)[keep] == np.asarray(img)[keep]).all()
    meta = json.loads(out.info["sdedit"])
    box = tuple(meta["crop"])
    assert box == (968, 268, 1092, 392) and meta["size"] == [64, 64]
    # exactly the model-resolution edit of that box, pasted back
    ref = edit(model, img.crop(box), mask=mask.crop(box), fit="stretch", original_size=True, crop_to_mask=False,
               **run)[0]
    assert np.array_equal(np.asarray(out.crop(box)), np.asarray(ref))
    # and far more detail than the whole photo resized to 64 px and back
    whole = edit(model, img, mask=mask, fit="stretch", original_size=True, crop_to_mask=False, **run)[0]
    assert (np.asarray(whole)[keep] == np.asarray(img)[keep]).all()
    region = (1000, 300, 1060, 360)
    assert detail(out, region) > 3 * detail(whole, region)
    assert np.abs(np.asarray(out.crop(region), float) - np.asarray(img.crop(region), float)).mean() > 5  # edited


def test_small_inputs_and_unmasked_inputs_are_not_cropped():
    model = load_model("landscapes", device="cpu")
    small = photo((60, 50))
    out = edit(model, small, mask=square_mask(small.size, (10, 10, 20, 20)), t0=0.5, steps=3, seed=0,
               progress=False)[0]
    assert "crop" not in json.loads(out.info["sdedit"])
    big = photo((200, 150))
    out = edit(model, big, t0=0.5, steps=3, seed=0, progress=False)[0]
    meta = json.loads(out.info["sdedit"])
    assert "crop" not in meta and meta["size"] == [64, 64] and out.size == (150, 150)  # the centre square's size
    out = edit(model, small, mask=square_mask(small.size, (10, 10, 20, 20)), crop_to_mask=8, t0=0.5, steps=3,
               seed=0, progress=False)[0]
    assert json.loads(out.info["sdedit"])["crop"] == [0, 0, 50, 50] and out.size == small.size  # forced; fits 50


def test_latent_model_crops_to_at_most_its_area_at_any_aspect(tmp_path):
    make_tiny_sd(tmp_path / "sd")
    model = load_model(tmp_path / "sd", device="cpu")  # 64 px model
    img = photo((400, 160))
    mask = square_mask(img.size, (200, 40, 330, 60))
    out = edit(model, img, mask=mask, prompt="x", t0=0.5, steps=2, seed=0, progress=False)[0]
    meta = json.loads(out.info["sdedit"])
    left, top, right, bottom = meta["crop"]
    assert out.size == img.size and (right - left, bottom - top) == (194, 84)  # 130x20 + 2 x 32, at least 64
    w, h = meta["size"]
    assert w % 8 == 0 and h % 8 == 0 and w * h <= 64 * 64 and w > h
    keep = np.asarray(mask) == 0
    assert (np.asarray(out)[keep] == np.asarray(img)[keep]).all()


def test_command_line_crop_flags(tmp_path, capsys):
    img, mask = photo((300, 200)), square_mask((300, 200), (100, 100, 140, 130))
    img.save(tmp_path / "in.png")
    mask.save(tmp_path / "m.png")
    common = [str(tmp_path / "in.png"), "--mask", str(tmp_path / "m.png"), "--steps", "2", "--seed", "0", "-q"]
    assert main(["edit", *common, "--crop-to-mask", "16", "-o", str(tmp_path / "a")]) == 0
    assert json.loads(Image.open(next((tmp_path / "a").glob("*.png"))).info["sdedit"])["crop"] == [84, 79, 156, 151]
    assert main(["edit", *common, "--no-crop-to-mask", "-o", str(tmp_path / "b")]) == 0
    out = Image.open(next((tmp_path / "b").glob("*.png")))
    # one output size rule for every path: the size of the input edited (here the centre 200x200 crop)
    assert "crop" not in json.loads(out.info["sdedit"]) and out.size == (200, 200)
    assert main(["edit", *common, "--crop-to-mask=-3", "-o", str(tmp_path / "c")]) == 2
    assert "--crop-to-mask PADDING" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_one_output_size_rule_for_every_path(tmp_path, capsys):
    """Outputs have the size of the input they edit, masked or not, cropped to the mask or not, for every family;
    --model-size keeps the model's size (and so cannot go with crop-to-mask, which returns the whole photo)."""
    img, mask = photo((256, 256)), square_mask((256, 256), (100, 100, 140, 130))
    img.save(tmp_path / "in.png")
    mask.save(tmp_path / "m.png")
    base = [str(tmp_path / "in.png"), "--steps", "2", "--seed", "0", "-q"]
    runs = {"plain": [], "mask": ["--mask", str(tmp_path / "m.png")],
            "no crop": ["--mask", str(tmp_path / "m.png"), "--no-crop-to-mask"],
            "stretch": ["--fit", "stretch"], "model size": ["--model-size"],
            "model size, mask": ["--mask", str(tmp_path / "m.png"), "--model-size"]}
    for name, extra in runs.items():
        assert main(["edit", *base, *extra, "-o", str(tmp_path / name)]) == 0, name
    sizes = {name: Image.open(next((tmp_path / name).glob("*.png"))).size for name in runs}
    assert sizes == {"plain": (256, 256), "mask": (256, 256), "no crop": (256, 256), "stretch": (256, 256),
                     "model size": (64, 64), "model size, mask": (64, 64)}
    capsys.readouterr()
    assert main(["edit", *base, "--mask", str(tmp_path / "m.png"), "--crop-to-mask", "--model-size", "-o",
                 str(tmp_path / "x")]) == 2
    assert "cannot keep the model's size" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["edit", *base, "--mask", str(tmp_path / "m.png"), "--fit", "stretch", "-o", str(tmp_path / "y")]) == 2
    assert "--fit does not act on a crop-to-mask edit" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert "fit" not in json.loads(Image.open(next((tmp_path / "mask").glob("*.png"))).info["sdedit"])


def test_padding_is_checked():
    model = load_model("landscapes", device="cpu")
    with pytest.raises(InputError, match="padding"):
        edit(model, photo((100, 100)), mask=square_mask((100, 100), (1, 1, 5, 5)), crop_to_mask=-1, progress=False)


def test_the_reference_of_a_crop_to_mask_edit_is_the_whole_photo_its_output_is():
    """Faithfulness scores (sweep, eval) compare an output with its guide: for crop-to-mask, the whole photo."""
    import numpy as np
    from PIL import Image

    from sdedit.api import edit, prepare_guide
    from sdedit.research.metrics import l2_distance

    from .conftest import gaussian_model

    model = gaussian_model(resolution=32)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    mask = np.zeros((96, 128), np.uint8)
    mask[40:50, 60:70] = 255
    guide = prepare_guide(model, photo, Image.fromarray(mask))
    assert guide.frame.whole_input and guide.reference.size == photo.size
    out = edit(model, photo, mask=Image.fromarray(mask), t0=0.5, steps=4, seed=0, progress=False)[0]
    changed = np.asarray(out, float) - np.asarray(photo, float)
    assert l2_distance([out], [guide.reference])[0] == pytest.approx(np.sqrt(((changed / 255) ** 2).sum()))
