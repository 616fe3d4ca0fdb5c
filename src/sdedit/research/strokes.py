"""Simulated stroke paintings (SDEdit paper, Sec. 5.1): a median filter, then an adaptive palette of a few colours.

The cost is bounded whatever the input and the kernel: an image of more than WORK_AREA pixels is filtered and given
its palette at that area (its kernel scaled with it), and the painting is then enlarged to the image's own size with
smooth region borders.  The median is Pillow's exact one up to the cost of the paper's own case (256 px, kernel 23),
and beyond it counted per grey level from running sums, a cost that does not grow with the kernel.  All work runs in
short steps (bands of rows, one grey level at a time), so Ctrl-C and SIGTERM are answered within a fraction of a
second.
"""

from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image, ImageFilter

from ..errors import InputError

PAPER_KERNEL, PAPER_SIDE = 23, 256  # the paper's median kernel at 256 px, scaled with the image
MAX_COLORS = 256  # a PNG palette's size
WORK_AREA = 512 * 512  # pixels the median and the palette are computed at, at most
PILLOW_MAX_WORK = (PAPER_SIDE * PAPER_KERNEL) ** 2  # pixels x kernel^2 up to which Pillow's exact median is used:
# the paper's own case (256 px, kernel 23) and anything cheaper; its cost grows as kernel^2, the counted one's does not
COUNT_STEP = 4  # larger kernels: the exact median of value // 4 (64 levels), i.e. within 3 of the 8-bit median
BAND_ROWS = 128  # rows per step of Pillow's median and of the enlargement


def median_kernel(size: int) -> int:
    """The paper's median kernel (23 at 256 px) scaled to an image side, odd and at least 3."""
    k = max(3, round(PAPER_KERNEL * size / PAPER_SIDE))
    return k if k % 2 == 1 else k + 1


def _odd_at_most(n: int) -> int:
    return max(1, n if n % 2 == 1 else n - 1)


def check_colors(colors: int) -> int:
    """The palette rule: from 1 to MAX_COLORS colours."""
    if isinstance(colors, bool) or not isinstance(colors, int) or not 1 <= colors <= MAX_COLORS:
        raise InputError(f"--colors must be a whole number from 1 to {MAX_COLORS}, got {colors!r}")
    return colors


def check_kernel(kernel: int, shorter_side: int | None = None) -> int:
    """The kernel rule: an odd number of pixels from 1 to the image's shorter side (unknown yet: only odd and >= 1)."""
    top = _odd_at_most(shorter_side) if shorter_side is not None else None
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0 or \
            (top is not None and kernel > top):
        bound = f"1 to {top} (this image's shorter side)" if top is not None else "1 to the image's shorter side"
        raise InputError(f"--kernel must be an odd number of pixels from {bound}, got {kernel!r}")
    return kernel


def _median_pillow(img: Image.Image, k: int) -> Image.Image:
    """Pillow's k x k median (edges replicated), in bands of rows that overlap by k // 2: the same pixels."""
    r, (w, h) = k // 2, img.size
    out = Image.new(img.mode, img.size)
    for top in range(0, h, BAND_ROWS):
        bottom = min(top + BAND_ROWS, h)
        lo, hi = max(0, top - r), min(h, bottom + r)
        band = img.crop((0, lo, w, hi)).filter(ImageFilter.MedianFilter(k))
        out.paste(band.crop((0, top - lo, w, bottom - lo)), (0, top))
    return out


