"""The README's first figure: the main job's painting and its four outputs, made exactly as the quick start makes
them (bundled model, its recommended t0, seeds 0-3): python scripts/quickstart_figure.py"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from sdedit import edit, load_model
from sdedit.research.metrics import layout_correlation

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    model = load_model("landscapes")
    painting = Image.open(ROOT / "examples" / "landscape-strokes.png").convert("RGB")
    outs = edit(model, painting, num_samples=4, seed=0, progress=False)
    small = painting.resize((64, 64), Image.Resampling.LANCZOS)
    corr = layout_correlation(outs, [small] * len(outs))
    side, pad, top = 192, 6, 18
    fig = Image.new("RGB", (5 * (side + pad) + pad, side + top + pad), "white")
    d = ImageDraw.Draw(fig)
    for i, (img, text) in enumerate([(painting, "examples/landscape-strokes.png"),
                                     *[(o, f"seed {j}: layout corr. {c:.2f}") for j, (o, c) in enumerate(zip(outs, corr))]]):
        x = pad + i * (side + pad)
        d.text((x, 3), text if i else text + f" (t0 = {model.recommended_t0})", fill=(0, 0, 0))
        fig.paste(img.resize((side, side), Image.Resampling.LANCZOS if i == 0 else Image.Resampling.NEAREST), (x, top))
    fig.save(ROOT / "docs" / "figures" / "quickstart.png")
    print("layout correlation with the painting:", [round(float(c), 3) for c in corr])


if __name__ == "__main__":
    main()
