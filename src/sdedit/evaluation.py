"""The paper's evaluation protocol (Sec. 5.1): simulated stroke paintings of held-out images, SDEdit, then L2 and KID."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from .editing import sdedit
from .images import image_to_tensor, tensor_to_images, to_model_size
from .landscapes import HELD_OUT_START, landscape
from .metrics import image_features, kid, l2_distance, standardize
from .model import SDEModel
from .strokes import simulate_strokes


def held_out_landscapes(count: int, size: int, offset: int = 0) -> list[Image.Image]:
    """Landscapes from the held-out seed range (never trained on); offset picks a disjoint block."""
    return [landscape(HELD_OUT_START + offset + i, size) for i in range(count)]


def run_batch(model: SDEModel, guides: list[Image.Image], *, t0: float, steps: int, sampler: str, seed: int,
              repeats: int = 1, batch: int = 32) -> list[Image.Image]:
    """SDEdit on many guides (no mask); guide i is sampled with seed + i."""
    r = model.resolution
    out: list[Image.Image] = []
    for i in range(0, len(guides), batch):
        chunk = guides[i:i + batch]
        x = torch.cat([image_to_tensor(to_model_size(g.convert("RGB"), r, "crop")) for g in chunk]).to(model.device)
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        y = sdedit(model.denoise, model.schedule, x, t0=t0, steps=steps, repeats=repeats, sampler=sampler,
                   generator=gens)
        out += tensor_to_images(y)
    return out


@dataclass(frozen=True)
class Row:
    """One line of a quality table."""

    what: str
    t0: float | None
    l2_mean: float  # faithfulness: L2 to the stroke input, mean over images
    l2_std: float
    kid_mean: float  # realism: KID to held-out real images (lower is better)
    kid_std: float  # std over KID subsets


def stroke_protocol(model: SDEModel, originals: list[Image.Image], reals: list[Image.Image], t0s: list[float], *,
                    steps_for: dict[float, int], sampler: str, colors: int = 6, seed: int = 0,
                    keep: dict[float, list[Image.Image]] | None = None) -> list[Row]:
    """Strokes of `originals`, SDEdit at each t0, then L2 to the strokes and KID against `reals` (a disjoint set)."""
    strokes = [simulate_strokes(o, colors) for o in originals]
    real_f = image_features(reals)
    rows = []

    def row(what: str, t0: float | None, images: list[Image.Image]) -> Row:
        ref, f = standardize(real_f, image_features(images))
        k_mean, k_std = kid(ref, f)
        l2 = l2_distance(images, strokes)
        return Row(what, t0, float(l2.mean()), float(l2.std()), k_mean, k_std)

    rows.append(row("stroke inputs", None, strokes))
    rows.append(row("held-out originals", None, originals))
    for t0 in t0s:
        outs = run_batch(model, strokes, t0=t0, steps=steps_for[t0], sampler=sampler, seed=seed)
        if keep is not None:
            keep[t0] = outs
        rows.append(row(f"SDEdit {sampler}, {steps_for[t0]} steps", t0, outs))
    return rows


def markdown_table(rows: list[Row]) -> str:
    """Rows as a Markdown table."""
    lines = ["| images | t0 | L2 to strokes (mean +- std) | KID (mean +- std over subsets) |",
             "| --- | --- | --- | --- |"]
    for r in rows:
        t0 = f"{r.t0:.1f}" if r.t0 is not None else "-"
        lines.append(f"| {r.what} | {t0} | {r.l2_mean:.2f} +- {r.l2_std:.2f} | {r.kid_mean:.4f} +- {r.kid_std:.4f} |")
    return "\n".join(lines)


def side_by_side(columns: list[list[Image.Image]], size: int = 128) -> Image.Image:
    """A figure: each inner list is one column, images scaled to size with nearest-neighbour pixels."""
    rows = len(columns[0])
    fig = Image.new("RGB", (len(columns) * (size + 4) + 4, rows * (size + 4) + 4), (255, 255, 255))
    for c, col in enumerate(columns):
        for r, im in enumerate(col):
            fig.paste(im.resize((size, size), Image.Resampling.NEAREST), (4 + c * (size + 4), 4 + r * (size + 4)))
    return fig

