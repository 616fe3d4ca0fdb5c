"""Image compositing with SDEdit (the paper's Sec. 4.3): paste a patch into a scene, mask it, and SDEdit it in."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from .api import edit
from .errors import InputError
from .families.base import Model
from .images import MAX_PIXELS, ImageLike, as_pil, to_rgb

MAX_SCALE = 16.0


def paste_patch(background: ImageLike, patch: ImageLike, at: tuple[int, int],
                scale: float = 1.0) -> tuple[Image.Image, Image.Image]:
    """The background with the patch pasted at (x, y) (its top-left corner), scaled; and the patch's mask.

    The mask is the patch's alpha where it has one (so only the drawn shape is edited), else its rectangle.
    """
    bg = to_rgb(as_pil(background, "background"))
    src = as_pil(patch, "patch")
    if not (isinstance(scale, (int, float)) and 0 < scale <= MAX_SCALE):
        raise InputError(f"scale must be a number in (0, {MAX_SCALE:g}], got {scale!r}")
    has_alpha = src.mode in ("RGBA", "LA", "PA") or (src.mode == "P" and "transparency" in src.info)
    rgba = src.convert("RGBA") if has_alpha else to_rgb(src).convert("RGBA")
    size = (max(1, round(rgba.width * scale)), max(1, round(rgba.height * scale)))
    if size[0] * size[1] > min(4 * bg.width * bg.height, MAX_PIXELS):
        raise InputError(f"the scaled patch ({size[0]}x{size[1]}) is far larger than the background "
                         f"({bg.width}x{bg.height})")
    rgba = rgba.resize(size, Image.Resampling.LANCZOS) if size != rgba.size else rgba
    x, y = at
    if x >= bg.width or y >= bg.height or x + size[0] <= 0 or y + size[1] <= 0:
        raise InputError(f"the patch at ({x}, {y}) of size {size[0]}x{size[1]} lies outside the "
                         f"{bg.width}x{bg.height} background")
    if rgba.getchannel("A").getbbox() is None:
        raise InputError("the patch is fully transparent: there is nothing to paste (its alpha is 0 everywhere)")
    composed = bg.copy()
    composed.paste(rgba, (x, y), rgba)
    alpha = rgba.getchannel("A")
    mask = Image.new("L", bg.size, 0)
    mask.paste(Image.fromarray(((np.asarray(alpha) > 0) * 255).astype(np.uint8)), (x, y))
    return composed, mask


def composite(model: Model, background: ImageLike, patch: ImageLike, *, at: tuple[int, int], scale: float = 1.0,
              mask_grow: int = 4, mask_feather: int = 8, **edit_options: Any) -> list[Image.Image]:
    """Paste, mask (grown and feathered) and SDEdit the patch into the background; outputs at the background's size.

    edit_options go to `edit` (t0, steps, sampler, num_samples, seed, prompt, ...).  Pixel models
    see the whole background (stretched to their square) and return it at its own size.
    """
    composed, mask = paste_patch(background, patch, at, scale)
    return edit(model, composed, mask=mask, mask_grow=mask_grow, mask_feather=mask_feather, fit="stretch",
                original_size=True, **edit_options)
