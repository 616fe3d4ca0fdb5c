"""Control images for ControlNet (canny, scribble, reading) and the edge-agreement metric."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdedit.control_images import (
    CONTROL_PREPROCESS,
    DEFAULT_CONTROL_PREPROCESS,
    check_preprocess,
    load_control_image,
    preprocess_control,
    scribble_width,
)
from sdedit.errors import InputError
from sdedit.research.metrics import edge_f1


def square(n: int = 64, lo: int = 16, hi: int = 48, colour: tuple[int, int, int] = (255, 255, 255),
           shift: int = 0) -> Image.Image:
    """A coloured square on black: rows and columns lo..hi-1, moved right by shift."""
    a = np.zeros((n, n, 3), np.uint8)
    a[lo:hi, lo + shift:hi + shift] = colour
    return Image.fromarray(a)


def white(img: Image.Image) -> np.ndarray:
    """Bool HxW: where an edge map is white; asserts it is grey (three equal channels) and binary."""
    a = np.asarray(img)
    assert a.shape[2] == 3 and (a == a[..., :1]).all()
    assert set(np.unique(a)) <= {0, 255}
    return a[..., 0] == 255


def test_choices_and_check() -> None:
    assert CONTROL_PREPROCESS == ("none", "canny", "scribble") and DEFAULT_CONTROL_PREPROCESS == "none"
    assert [check_preprocess(n) for n in CONTROL_PREPROCESS] == list(CONTROL_PREPROCESS)
    for bad in ("depth", "Canny", "", None):
        with pytest.raises(InputError, match="none, canny, scribble") as e:
            check_preprocess(bad)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="canny"):
        preprocess_control(square(), "hed")


def test_none_is_the_rgb_image() -> None:
    rgb = square(colour=(200, 60, 40))
    assert np.array_equal(np.asarray(preprocess_control(rgb, "none")), np.asarray(rgb))
    rgba = Image.new("RGBA", (8, 6), (10, 20, 30, 255))
    out = preprocess_control(rgba, "none")
    assert out.mode == "RGB" and out.size == (8, 6) and out.getpixel((3, 3)) == (10, 20, 30)


def test_canny_of_a_flat_image_is_black() -> None:
    out = preprocess_control(Image.new("RGB", (40, 30), (120, 200, 90)), "canny")
    assert out.mode == "RGB" and out.size == (40, 30) and not white(out).any()


def test_canny_of_a_square_traces_its_border_only() -> None:
    edges = white(preprocess_control(square(), "canny"))
    inside, outside = np.zeros_like(edges), np.ones_like(edges)
    inside[18:46, 18:46] = True
    outside[13:51, 13:51] = False
    assert not edges[inside].any() and not edges[outside].any()
    for row in (20, 32, 44):  # each row through the square crosses its left and right sides
        assert edges[row, 14:19].any() and edges[row, 45:50].any()
    assert edges[14:19, 32].any() and edges[45:50, 32].any()
    # a boundary of colour alone (equal grey levels) is an edge too: the strongest channel counts
    a = np.zeros((32, 32, 3), np.uint8)
    a[:, :16] = (255, 0, 0)
    a[:, 16:] = (0, 0, 255)
    assert white(preprocess_control(Image.fromarray(a), "canny"))[:, 14:18].any(axis=1).all()


@pytest.mark.parametrize("n", [8, 64, 256])
def test_scribble_is_binary_and_wider_than_canny(n: int) -> None:
    img = square(n, n // 4, 3 * n // 4, colour=(200, 60, 40))
    canny, scribble = white(preprocess_control(img, "canny")), white(preprocess_control(img, "scribble"))
    assert preprocess_control(img, "scribble").size == (n, n)
    assert canny.any() and scribble.any()
    assert scribble[canny].all()  # the strokes cover the edges...
    assert scribble.sum() >= 2.5 * canny.sum()  # ...and are about 3 px wide, not 1
    if n >= 64:
        assert not scribble[n // 2, n // 2] and not scribble[2, 2]  # no stroke in the flat middle or far outside


def test_scribble_strokes_grow_with_the_image() -> None:
    small, large = square(256, 64, 192), square(1024, 256, 768)
    widths = []
    for img in (small, large):
        strokes = white(preprocess_control(img, "scribble"))
        widths.append(strokes[img.size[1] // 2].sum() / 2)  # the middle row crosses two vertical strokes
    assert widths[0] == scribble_width(small.size) == 3
    assert abs(widths[1] - scribble_width(large.size)) <= 1 and widths[1] >= 9


def test_scribble_ignores_pixel_noise() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((128, 128, 3), 128, np.int16) + rng.integers(-6, 7, (128, 128, 3))
    assert not white(preprocess_control(Image.fromarray(flat.astype(np.uint8)), "scribble")).any()


def test_load_control_image(tmp_path) -> None:
    img = square(colour=(200, 60, 40))
    path = tmp_path / "c.png"
    img.save(path)
    for source in (path, str(path), img, np.array(img)):
        got = load_control_image(source, "control image 1")
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), np.asarray(img))
    grey = load_control_image(np.zeros((5, 7), np.uint8), "control image 1")
    assert grey.mode == "RGB" and grey.size == (7, 5)


def test_unreadable_control_image_is_one_line(tmp_path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    for source in (bad, tmp_path / "missing.png"):
        with pytest.raises(InputError) as e:
            load_control_image(source, "control image 2")
        message = str(e.value)
        assert message.startswith("control image 2: ") and source.name in message and "\n" not in message
    with pytest.raises(InputError, match=r"^control image 2: expected a 3xHxW") as e:
        load_control_image(np.zeros((2, 3, 4, 5)), "control image 2")
    assert str(e.value).count("control image 2") == 1


def test_edge_f1_self_shift_and_empty() -> None:
    img, flat = square(), Image.new("RGB", (64, 64), (90, 90, 90))
    assert edge_f1([img], [img]).tolist() == [1.0]
    near, far = edge_f1([square(shift=2)], [img])[0], edge_f1([square(shift=6)], [img])[0]
    assert near > 0.95 and far < 0.8  # the shifted left and right sides leave the 2 px tolerance
    assert edge_f1([square(shift=6)], [img], tolerance=6)[0] > 0.95
    assert edge_f1([square(shift=6)], [img], tolerance=0)[0] < far
    assert edge_f1([flat, img], [img, flat]).tolist() == [0.0, 0.0]
    assert edge_f1([flat], [Image.new("RGB", (32, 32))]).tolist() == [1.0]
    far_apart = square(64, 2, 8)
    assert edge_f1([far_apart], [square(64, 40, 60)]).tolist() == [0.0]


def test_edge_f1_resizes_the_control_and_checks_tolerance() -> None:
    assert edge_f1([square()], [square(128, 32, 96)])[0] > 0.95
    with pytest.raises(InputError, match="tolerance"):
        edge_f1([square()], [square()], tolerance=-1)
    with pytest.raises(ValueError):
        edge_f1([square(), square()], [square()])


def test_edge_f1_with_edge_maps() -> None:
    img = square(colour=(200, 60, 40))
    canny = preprocess_control(img, "canny")
    assert edge_f1([img], [canny], control_is_edges=True).tolist() == [1.0]
    # traced again, a one-pixel edge map has edges on both sides of each line: not the same as using it as drawn
    assert edge_f1([img], [canny], tolerance=0)[0] < 1.0
    scribble = preprocess_control(img, "scribble")
    assert edge_f1([img], [scribble], tolerance=1, control_is_edges=True)[0] > 0.97  # disc corners at 1.4 px
    assert edge_f1([img], [scribble], tolerance=0, control_is_edges=True)[0] < 0.9  # 3 px strokes, 1 px edges
    assert edge_f1([img], [Image.new("RGB", (64, 64))], control_is_edges=True).tolist() == [0.0]
    big = preprocess_control(square(128, 32, 96), "canny")  # a map of twice the size is box-reduced, not lost
    assert edge_f1([img], [big], tolerance=1, control_is_edges=True)[0] > 0.95
