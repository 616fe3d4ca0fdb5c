"""Is bf16 exact enough to be chosen where it is faster?  (Its speed: benchmarks/auto_precision.py.)

    python benchmarks/precision.py [--n 200] [--out docs/benchmarks/precision-<cpu>.json]

The evaluation protocol (docs/evaluation.md) on the bundled model, held-out stroke paintings,
L2 to the strokes and KID, at t0 in {0.3, 0.5}, fp32 against bf16 autocast, same seeds; plus
the largest pixel difference between the two.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, label, slug  # noqa: E402

from sdedit.loader import load_model  # noqa: E402
from sdedit.research.evaluation import (StrokeBenchmark, held_out_landscapes, held_out_reals,  # noqa: E402
                                       markdown_table)
from sdedit.settings import RunSettings  # noqa: E402


def quality(n: int) -> list[dict]:
    model = load_model("landscapes", device="cpu")
    r = model.resolution
    bench = StrokeBenchmark(held_out_landscapes(n, r), held_out_reals(n, r))
    rows = []
    for t0 in (0.3, 0.5):
        outs = {}
        for precision in ("fp32", "bf16"):
            row, outs[precision] = bench.run(model, RunSettings(t0=t0, seed=0, precision=precision))
            rows.append({"t0": t0, "precision": precision, **row.__dict__})
            print(markdown_table([row]).splitlines()[-1].replace("| SDEdit", f"| {precision} SDEdit"), flush=True)
        diff = max(int(np.abs(np.asarray(a, int) - np.asarray(b, int)).max()) for a, b in zip(outs["fp32"], outs["bf16"]))
        rows[-1]["max_pixel_difference_vs_fp32"] = diff
        print(f"t0 {t0}: largest pixel difference bf16 vs fp32 over {n} images: {diff} / 255")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="held-out paintings (200)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    print(label())
    result = {"machine": describe(), "quality": quality(a.n)}
    out = a.out or Path(__file__).parents[1] / "docs" / "benchmarks" / f"precision-{slug()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(out)


if __name__ == "__main__":
    main()
