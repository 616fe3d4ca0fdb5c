"""Is the karras step grid better than the uniform one at the default sampler and steps?  Paired over sampler seeds.

    python benchmarks/grid_paired.py [--n 100] [--seeds 0 1 2] [--t0 0.3 0.5] [--out docs/benchmarks/grid-paired-<cpu>.json]

The bundled model on held-out stroke paintings (the quality-per-cost protocol), dpm++2m-sde at its
default steps, each t0 and seed run on both grids; per seed the karras row minus the uniform row of
KID, edge sharpness, layout correlation and L2, then their mean +- std over seeds (a difference
much larger than its spread is real; KID's own subset spread is larger than the grids' gap).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, label, slug  # noqa: E402

from sdedit import load_model  # noqa: E402
from sdedit.research.evaluation import StrokeBenchmark, held_out_landscapes, held_out_reals  # noqa: E402
from sdedit.settings import RunSettings  # noqa: E402

METRICS = ("kid_mean", "edge_sharpness", "layout", "l2_mean")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--t0", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    print(label(), flush=True)
    model = load_model("landscapes", precision="fp32")
    r = model.resolution
    bench = StrokeBenchmark(held_out_landscapes(a.n, r), held_out_reals(a.n, r))
    result: dict = {"machine": describe(), "n": a.n, "seeds": a.seeds, "rows": [], "paired": {}}
    for t0 in a.t0:
        diffs: dict[str, list[float]] = {m: [] for m in METRICS}
        for seed in a.seeds:
            rows = {}
            for grid in ("uniform", "karras"):
                row, _ = bench.run(model, RunSettings(t0=t0, seed=seed * 100_000, grid=grid))
                rows[grid] = row.__dict__
                result["rows"].append({"t0": t0, "seed": seed, "grid": grid, **row.__dict__})
                print(f"t0 {t0} seed {seed} {grid:<8} " + " ".join(f"{m} {row.__dict__[m]:.4f}" for m in METRICS),
                      flush=True)
            for m in METRICS:
                diffs[m].append(rows["karras"][m] - rows["uniform"][m])
        paired = {m: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for m, v in diffs.items()}
        result["paired"][str(t0)] = paired
        print(f"t0 {t0}, karras - uniform over {len(a.seeds)} seeds: " +
              ", ".join(f"{m} {mu:+.4f} +- {sd:.4f}" for m, (mu, sd) in paired.items()), flush=True)
    out = a.out or Path(__file__).parents[1] / "docs" / "benchmarks" / f"grid-paired-{slug()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(out)


if __name__ == "__main__":
    main()
