"""Quality of a model on simulated stroke paintings of held-out landscapes: L2 to the strokes and KID, per t0.

    python benchmarks/quality_default.py [--model landscapes] [--n 200] [--out docs]

Writes <out>/quality-default.{md,json,csv} and <out>/figures/strokes-to-landscapes.png
(strokes, outputs at two t0, the held-out original).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sdedit import load_model
from sdedit.settings import DEFAULT_SAMPLER, RunSettings, default_steps
from sdedit.research.evaluation import StrokeBenchmark, held_out_landscapes, held_out_reals, markdown_table, \
    side_by_side, write_tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="landscapes")
    ap.add_argument("--n", type=int, default=200, help="held-out images turned into strokes (and as many reals)")
    ap.add_argument("--t0", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    ap.add_argument("--sampler", default=DEFAULT_SAMPLER)
    ap.add_argument("--out", type=Path, default=Path("docs"))
    a = ap.parse_args()

    start = time.perf_counter()
    model = load_model(a.model, device="cpu")
    r = model.resolution
    bench = StrokeBenchmark(held_out_landscapes(a.n, r), held_out_reals(a.n, r))
    rows = bench.baselines()
    outs = {}
    for t0 in a.t0:
        row, outs[t0] = bench.run(model, RunSettings(t0=t0, sampler=a.sampler, seed=0))
        rows.append(row)
        print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    header = (f"Model `{a.model}`: {a.n} held-out landscapes at {r}x{r} turned into 6-colour stroke paintings, "
              f"SDEdit with the default sampler and steps; KID against {a.n} other held-out landscapes with the "
              f"offline random-CNN features (sdedit.metrics). torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {time.perf_counter() - start:.0f} s in all.")
    write_tables(rows, a.out / "quality-default", header)
    print(markdown_table(rows))
    pick = [a.t0[1], a.t0[-1]] if len(a.t0) > 1 else a.t0
    idx = list(range(6))
    fig = side_by_side([[bench.strokes[i] for i in idx], *[[outs[t][i] for i in idx] for t in pick],
                        [bench.originals[i] for i in idx]])
    (a.out / "figures").mkdir(parents=True, exist_ok=True)
    fig.save(a.out / "figures" / "strokes-to-landscapes.png")
    print(f"figure columns: strokes, t0={pick[0]}, t0={pick[-1]}, original")


if __name__ == "__main__":
    main()