def _median_counted(img: Image.Image, k: int) -> Image.Image:
    """k x k median of each channel (edges replicated) to within its bin of 4 grey levels, at a cost independent of k.

    The median of value // COUNT_STEP is the median's own bin (the map is monotone); it is the first level at which
    the window holds k*k // 2 + 1 values at or below it (Pillow's rank), counted for every level present from
    running sums down the columns and then along the rows.  Each bin is shown as the mean of the values in it.
    """
    a = np.asarray(img, np.uint8).reshape(img.height, img.width, -1)
    h, w, c = a.shape
    r = k // 2
    q = np.ascontiguousarray(np.pad(a // COUNT_STEP, ((r, r), (r, r), (0, 0)), mode="edge").transpose(2, 0, 1))
    levels = np.unique(q)
    need = k * k // 2 + 1
    count = np.uint16 if k * k < 2**16 else np.int64  # running sums may wrap; window counts (< 2^16) do not
    down = np.zeros((c, q.shape[1] + 1, q.shape[2]), count)
    across = np.zeros((c, h, q.shape[2] + 1), count)
    short = np.zeros((c, h, w), np.uint8)  # per pixel: the levels below which the window holds too few values
    for v in levels[:-1]:
        np.cumsum(q <= v, axis=1, dtype=count, out=down[:, 1:])
        np.subtract(down[:, k:], down[:, :-k], out=across[:, :, 1:])  # counts in each k-row column
        np.cumsum(across[:, :, 1:], axis=2, out=across[:, :, 1:])
        short += (across[:, :, k:] - across[:, :, :-k]) < need
    bins = levels[short]  # C x H x W
    shown = np.empty((c, 256 // COUNT_STEP), np.uint8)
    for ch in range(c):  # each bin's value: the mean of the channel's values in it (a flat image keeps its colour)
        values = a[..., ch].ravel()
        sums = np.bincount(values // COUNT_STEP, values, 256 // COUNT_STEP)
        sizes = np.bincount(values // COUNT_STEP, minlength=256 // COUNT_STEP)
        middle = np.arange(256 // COUNT_STEP) * COUNT_STEP + COUNT_STEP // 2
        shown[ch] = np.where(sizes > 0, np.rint(sums / np.maximum(sizes, 1)), middle)
    out = np.take_along_axis(shown, bins.reshape(c, -1), axis=1).reshape(c, h, w).transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(out.squeeze(2) if c == 1 else out), img.mode)


def median_filter(img: Image.Image, k: int) -> Image.Image:
    """A k x k median of an L or RGB image, edges replicated: Pillow's exact one up to PILLOW_MAX_WORK, else counted
    (within 3 grey levels)."""
    if k == 1:  # the pixel itself (Pillow's MedianFilter(1) dies of a division by zero)
        return img.copy()
    return _median_pillow(img, k) if img.width * img.height * k * k <= PILLOW_MAX_WORK else _median_counted(img, k)


def _source_coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output position along one axis: the two nearest input positions (bilinear's)."""
    lo = np.clip(np.floor((np.arange(n_out) + 0.5) * n_in / n_out - 0.5).astype(np.int64), 0, n_in - 1)
    return lo, np.minimum(lo + 1, n_in - 1)


def _enlarge(smooth: Image.Image, painted: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The painting enlarged to size, band by band: each pixel takes, of the colours of its four nearest painted
    pixels, the one nearest the filtered image enlarged bilinearly there (smooth borders, no third colour between
    two regions)."""
    idx = np.asarray(painted)
    palette = np.asarray(painted.getpalette(), np.float32).reshape(-1, 3)
    (w, h), out = size, np.empty((size[1], size[0]), np.uint8)
    x0, x1 = _source_coords(w, painted.width)
    y0, y1 = _source_coords(h, painted.height)
    step = smooth.height / h
    for top in range(0, h, BAND_ROWS):
        rows = slice(top, min(top + BAND_ROWS, h))
        candidates = [idx[ys][:, xs] for ys in (y0[rows], y1[rows]) for xs in (x0, x1)]
        best = candidates[0].copy()
        mixed = np.zeros(best.shape, bool)  # where the four differ; elsewhere the colour is theirs
        for c in candidates[1:]:
            mixed |= c != best
        if mixed.any():
            colour = np.asarray(smooth.resize((w, rows.stop - top), Image.Resampling.BILINEAR,
                                              box=(0, top * step, smooth.width, rows.stop * step)), np.float32)[mixed]
            options = np.stack([c[mixed] for c in candidates], 1)  # n x 4
            distance = ((colour[:, None] - palette[options]) ** 2).sum(-1)
            best[mixed] = options[np.arange(len(options)), distance.argmin(1)]
        out[rows] = best
    enlarged = Image.fromarray(out, "P")
    enlarged.putpalette(painted.getpalette())
    return enlarged.convert("RGB")


def simulate_strokes(img: Image.Image, colors: int = 6, kernel: int | None = None) -> Image.Image:
    """A stroke painting of img at its size: median filter (kernel scaled to the image), then `colors` colours by
    median cut; the settings are in its info['sdedit'] (written to the PNG)."""
    check_colors(colors)
    rgb = img.convert("RGB")
    shorter = min(rgb.size)
    k = check_kernel(kernel, shorter) if kernel is not None else min(median_kernel(shorter), _odd_at_most(shorter))
    scale = min(1.0, math.sqrt(WORK_AREA / (rgb.width * rgb.height)))
    work = rgb if scale == 1.0 else rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                                              Image.Resampling.BOX)
    kw = min(_odd_at_most(min(work.size)), max(1, 2 * round((k * scale - 1) / 2) + 1))
    smooth = median_filter(work, kw)
    painted = smooth.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = painted.convert("RGB") if work is rgb else _enlarge(smooth, painted, rgb.size)
    out.info["sdedit"] = json.dumps({"made_by": "sdedit strokes", "colors": colors, "kernel": k,
                                     "median_at": f"{work.width}x{work.height}", "median_kernel_there": kw})
    return out
