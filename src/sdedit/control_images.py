"""ControlNet conditioning images: reading them and making canny or scribble maps without network weights."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .errors import InputError
from .images import ImageLike, as_pil, to_rgb

CONTROL_PREPROCESS = ("none", "canny", "scribble")
DEFAULT_CONTROL_PREPROCESS = "none"

# Canny's hysteresis thresholds: 100 and 200 are the values of diffusers' ControlNet canny examples and of
# ControlNet's own canny demo (lllyasviel/ControlNet, gradio_canny2image.py defaults).
CANNY_LOW, CANNY_HIGH = 100, 200
SCRIBBLE_WORK_SIDE = 512  # scribbles are traced with the short side at most this many pixels
SCRIBBLE_BLUR_SIGMA = 1.0  # px at the working size: removes pixel noise, keeps a flat painting's colour boundaries


def check_preprocess(name: str) -> str:
    """The control preprocess name itself; InputError listing the choices for anything else."""
    if not isinstance(name, str) or name not in CONTROL_PREPROCESS:
        raise InputError(f"control preprocess must be one of {', '.join(CONTROL_PREPROCESS)}; got {name!r}")
    return name


def canny_edges(rgb: np.ndarray) -> np.ndarray:
    """OpenCV Canny (100, 200) of an HxWx3 or HxW uint8 array: a bool HxW edge map, lines one pixel wide.

    A colour array is taken as it is (as the diffusers and ControlNet examples do): OpenCV then uses, at each pixel,
    the channel with the strongest gradient, so colour boundaries of equal brightness are edges too.
    """
    import cv2  # here, not at import: it costs about 0.5 s of every command's start

    return cv2.Canny(np.ascontiguousarray(rgb, dtype=np.uint8), CANNY_LOW, CANNY_HIGH) > 0


def scribble_radius(size: tuple[int, int]) -> int:
    """The dilation radius of scribble strokes at the working size of a (w, h) image (see `preprocess_control`)."""
    work_side = min(min(size), SCRIBBLE_WORK_SIDE)
    return max(1, round(work_side / 256))


def scribble_width(size: tuple[int, int]) -> int:
    """About how many pixels wide the scribble strokes of a (w, h) image are, at its own size."""
    scale = max(1.0, min(size) / SCRIBBLE_WORK_SIDE)
    return max(1, round((2 * scribble_radius(size) + 1) * scale))


def _scribble(img: Image.Image) -> np.ndarray:
    """Binary HxW uint8 (0 or 255) stroke map of an RGB image, by the rule in `preprocess_control`."""
    import cv2  # here, not at import: it costs about 0.5 s of every command's start

    w, h = img.size
    scale = min(1.0, SCRIBBLE_WORK_SIDE / min(w, h))
    work = img
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        work = img.resize(size, Image.Resampling.BOX)  # an area average: the image's own texture is averaged away
    blurred = cv2.GaussianBlur(np.asarray(work), (0, 0), SCRIBBLE_BLUR_SIGMA)
    r = scribble_radius((w, h))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    strokes = cv2.dilate(canny_edges(blurred).astype(np.uint8) * 255, disc)
    if strokes.shape != (h, w):
        strokes = cv2.resize(strokes, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(strokes >= 128, 255, 0).astype(np.uint8)


def preprocess_control(image: Image.Image, how: str) -> Image.Image:
    """The ControlNet conditioning image made from `image` by `how`: an RGB image of the same size.

    none: the image in RGB, unchanged.  canny: OpenCV Canny edges (thresholds 100 and 200) as white one-pixel lines
    on black, what ControlNet's canny models were trained on.  scribble: white strokes a few pixels wide on black,
    what ControlNet's scribble models were trained on, traced from the image's colour boundaries without weights:
    an image whose short side is over 512 px is first area-reduced to 512; it is blurred by a Gaussian of sigma 1 px
    (pixel noise goes, the boundaries of a flat stroke painting stay); its Canny edges (100, 200) are dilated by a
    disc of radius r = max(1, round(s / 256)) px, s the short side at that size; the strokes are scaled back to the
    image's size and binarised at half grey.  Strokes are thus 2r + 1 px wide at up to 512 px (3 px at 64 or
    256 px, 5 px at 512) and grow in proportion beyond it (10 px at 1024): about 1 px per 100 px of the short side,
    at least 3.
    """
    check_preprocess(how)
    rgb = to_rgb(image)
    if how == "none":
        return rgb
    edges = canny_edges(np.asarray(rgb)).astype(np.uint8) * 255 if how == "canny" else _scribble(rgb)
    return Image.fromarray(np.repeat(edges[..., None], 3, axis=2))


def load_control_image(source: ImageLike, label: str) -> Image.Image:
    """A control image in RGB from a path, PIL image or array, read as every input image is (size checked before
    decoding, EXIF orientation applied); InputError in one line starting with `label` when it cannot be read."""
    try:
        return to_rgb(as_pil(source, label))
    except InputError as e:
        message = str(e)
        raise InputError(message if message.startswith(label) else f"{label}: {message}") from None
