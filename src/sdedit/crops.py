"""Crop-to-mask: the box of a large photo that an edit at the model's resolution works on.

A photo larger than the model is otherwise resized whole to the model's resolution, so a small
masked region is edited with a few dozen pixels and comes back blurred.  Instead the mask's
bounding box, padded with context, grown to the model's aspect (square for pixel models) and to
at least the model's resolution (more context rather than upsampling), is edited at the model's
full resolution and pasted back; everything outside the box is the photo's own.  Several mask
regions share one covering box: one edit, one seed and one noise draw for the whole change.
"""

from __future__ import annotations

from PIL import Image

from .errors import InputError

DEFAULT_CROP_PADDING = 32  # pixels of context around the mask's bounding box
MAX_CROP_PADDING = 4096

Box = tuple[int, int, int, int]  # (left, top, right, bottom)


def check_padding(padding: int) -> int:
    """The crop padding, or InputError: a whole number of pixels in [0, MAX_CROP_PADDING]."""
    if isinstance(padding, bool) or not isinstance(padding, int) or not 0 <= padding <= MAX_CROP_PADDING:
        raise InputError(f"crop-to-mask padding must be a whole number of pixels in [0, {MAX_CROP_PADDING}], "
                         f"got {padding!r}")
    return padding


def _span(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """An interval of `length` (at most `limit`) centred on [lo, hi), shifted to lie inside [0, limit)."""
    length = min(length, limit)
    start = (lo + hi - length) // 2
    start = max(0, min(start, limit - length))
    return start, start + length


def mask_box(mask: Image.Image, padding: int, min_side: int, square: bool) -> Box | None:
    """The box to edit around the mask's non-zero pixels: padded, at least min_side a side, square if asked,
    inside the image; None for an empty mask (nothing to edit)."""
    bbox = mask.getbbox()
    if bbox is None:
        return None
    left, top, right, bottom = bbox
    width, height = mask.size
    w, h = max(right - left + 2 * padding, min_side), max(bottom - top + 2 * padding, min_side)
    if square:
        side = min(max(w, h), width, height)
        # a square that holds the mask (less padding if need be); else the covering box, stretched by the model
        w, h = (side, side) if side >= max(right - left, bottom - top) else (max(w, h), max(w, h))
    x0, x1 = _span(left, right, w, width)
    y0, y1 = _span(top, bottom, h, height)
    return x0, y0, x1, y1
