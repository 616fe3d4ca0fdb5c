"""Released quality in few network evaluations: the frontier of every sampler at 5, 10 and 20 NFE, against the
released recipe, on simulated strokes of held-out landscapes and on paintings from another generator.

    python benchmarks/few_steps.py [--n 200] [--t0 0.5] [--out docs/benchmarks/few-steps-<cpu>.json]

Protocol (docs/evaluation.md): the bundled model, L2 of each output to its guide (faithfulness) and
KID of the outputs against 200 held-out landscapes (realism, offline random-CNN features), the same
seeds for every row.  Guides:
- "strokes": the paper's stroke simulation of held-out landscapes (the set the defaults were tuned on);
- "other generator": flat-colour paintings drawn by `painting()` below, a generator the model and the
  defaults never saw (polygon ridges, round suns, bands of water and fields, blob trees).
The released recipe is DDPM ancestral sampling with 1000 t0 steps, K = 1.  A setting "matches" it
when its mean L2 lies within the 95% interval of the released mean (+-1.96 std / sqrt(n)) and its
KID within one KID standard deviation.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, label, slug  # noqa: E402

from sdedit import load_model  # noqa: E402
from sdedit.engine.samplers import SAMPLERS, evaluations  # noqa: E402
from sdedit.research.evaluation import StrokeBenchmark, held_out_landscapes, held_out_reals  # noqa: E402
from sdedit.settings import RunSettings  # noqa: E402

BUDGETS = (5, 10, 20)


def painting(seed: int, size: int = 64) -> Image.Image:
    """A flat-colour landscape painting from a generator unlike the training data's (drawn at 4x, reduced)."""
    rng = np.random.default_rng(10_000 + seed)
    s = size * 4
    img = Image.new("RGB", (s, s))
    d = ImageDraw.Draw(img)
    dusk = rng.random() < 0.3
    sky = (235, 150, 90) if dusk else tuple(int(v) for v in rng.integers([70, 120, 190], [140, 180, 245]))
    d.rectangle([0, 0, s, s], fill=sky)
    horizon = int(s * rng.uniform(0.45, 0.65))
    if rng.random() < 0.7:  # a sun or moon
        r = int(s * rng.uniform(0.05, 0.09))
        cx, cy = int(s * rng.uniform(0.15, 0.85)), int(horizon * rng.uniform(0.15, 0.6))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 230, 120) if not dusk else (255, 200, 120))
    for layer in range(int(rng.integers(1, 4))):  # ridges, far to near, as jagged polygons
        base = horizon - int(s * 0.02 * layer)
        xs = np.linspace(0, s, int(rng.integers(4, 9)))
        peaks = base - rng.uniform(0.1, 0.45, len(xs)) * horizon
        grey = int(rng.integers(80, 150)) - 25 * layer
        colour = (grey, grey + int(rng.integers(0, 20)), grey + int(rng.integers(10, 40)))
        d.polygon([(0, base), *zip(xs.tolist(), peaks.tolist()), (s, base)], fill=colour)
        for x, y in zip(xs, peaks):  # snow on the highest peaks
            if y < horizon * 0.45:
                w = s * 0.04
                d.polygon([(x - w, y + w * 1.2), (x, y), (x + w, y + w * 1.2)], fill=(240, 240, 245))
    ground = [(60, 120, 50), (110, 150, 60), (170, 160, 90)][int(rng.integers(0, 3))]
    d.rectangle([0, horizon, s, s], fill=ground)
    if rng.random() < 0.6:  # a band of water
        top = horizon + int(s * rng.uniform(0.02, 0.1))
        d.rectangle([0, top, s, top + int(s * rng.uniform(0.08, 0.2))], fill=(60, 100, 160))
    for _ in range(int(rng.integers(0, 6))):  # dark blob trees
        x, y = int(rng.uniform(0, s)), int(rng.uniform(horizon + s * 0.05, s))
        r = int(s * rng.uniform(0.03, 0.07))
        d.ellipse([x - r, y - 2 * r, x + r, y], fill=(30, 70, 35))
    return img.resize((size, size), Image.Resampling.BOX)


def grid(t0: float) -> list[RunSettings]:
    """Every sampler at the step counts whose evaluations fit each budget, and the released recipe."""
    rows = [RunSettings(t0=t0, sampler="ddpm", steps=round(1000 * t0), batch_size=32, seed=0)]
    for sampler in SAMPLERS:
        for budget in BUDGETS:
            steps = max(s for s in range(1, budget + 1) if evaluations(sampler, s) <= budget)
            rows.append(RunSettings(t0=t0, sampler=sampler, steps=steps, batch_size=32, seed=0))
    return rows


def verdict(row: dict, released: dict, n: int) -> bool:
    """Within the released mean L2's 95% interval and one KID std of its KID."""
    half = 1.96 * released["l2_std"] / math.sqrt(n)
    return abs(row["l2_mean"] - released["l2_mean"]) <= half and \
        abs(row["kid_mean"] - released["kid_mean"]) <= released["kid_std"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--t0", type=float, default=0.5)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    print(label(), flush=True)
    model = load_model("landscapes")
    r = model.resolution
    reals = held_out_reals(a.n, r)
    sets = {"strokes": StrokeBenchmark(held_out_landscapes(a.n, r), reals)}
    other = StrokeBenchmark([painting(i, r) for i in range(a.n)], reals)
    other.strokes = list(other.originals)  # the paintings are the guides themselves
    sets["other generator"] = other
    result: dict = {"machine": describe(), "precision": model.default_precision, "t0": a.t0, "n": a.n, "sets": {}}
    start = time.perf_counter()
    for name, bench in sets.items():
        rows = []
        for settings in grid(a.t0):
            row, _ = bench.run(model, settings)
            rec = {"sampler": settings.sampler, "steps": settings.steps, "nfe": settings.nfe,
                   "l2_mean": row.l2_mean, "l2_std": row.l2_std, "kid_mean": row.kid_mean, "kid_std": row.kid_std,
                   "seconds_per_image": row.seconds_per_image}
            rows.append(rec)
            print(f"{name:<16} {settings.sampler:<15} steps {settings.steps:>3} NFE {settings.nfe:>3}  "
                  f"L2 {row.l2_mean:6.2f} +- {row.l2_std:4.2f}  KID {row.kid_mean:.4f} +- {row.kid_std:.4f}",
                  flush=True)
        released = rows[0]
        for rec in rows[1:]:
            rec["matches_released"] = verdict(rec, released, a.n)
        result["sets"][name] = rows
    result["seconds"] = time.perf_counter() - start
    out = a.out or Path(__file__).parents[1] / "docs" / "benchmarks" / f"few-steps-{slug()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(out)


if __name__ == "__main__":
    main()
