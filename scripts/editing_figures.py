"""The README's editing figures, on the bundled model: python scripts/editing_figures.py

docs/figures/masks-compared.png: one stroke edit pasted back with a hard mask, a feathered mask and a strength
map (same seed).  docs/figures/crop-to-mask.png: a small edit of a 1600x1200 photo by crop-to-mask against
the whole photo resized to the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sdedit import edit, load_model
from sdedit.images import grow_and_feather
from sdedit.research.landscapes import HELD_OUT_START, landscape

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures"


def labelled(columns: list[tuple[str, Image.Image]], side: int) -> Image.Image:
    """Images side by side, each scaled to `side` (nearest neighbour), a caption above each."""
    pad, top = 6, 18
    fig = Image.new("RGB", (len(columns) * (side + pad) + pad, side + top + pad), "white")
    d = ImageDraw.Draw(fig)
    for i, (text, img) in enumerate(columns):
        x = pad + i * (side + pad)
        d.text((x, 3), text, fill=(0, 0, 0))
        fig.paste(img.resize((side, int(side * img.height / img.width)), Image.Resampling.NEAREST), (x, top))
    return fig


def tree(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A conifer-shaped stroke mask inside box (white = painted)."""
    m = Image.new("L", size, 0)
    x0, y0, x1, y1 = box
    ImageDraw.Draw(m).polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=255)
    return m


def masks_compared(model) -> None:
    photo = landscape(HELD_OUT_START + 42, 64)
    stroke = tree(photo.size, (14, 26, 30, 56))
    painted = photo.copy()
    painted.paste((24, 70, 30), mask=stroke)
    mask = grow_and_feather(stroke, 1, 0)
    ramp = np.asarray(grow_and_feather(mask, 0, 4), np.float64) / 255
    strength = Image.fromarray(np.round(np.ceil(ramp * 8) / 8 * 255).astype(np.uint8))
    run = dict(seed=3, progress=False)
    hard = edit(model, painted, mask=mask, **run)[0]
    feathered = edit(model, painted, mask=mask, mask_feather=4, **run)[0]
    mapped = edit(model, painted, strength_map=strength, **run)[0]
    labelled([("strokes on the photo", painted), ("hard mask", hard), ("feathered 4 px", feathered),
              ("strength map", mapped)], 192).save(FIGURES / "masks-compared.png")


def crop_to_mask(model) -> None:
    photo = landscape(HELD_OUT_START + 42, 1200).resize((1600, 1200), Image.Resampling.LANCZOS)
    stroke = tree(photo.size, (980, 520, 1080, 760))
    painted = photo.copy()
    painted.paste((24, 70, 30), mask=stroke)
    mask = grow_and_feather(stroke, 8, 0)
    run = dict(seed=3, progress=False)
    cropped = edit(model, painted, mask=mask, **run)[0]
    whole = edit(model, painted, mask=mask, fit="stretch", original_size=True, crop_to_mask=False, **run)[0]
    view = (880, 460, 1180, 820)  # the edited region and its surroundings, at full resolution
    overview = painted.copy()
    ImageDraw.Draw(overview).rectangle(view, outline=(255, 0, 0), width=8)
    labelled([("the 1600x1200 photo", overview), ("strokes (detail)", painted.crop(view)),
              ("crop-to-mask", cropped.crop(view)), ("whole photo resized", whole.crop(view))],
             256).save(FIGURES / "crop-to-mask.png")


def main() -> None:
    model = load_model("landscapes", device="cpu")
    masks_compared(model)
    crop_to_mask(model)


if __name__ == "__main__":
    main()
