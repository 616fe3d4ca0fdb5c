"""Quality per cost: the released recipe against every sampler at several step counts, on simulated strokes.

    python benchmarks/quality_per_cost.py [--model landscapes] [--n 200] [--t0 0.5] [--precision fp32] [--out docs]

Each row: network evaluations per image (NFE), seconds per image, the process's peak memory
so far, L2 to the stroke input and KID to held-out real images with their spreads.  The
released recipe is DDPM ancestral sampling with steps = 1000 * t0, K = 1 and K = 3.
Writes <out>/quality-per-cost.{md,json,csv}.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from sdedit import load_model
from sdedit.settings import DEFAULT_SAMPLER, RunSettings, default_steps
from sdedit.research.evaluation import StrokeBenchmark, held_out_landscapes, held_out_reals, markdown_table, \
    write_tables
from sdedit.engine.samplers import SAMPLERS
from sdedit.engine.schedules import GRIDS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="landscapes")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--t0", type=float, default=0.5)
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    ap.add_argument("--no-k3", action="store_true", help="skip the released recipe with K = 3 (the slowest row)")
    ap.add_argument("--no-released", action="store_true", help="skip both released-recipe rows")
    ap.add_argument("--repeats", type=int, nargs="+", default=[1], help="K values for the sampler rows (1)")
    ap.add_argument("--grids", nargs="+", choices=list(GRIDS), default=["uniform"],
                    help="step grids for the sampler rows (uniform; karras: rho-spaced from sigma(t0))")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                    help="autocast every row the same way (bf16 is ~1.8x faster on CPUs with AVX-512 BF16)")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    a = ap.parse_args()

    start = time.perf_counter()
    model = load_model(a.model, precision=a.precision)
    r = model.resolution
    bench = StrokeBenchmark(held_out_landscapes(a.n, r), held_out_reals(a.n, r))
    rows = bench.baselines()
    released = round(1000 * a.t0)
    settings = [] if a.no_released else \
        [RunSettings(t0=a.t0, sampler="ddpm", steps=released, repeats=k, seed=0) for k in ((1,) if a.no_k3 else (1, 3))]
    if not a.no_released:  # the package's default sampler with K = 3, against the released recipe's K = 3
        base = default_steps(DEFAULT_SAMPLER, a.t0)
        settings += [RunSettings(t0=a.t0, sampler=DEFAULT_SAMPLER, steps=n, repeats=3, seed=0) for n in (base, 2 * base)]
    settings += [RunSettings(t0=a.t0, sampler=s, steps=n, repeats=k, seed=0, grid=g)
                 for k in a.repeats for s in a.samplers for n in a.steps for g in a.grids]
    print(markdown_table(rows), flush=True)
    for setting in settings:
        row, _ = bench.run(model, setting)
        if setting.steps == released and setting.sampler == "ddpm":
            row = replace(row, what=f"released recipe: {row.what}")
        rows.append(row)
        print(markdown_table([row]).splitlines()[-1], flush=True)
    header = (f"Model `{a.model}` at {r}x{r}, t0 = {a.t0}, {a.n} held-out stroke paintings (6 colours), KID against "
              f"{a.n} other held-out landscapes (offline random-CNN features), torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, device {model.device}, {a.precision}; {time.perf_counter() - start:.0f} s in all.")
    write_tables(rows, a.out / "quality-per-cost", header)
    print(header)


if __name__ == "__main__":
    main()
