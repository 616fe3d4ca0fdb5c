"""Simulated stroke paintings (SDEdit paper, Sec. 5.1): a median filter, then an adaptive palette of a few colours."""

from __future__ import annotations

from PIL import Image, ImageFilter


def median_kernel(size: int) -> int:
    """The paper's median kernel (23 at 256 px) scaled to an image side, odd and at least 3."""
    k = max(3, round(23 * size / 256))
    return k if k % 2 == 1 else k + 1


def simulate_strokes(img: Image.Image, colors: int = 6, kernel: int | None = None) -> Image.Image:
    """A stroke painting of img: median filter (kernel scaled to the image), then `colors` colours by median cut."""
    if not 1 <= colors <= 256:
        raise ValueError(f"colors must be in 1..256, got {colors}")
    rgb = img.convert("RGB")
    k = kernel or median_kernel(min(rgb.size))
    if k % 2 == 0 or k < 1:
        raise ValueError(f"the median kernel must be odd and positive, got {k}")
    smooth = rgb.filter(ImageFilter.MedianFilter(k))
    return smooth.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB")
