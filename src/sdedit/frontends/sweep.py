"""`sdedit sweep`: one input over a range of t0 (and samplers), the paper's Figure 3 on the user's own image."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..api import iter_edits, prepare_guide
from ..families.base import Model
from ..files import write_file
from ..images import ImageLike
from ..research.metrics import KidScore, image_features, kid_score, l2_distance, standardize
from ..settings import RunSettings


GRID_SAMPLES = 8  # samples per setting shown in the grid (L2 and KID use all of them, which are not kept)
MAX_T0_VALUES = 50  # t0 values per sweep: the grid's columns
SWEEP_REALS = 200  # real images read from --real: the first, sorted by path
FEATURE_BATCH = 64  # outputs turned into KID features at a time


@dataclass(frozen=True)
class SweepPoint:
    """The outputs of one setting (the first GRID_SAMPLES) and their scores."""

    settings: RunSettings
    images: list[Image.Image]
    l2: float  # mean L2 of all outputs to the guide (images in [0, 1])
    kid: KidScore | None  # KID of all outputs against the real images, with its standard error; None: see kid_undefined
    kid_undefined: str | None = None  # why KID is missing although real images were given


def _kid(real_f: torch.Tensor, feats: list[torch.Tensor]) -> tuple[KidScore | None, str | None]:
    """KID of the outputs' features against the reals', or None and why (too few or degenerate images)."""
    try:
        ref, f = standardize(real_f, torch.cat(feats))
        return kid_score(ref, f, subsets=50), None
    except ValueError as e:  # reported by the front-end, not a meaningless number
        return None, str(e)


def run_sweep(model: Model, image: ImageLike, grid: list[RunSettings], *, mask: ImageLike | None = None,
              reals: list[Image.Image] | None = None,
              progress: bool = True) -> tuple[Image.Image, list[SweepPoint]]:
    """SDEdit of one image with every setting of the grid (the same seeds everywhere); the guide as outputs see it.

    Outputs are scored as they come and only the grid's are kept, so memory does not grow with the sample count.
    """
    points = []
    real_f = image_features(reals) if reals else None
    guide = prepare_guide(model, image, mask)
    for settings in grid:
        shown: list[Image.Image] = []
        l2: list[float] = []
        feats: list[torch.Tensor] = []
        pending: list[Image.Image] = []
        for img in iter_edits(model, [guide], [settings.seed or 0], settings, progress=progress):
            l2.append(float(l2_distance([img], [guide.reference])[0]))
            if len(shown) < GRID_SAMPLES:
                shown.append(img)
            if real_f is not None:
                pending.append(img)
                if len(pending) == FEATURE_BATCH:
                    feats.append(image_features(pending))
                    pending = []
        if real_f is not None and pending:
            feats.append(image_features(pending))
        score, why = _kid(real_f, feats) if real_f is not None else (None, None)
        points.append(SweepPoint(settings, shown, float(np.mean(l2)), score, why))
    return guide.reference, points


def sweep_grid(guide: Image.Image, points: list[SweepPoint], cell: int = 128) -> Image.Image:
    """Labelled grid: columns are t0 (input first), rows are sampler x sample (the first GRID_SAMPLES)."""
    t0s = sorted({p.settings.t0 for p in points})
    samplers = list(dict.fromkeys(p.settings.sampler for p in points))
    num = len(points[0].images)
    label_w, label_h, pad = 150, 22, 4
    w = label_w + (len(t0s) + 1) * (cell + pad)
    h = label_h + len(samplers) * num * (cell + pad)
    fig = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(fig)
    d.text((label_w, 4), "input", fill=(0, 0, 0))
    for c, t0 in enumerate(t0s, start=1):
        d.text((label_w + c * (cell + pad), 4), f"t0 = {t0:.2f}", fill=(0, 0, 0))
    for s, sampler in enumerate(samplers):
        for j in range(num):
            y = label_h + (s * num + j) * (cell + pad)
            d.text((4, y + cell // 2 - 10), f"{sampler}\nsample {j}", fill=(0, 0, 0))
            fig.paste(guide.resize((cell, cell), Image.Resampling.NEAREST), (label_w, y))
            for c, t0 in enumerate(t0s, start=1):
                p = next(p for p in points if p.settings.sampler == sampler and p.settings.t0 == t0)
                fig.paste(p.images[j].resize((cell, cell), Image.Resampling.NEAREST), (label_w + c * (cell + pad), y))
    return fig


def sweep_plot(points: list[SweepPoint], path: Path, caution: str | None = None) -> Path:
    """Faithfulness (L2) and realism (KID +- its standard error) against t0, one line per sampler (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_kid = all(p.kid is not None for p in points)
    fig, axes = plt.subplots(1, 2 if has_kid else 1, figsize=(10 if has_kid else 5, 3.6), dpi=100, squeeze=False)
    for sampler in dict.fromkeys(p.settings.sampler for p in points):
        pts = sorted((p for p in points if p.settings.sampler == sampler), key=lambda p: p.settings.t0)
        t = np.array([p.settings.t0 for p in pts])
        axes[0, 0].plot(t, [p.l2 for p in pts], marker="o", label=sampler)
        if has_kid:
            axes[0, 1].errorbar(t, [p.kid.mean for p in pts], yerr=[p.kid.se for p in pts], marker="o", capsize=3,
                                label=sampler)
    axes[0, 0].set(xlabel="t0", ylabel="L2 to the input (lower = more faithful)")
    if has_kid:
        axes[0, 1].set(xlabel="t0", ylabel="KID +- s.e. (lower = more realistic)")
        if caution:
            axes[0, 1].set_title("too few samples: KID is mostly noise", fontsize=9, color="darkred")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return write_file(path, lambda f: f.write(buf.getvalue()))
