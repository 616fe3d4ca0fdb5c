"""Is bf16 exact enough to be the default, and how much faster is the default than the original release?

    python benchmarks/precision.py [--n 200] [--rounds 5] [--out docs/benchmarks/precision-<cpu>.json]

1. Quality: the evaluation protocol (docs/evaluation.md) on the bundled model, held-out
   stroke paintings, L2 to the strokes and KID, at t0 in {0.3, 0.5}, fp32 against bf16
   autocast, same seeds; plus the largest pixel difference between the two.
2. Speed per network evaluation, side by side in one process, variants alternating: the
   paper's 256x256 DDPM network (church config, random weights) run as the original release
   runs it (eager, contiguous, fp32), against this package's default (channels_last,
   inference_mode, precision "auto" resolved for this machine) and fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, label, slug  # noqa: E402
from speed import medians  # noqa: E402

from sdedit.devices import resolve_precision  # noqa: E402
from sdedit.families.pixel import EpsDenoiser  # noqa: E402
from sdedit.engine.schedules import DiscreteVPSchedule  # noqa: E402
from sdedit.loader import load_model  # noqa: E402
from sdedit.loading.presets import PRESETS  # noqa: E402
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
            model.optimize(precision=precision)
            row, outs[precision] = bench.run(model, RunSettings(t0=t0, seed=0))
            rows.append({"t0": t0, "precision": precision, **row.__dict__})
            print(markdown_table([row]).splitlines()[-1].replace("| SDEdit", f"| {precision} SDEdit"), flush=True)
        diff = max(int(np.abs(np.asarray(a, int) - np.asarray(b, int)).max()) for a, b in zip(outs["fp32"], outs["bf16"]))
        rows[-1]["max_pixel_difference_vs_fp32"] = diff
        print(f"t0 {t0}: largest pixel difference bf16 vs fp32 over {n} images: {diff} / 255")
    return rows


def speed(rounds: int, batch: int) -> dict:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    config = PRESETS["church"].arch.unet_config()
    original = UNet2DModel(**config).eval().requires_grad_(False)  # the released code's layout: eager, contiguous
    ours = UNet2DModel(**config).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    ours.load_state_dict(original.state_dict())
    schedule = DiscreteVPSchedule()
    d_ours = EpsDenoiser(ours, schedule)
    auto = resolve_precision("auto", torch.device("cpu"))
    x = torch.randn(batch, 3, 256, 256)
    t = torch.full((batch,), 500.0)
    sigma = torch.full((batch,), float(schedule.sigmas[500]))

    def run_original() -> None:
        with torch.no_grad():
            original(x, t)

    def run_ours(dtype: torch.dtype | None):
        xc = x.contiguous(memory_format=torch.channels_last)

        def run() -> None:
            d_ours.autocast_dtype = dtype
            with torch.inference_mode():
                d_ours(xc, sigma)
        return run

    fns = {"original release (eager, contiguous, fp32)": run_original, "sdedit fp32": run_ours(None),
           f"sdedit default (auto = {auto})": run_ours(torch.bfloat16 if auto == "bf16" else None)}
    res = medians(fns, rounds)
    base = res["original release (eager, contiguous, fp32)"]
    with torch.inference_mode():
        d_ours.autocast_dtype = None
        ref = d_ours(x.contiguous(memory_format=torch.channels_last), sigma)
        d_ours.autocast_dtype = torch.bfloat16
        low = d_ours(x.contiguous(memory_format=torch.channels_last), sigma)
    out = {"batch": batch, "auto_resolves_to": auto, "seconds_per_eval": res,
           "speedup_vs_original": {k: base / v for k, v in res.items()},
           "bf16_max_abs_difference_of_D_at_step_500": float((ref - low).abs().max())}
    for k, v in res.items():
        print(f"256x256 batch {batch}: {k:<45} {v:.3f} s/eval  x{base / v:.2f}")
    print(f"bf16 vs fp32 denoised estimate at step 500: max |difference| {out['bf16_max_abs_difference_of_D_at_step_500']:.4f}"
          f" on [-1, 1]")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="held-out paintings (200)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    print(label())
    result = {"machine": describe(), "speed": speed(a.rounds, a.batch)}
    if not a.skip_quality:
        result["quality"] = quality(a.n)
    out = a.out or Path(__file__).parents[1] / "docs" / "benchmarks" / f"precision-{slug()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(out)


if __name__ == "__main__":
    main()
