"""A model's recommended t0, measured: layout kept and realism gained per t0 on held-out paintings; and the
model-card comparison of several models at their own recommended t0.

    python benchmarks/recommended_t0.py [--models landscapes path/to/other] [--n 200]

For each model and each t0 on a grid, SDEdit (default sampler and steps, seed 0 + i) of two guide sets:
- "strokes": the paper's 6-colour stroke simulation of held-out landscapes;
- "other generator": flat-colour paintings from benchmarks/few_steps.py's `painting()`, never seen by the
  model or by any tuning.
Scores (sdedit.research.metrics): layout = Pearson correlation of the 8x8 greyscale layouts of output and
guide; KID against 200 other held-out landscapes (offline random-CNN features); L2 to the guide; sharpness =
mean |Laplacian| (which invisible noise also raises) and edge sharpness = mean Sobel gradient of the strongest
5% of pixels (which it does not; benchmarks/metric_noise.py); real landscapes' own values are printed beside them.

Rule: the recommended t0 is the largest t0 (the most realistic, KID falls with t0) whose mean layout
correlation on the strokes stays at or above LAYOUT_KEPT = 0.9, i.e. the painting's 8x8 layout explains at
least 81% of the variance of the output's.  Why 0.9: on the README's example painting the correlation is 0.95
at t0 = 0.3 (peaks, snow cap and sun where painted) and 0.83 at 0.5 (peaks gone, sun moved); the real
originals sit at about 0.95 with their own strokes, which only t0 <= 0.25 reaches, at a KID close to the
strokes' own.  Writes docs/benchmarks/recommended-t0-<cpu>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from few_steps import painting  # noqa: E402
from machine import describe, label, slug  # noqa: E402

from sdedit import load_model  # noqa: E402
from sdedit.research.evaluation import (StrokeBenchmark, held_out_landscapes, held_out_reals,  # noqa: E402
                                       markdown_table)
from sdedit.research.metrics import edge_sharpness, sharpness  # noqa: E402
from sdedit.settings import RunSettings  # noqa: E402
from sdedit.engine.editing import edit_tensors  # noqa: E402
from sdedit.images import tensor_to_images  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAYOUT_KEPT = 0.9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["landscapes"])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--t0", type=float, nargs="+", default=[0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--unconditional", type=int, default=64, help="samples from pure noise per model (64)")
    a = ap.parse_args()
    start = time.perf_counter()
    reals = held_out_reals(a.n, 64)
    sets = {"strokes": StrokeBenchmark(held_out_landscapes(a.n, 64), reals)}
    other = StrokeBenchmark([painting(i, 64) for i in range(a.n)], reals)
    other.strokes = list(other.originals)  # the paintings are the guides themselves
    sets["other generator"] = other
    base = sets["strokes"].baselines()
    threshold = LAYOUT_KEPT
    result = {"machine": describe(), "n": a.n, "t0": a.t0, "layout_threshold": threshold,
              "originals_layout": base[1].layout,
              "real_sharpness": float(sharpness(reals).mean()),
              "real_edge_sharpness": float(edge_sharpness(reals).mean()), "baselines": [asdict(r) for r in base],
              "models": {}}
    print(f"{label()}\nbaselines:\n{markdown_table(base)}\nlayout kept at >= {threshold}; the originals have "
          f"{base[1].layout:.3f}; real landscapes' sharpness {result['real_sharpness']:.2f}, edge sharpness "
          f"{result['real_edge_sharpness']:.2f}", flush=True)
    for name in a.models:
        model = load_model(name, device="cpu")
        rows: dict[str, list] = {}
        for set_name, bench in sets.items():
            rows[set_name] = []
            for t0 in a.t0:
                row, _ = bench.run(model, RunSettings(t0=t0, seed=0))
                rows[set_name].append(row)
                print(f"{name} | {set_name} | " + markdown_table([row]).splitlines()[-1], flush=True)
        samples = unconditional(model, a.unconditional)
        colour = np.stack([np.asarray(im, np.float64).mean((0, 1)) for im in samples])
        real_colour = np.stack([np.asarray(im, np.float64).mean((0, 1)) for im in reals])
        result.setdefault("unconditional", {})[name] = {
            "saturated_share": saturated(samples), "real_saturated_share": saturated(reals),
            "mean_colour_distance_to_nearest_real": float(np.mean(
                [np.linalg.norm(real_colour - c, axis=1).min() for c in colour])),
            "sharpness": float(sharpness(samples).mean()), "edge_sharpness": float(edge_sharpness(samples).mean())}
        print(f"{name}: from pure noise {result['unconditional'][name]}", flush=True)
        kept = [r.t0 for r in rows["strokes"] if r.layout is not None and r.layout >= threshold]
        recommended = max(kept) if kept else min(a.t0)
        result["models"][name] = {"recommended_t0": recommended,
                                  "rows": {k: [asdict(r) for r in v] for k, v in rows.items()}}
        print(f"{name}: recommended t0 = {recommended}", flush=True)
    result["seconds"] = time.perf_counter() - start
    out = a.out or ROOT / "docs" / "benchmarks" / f"recommended-t0-{slug()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    print(card_table(result))


def saturated(images: list) -> float:
    """Share of pixels with a channel at 0 or 255: how much of the images is clipped colour."""
    a = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return float(((a == 0) | (a == 255)).any(-1).mean())


def unconditional(model, count: int, seed: int = 0) -> list:
    """Samples from pure noise (t0 = 1), DDPM ancestral, 100 steps, the denoised estimate clipped to [-1, 1]
    (as training's sample grid and DDPM's own sampling code do)."""
    r = model.resolution
    gens = [torch.Generator().manual_seed(seed + i) for i in range(count)]
    x = edit_tensors(lambda x, s: model.denoise(x, s).clamp(-1.0, 1.0), model.schedule, torch.zeros(count, 3, r, r),
                     mask=None, t0=1.0, steps=100, repeats=1, sampler="ddpm", generator=gens)
    return tensor_to_images(x)


def card_table(result: dict) -> str:
    """Markdown: each model at its recommended t0 (and at the others'), on both guide sets."""
    lines = ["| model | t0 | guides | layout corr. | KID | L2 to guide | sharpness | edge sharpness |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    picks = sorted({m["recommended_t0"] for m in result["models"].values()})
    for name, m in result["models"].items():
        for t0 in picks:
            for set_name, rows in m["rows"].items():
                r = next(r for r in rows if abs(r["t0"] - t0) < 1e-9)
                kid = "undefined" if r["kid_mean"] is None else f"{r['kid_mean']:.4f} +- {r['kid_std']:.4f}"
                lines.append(f"| {name} | {t0:.2f} | {set_name} | {r['layout']:.3f} | {kid} | {r['l2_mean']:.2f} | "
                             f"{r['sharpness']:.2f} | {r['edge_sharpness']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
