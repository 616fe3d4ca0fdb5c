"""Regenerate the example inputs: python examples/make_examples.py (held-out seeds only, never trained on)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from sdedit.research.landscapes import HELD_OUT_START, landscape
from sdedit.research.strokes import simulate_strokes

HERE = Path(__file__).parent


def hand_drawn() -> Image.Image:
    """A stroke painting drawn the way a person would: flat colours, a ridge, a snow cap, a sun, grass."""
    im = Image.new("RGB", (256, 256), (118, 164, 222))
    d = ImageDraw.Draw(im)
    d.polygon([(0, 170), (60, 90), (110, 140), (170, 70), (256, 150), (256, 256), (0, 256)], fill=(92, 98, 120))
    d.polygon([(150, 95), (170, 70), (190, 93)], fill=(235, 235, 240))
    d.rectangle([0, 190, 256, 256], fill=(74, 128, 60))
    d.ellipse([190, 20, 225, 55], fill=(250, 230, 150))
    return im


def main() -> None:
    hand_drawn().save(HERE / "landscape-strokes.png")
    hand_drawn().save(HERE.parent / "src" / "sdedit" / "assets" / "landscape-strokes.png")  # the web UI's example
    for k, seed in enumerate((7, 21, 33), start=1):
        simulate_strokes(landscape(HELD_OUT_START + seed, 256)).save(HERE / f"strokes-{k}.png")
    # Stroke-based editing: a held-out landscape, a dark conifer painted on it, and the mask of the stroke.
    photo = landscape(HELD_OUT_START + 42, 256)
    stroke = Image.new("L", photo.size, 0)
    ImageDraw.Draw(stroke).polygon([(60, 215), (88, 120), (116, 215)], fill=255)
    painted = photo.copy()
    painted.paste((24, 70, 30), mask=stroke)
    painted.save(HERE / "edit-photo.png")
    stroke.filter(ImageFilter.MaxFilter(9)).filter(ImageFilter.GaussianBlur(2)).save(HERE / "edit-mask.png")


if __name__ == "__main__":
    main()
