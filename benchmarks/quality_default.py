"""Quality of a model on simulated stroke paintings of held-out landscapes: L2 to the strokes and KID, per t0.

    python benchmarks/quality_default.py [--model landscapes] [--n 200] [--out docs]

Writes <out>/quality-default.md and .json, and <out>/figures/strokes-to-landscapes.png
(strokes, outputs at two t0, the held-out original).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from sdedit import load_model
from sdedit.api import DEFAULT_SAMPLER, default_steps
from sdedit.evaluation import held_out_landscapes, markdown_table, side_by_side, stroke_protocol
from sdedit.strokes import simulate_strokes


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
    originals = held_out_landscapes(a.n, r)
    reals = held_out_landscapes(a.n, r, offset=100_000)  # a disjoint held-out block for KID
    steps = {t0: default_steps(a.sampler, t0) for t0 in a.t0}
    outs: dict[float, list] = {}
    rows = stroke_protocol(model, originals, reals, a.t0, steps_for=steps, sampler=a.sampler, keep=outs)
    table = markdown_table(rows)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    head = (f"Model `{a.model}`, {a.n} held-out landscapes at {r}x{r} turned into 6-colour stroke paintings; KID "
            f"against {a.n} other held-out landscapes with the offline random-CNN features (sdedit.metrics); "
            f"torch {torch.__version__}, {time.perf_counter() - start:.0f} s in all.\n\n")
    (a.out / "quality-default.md").write_text(head + table + "\n")
    (a.out / "quality-default.json").write_text(json.dumps([asdict(x) for x in rows], indent=2))
    pick = [a.t0[1], a.t0[-1]] if len(a.t0) > 1 else a.t0
    idx = list(range(6))
    fig = side_by_side([[simulate_strokes(originals[i]) for i in idx], *[[outs[t][i] for i in idx] for t in pick],
                        [originals[i] for i in idx]])
    (a.out / "figures").mkdir(exist_ok=True)
    fig.save(a.out / "figures" / "strokes-to-landscapes.png")
    print(f"columns: strokes, t0={pick[0]}, t0={pick[-1]}, original")


if __name__ == "__main__":
    main()
