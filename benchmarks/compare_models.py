"""Is one model measurably better than another for SDEdit?  Paired scores over several sampler seeds.

    python benchmarks/compare_models.py BASELINE MODEL [MODEL ...] [--seeds 0 1000 2000 3000] [--n 200] [--t0 0.3]

Each model edits the same 200 held-out stroke paintings (benchmarks/recommended_t0.py's "strokes") at the same t0,
once per sampler seed (painting i seeded seed + i, default sampler and steps).  With one seed, KID moves by about
+-0.01 from the sampler's noise alone (the bundled model: 0.300 to 0.323 over four seeds), as much as the
differences between the runs compared in docs/default-model.md; the same seeds for every model make the
differences paired, so their mean and spread over seeds say whether a gap is larger than that noise.  Scores
(sdedit.research.metrics): layout = 8x8 layout correlation with the painting, KID to 200 other held-out landscapes
(offline random-CNN features), edge sharpness = mean Sobel gradient of each image's strongest 5% of pixels (which
invisible noise does not move; benchmarks/metric_noise.py), L2 to the painting.

Any model may end in `@T0` to run it at its own t0 instead of --t0 (e.g. `runs/a@0.28`), so that a model
more faithful to the painting at the same t0 can be compared with the baseline at equal layout.
A MODEL may also be `autoguide:GOOD,BAD,W`: GOOD's network guided by BAD's, eps = eps_BAD + W (eps_GOOD - eps_BAD)
(autoguidance, Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"; two network
evaluations per step).  It is a research probe that wraps the loaded network, not a feature of the package.
Writes docs/benchmarks/compare-models-<cpu>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, label, slug  # noqa: E402

from sdedit import load_model  # noqa: E402
from sdedit.research.evaluation import StrokeBenchmark, held_out_landscapes, held_out_reals  # noqa: E402
from sdedit.settings import RunSettings, SettingError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCORES = ("layout", "kid_mean", "edge_sharpness", "l2_mean")


class Autoguided(torch.nn.Module):
    """Two epsilon networks of one schedule as one: eps_bad + w (eps_good - eps_bad) (Karras et al. 2024)."""

    def __init__(self, good: torch.nn.Module, bad: torch.nn.Module, w: float):
        super().__init__()
        self.good, self.bad, self.w = good, bad, w

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> types.SimpleNamespace:
        bad = self.bad(x, t).sample
        return types.SimpleNamespace(sample=bad + self.w * (self.good(x, t).sample - bad))


def split_t0(spec: str, default: float) -> tuple[str, float]:
    """`MODEL@T0` -> (MODEL, T0); a spec without a numeric `@` suffix runs at the default t0."""
    name, _, suffix = spec.rpartition("@")
    try:
        return (name, float(suffix)) if name else (spec, default)
    except ValueError:
        return spec, default


def load(spec: str):
    """A model by name or folder, or `autoguide:GOOD,BAD,W`."""
    if not spec.startswith("autoguide:"):
        return load_model(spec, device="cpu")
    good, bad, w = spec.removeprefix("autoguide:").split(",")
    model = load_model(good, device="cpu")
    model.denoiser_net.unet = Autoguided(model.denoiser_net.unet, load_model(bad, device="cpu").denoiser_net.unet,
                                         float(w))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="the baseline first, then the models compared with it")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1000, 2000, 3000])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--t0", type=float, default=0.3)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.n < 20:
        ap.error("--n must be at least 20 (KID scales its features by the real images' statistics)")
    runs = [(spec, *split_t0(spec, a.t0)) for spec in a.models]
    for spec, _, t0 in runs:
        try:
            RunSettings(t0=t0)  # the package's own t0 rule, checked before the benchmark is built
        except SettingError as e:
            ap.error(f"{spec}: {e}")
    start = time.perf_counter()
    bench = StrokeBenchmark(held_out_landscapes(a.n, 64), held_out_reals(a.n, 64))
    print(label(), flush=True)
    per_seed: dict[str, list[dict]] = {}
    for spec, name, t0 in runs:
        model = load(name)
        per_seed[spec] = []
        for seed in a.seeds:
            row, _ = bench.run(model, RunSettings(t0=t0, seed=seed))
            per_seed[spec].append({k: getattr(row, k) for k in SCORES} | {"seed": seed,
                                                                           "t0": t0,
                                                                           "seconds_per_image": row.seconds_per_image})
            print(f"{spec} seed {seed}: " + ", ".join(f"{k} {getattr(row, k):.4f}" for k in SCORES), flush=True)
    base = per_seed[a.models[0]]
    summary = {}
    lines = [f"t0 {a.t0} unless a model names its own, {a.n} stroke paintings, seeds {a.seeds}; "
             f"differences paired with {a.models[0]} (mean +- std over seeds)", "",
             "| model | t0 | layout corr. | KID | edge sharpness | L2 to guide | s / image | layout - baseline's | "
             "KID - baseline's | edge - baseline's |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for spec, rows in per_seed.items():
        mean = {k: statistics.fmean(r[k] for r in rows) for k in (*SCORES, "seconds_per_image")}
        diff = {k: [r[k] - b[k] for r, b in zip(rows, base, strict=True)] for k in SCORES}
        spread = {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for k, v in diff.items()}
        summary[spec] = {"mean": mean, "difference": spread}
        d_layout, d_kid, d_edge = spread["layout"], spread["kid_mean"], spread["edge_sharpness"]
        lines.append(f"| {spec} | {rows[0]['t0']:g} | {mean['layout']:.3f} | {mean['kid_mean']:.4f} | "
                     f"{mean['edge_sharpness']:.2f} | {mean['l2_mean']:.2f} | {mean['seconds_per_image']:.3f} | "
                     f"{d_layout[0]:+.4f} +- {d_layout[1]:.4f} | {d_kid[0]:+.4f} +- {d_kid[1]:.4f} | "
                     f"{d_edge[0]:+.2f} +- {d_edge[1]:.2f} |")
    result = {"machine": describe(), "n": a.n, "t0": a.t0, "seeds": a.seeds, "baseline": a.models[0],
              "per_seed": per_seed, "summary": summary, "seconds": time.perf_counter() - start}
    out = a.out or ROOT / "docs" / "benchmarks" / f"compare-models-{slug()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    print(f"wrote {out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
