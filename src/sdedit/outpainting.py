"""Outpainting with SDEdit: a larger canvas, its new region pre-filled, and the per-pixel t0 that grows it.

The new region enters the reverse process at t0 = 1 (generated), a band of it along the seam at the user's t0
rising smoothly to 1 (so the fill there steers the start and the seam is blended), and the original pixels are
kept: a strength map (api.prepare_guide's strength_map) of those levels, each entered exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .errors import InputError
from .images import MAX_PIXELS, to_rgb
from .settings import DEFAULT_STRENGTH_LEVELS

FILLS = ("edge", "blur", "noise", "color")  # how the new region is pre-filled
DEFAULT_FILL = "edge"
NEW_T0 = 1.0  # where the new region (past the band) enters the reverse process: generated from noise
MAX_EXTENSION = 8192  # pixels added on one side, at most
MAX_BAND = 1024
MIN_BAND_T0 = 0.5 / 255  # the band's t0 is a level of an 8-bit strength map: below half the finest, it would be that


@dataclass(frozen=True)
class Extension:
    """Pixels added on each side of an image."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    def __post_init__(self) -> None:
        """The rule of every extension, however made: whole numbers of pixels from 0 to MAX_EXTENSION, at least one
        of them above 0."""
        for name, v in self.metadata().items():
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_EXTENSION:
                raise InputError(f"--{name} must be a whole number of pixels from 0 to {MAX_EXTENSION}, got {v!r:.40}")
        if not any(self.metadata().values()):
            raise InputError("outpainting needs at least one of --left, --right, --top, --bottom above 0")

    def canvas(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (w, h) of the grown canvas."""
        return size[0] + self.left + self.right, size[1] + self.top + self.bottom

    def metadata(self) -> dict[str, int]:
        return {"left": self.left, "right": self.right, "top": self.top, "bottom": self.bottom}


def check_extension(left: Any = 0, right: Any = 0, top: Any = 0, bottom: Any = 0) -> Extension:
    """The Extension of these sides, checked (Extension's rule)."""
    return Extension(left, right, top, bottom)


def check_canvas(size: tuple[int, int], extension: Extension) -> tuple[int, int]:
    """The grown canvas' size, refused over images.MAX_PIXELS before anything is allocated."""
    w, h = extension.canvas(size)
    if w * h > MAX_PIXELS:
        raise InputError(f"the outpainted canvas would be {w}x{h} pixels, over the limit of {MAX_PIXELS:,}")
    return w, h


def check_fill(fill: Any) -> str:
    if fill not in FILLS:
        raise InputError(f"fill must be one of {', '.join(FILLS)}, got {fill!r:.40}")
    return str(fill)


def default_band(resolution: int) -> int:
    """The seam band: a quarter of the model's resolution (16 px for the bundled 64 px model)."""
    return max(1, resolution // 4)


def check_band_t0(t0: Any) -> float:
    """The band's t0: a number from MIN_BAND_T0 to 1, so that the strength map's 8-bit level it starts at is within
    half a level of it."""
    if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not MIN_BAND_T0 <= t0 <= 1:
        raise InputError(f"--t0 (the band's) must be a number from {MIN_BAND_T0:.3f} to 1 (it is a level of an 8-bit "
                         f"strength map, 1/255 at the least), got {t0!r:.40}")
    return float(t0)


def check_band(band: Any) -> int:
    if isinstance(band, bool) or not isinstance(band, int) or not 1 <= band <= MAX_BAND:
        raise InputError(f"the seam band must be a whole number of pixels from 1 to {MAX_BAND}, got {band!r:.40}")
    return band


def grow(image: Image.Image, extension: Extension, fill: str, seed: int = 0) -> Image.Image:
    """The RGB canvas: the image at (left, top), the new region pre-filled by `fill`: the nearest edge pixel
    (edge), that smoothed (blur), noise with the image's per-channel mean and spread (noise, seeded), or the
    image's mean colour (color)."""
    check_canvas(image.size, extension)
    a = np.asarray(to_rgb(image))  # the RGB every command reads: transparency on white, 16-bit scaled down
    e = extension
    pad = ((e.top, e.bottom), (e.left, e.right), (0, 0))
    if fill in ("edge", "blur"):
        canvas = Image.fromarray(np.pad(a, pad, mode="edge"))
        if fill == "blur":
            radius = max(e.left, e.right, e.top, e.bottom) / 4
            canvas = canvas.filter(ImageFilter.GaussianBlur(radius))
    else:
        mean = a.reshape(-1, 3).mean(0)
        if fill == "color":
            out = np.broadcast_to(mean, (*extension.canvas(image.size)[::-1], 3))
        else:
            spread = a.reshape(-1, 3).std(0)
            rng = np.random.default_rng(seed)
            out = mean + spread * rng.standard_normal((*extension.canvas(image.size)[::-1], 3))
        canvas = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    canvas.paste(Image.fromarray(a), (e.left, e.top))  # the original pixels, exactly
    return canvas


def strength_map(size: tuple[int, int], extension: Extension, t0: float, band: int,
                 levels: int = DEFAULT_STRENGTH_LEVELS) -> Image.Image:
    """The canvas' per-pixel t0 as a strength map of a run at NEW_T0: 0 on the original pixels; in the new region
    t0 next to them, rising (smoothstep over `band` pixels of distance) to NEW_T0, in `levels` even steps."""
    w, h = check_canvas(size, extension)
    e = extension
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    dx = np.maximum(np.maximum(e.left - xs, xs - (e.left + size[0] - 1)), 0)
    dy = np.maximum(np.maximum(e.top - ys, ys - (e.top + size[1] - 1)), 0)
    d = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)  # distance to the original's rectangle (0 inside it)
    s = np.clip((d - 1) / band, 0.0, 1.0)
    step = np.rint(s * s * (3 - 2 * s) * (levels - 1)) / max(levels - 1, 1)
    t = t0 + (NEW_T0 - t0) * step
    g = np.where(d > 0, np.maximum(1, np.rint(t / NEW_T0 * 255)), 0)
    return Image.fromarray(g.astype(np.uint8), "L")

