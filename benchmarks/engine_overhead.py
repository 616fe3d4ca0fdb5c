"""The engine's own cost per step (everything but the network), this checkout against an earlier commit's samplers.

    python benchmarks/engine_overhead.py [--base f73b296] [--steps 200] [--rounds 7] [--out FILE]

A denoiser that costs almost nothing (D = x / (1 + sigma^2), the exact D of N(0, 1) data) runs
each sampler for --steps steps on a batch of 4 at 64x64 with one generator per row, so what is
timed is the loop: schedule look-ups, sigma tensors, the divergence check, noise and the update.
The base commit's engine/samplers.py is loaded from git beside this checkout's and both run
alternately in one process; medians over --rounds.  On a CPU a host "sync" is free, so the gains
here are the Python and allocation work; on a GPU each removed per-step host read also stops a
pipeline stall (benchmarks/gpu.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, label  # noqa: E402

from sdedit.engine import samplers as current  # noqa: E402
from sdedit.engine.schedules import DiscreteVPSchedule, sigma_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_base(rev: str):
    """The samplers module of another commit, imported under its own name."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/sdedit/engine/samplers.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "base_samplers.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("base_samplers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gaussian_d(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x / (1.0 + sigma.reshape(-1, 1, 1, 1).to(x.dtype) ** 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="f73b296", help="the commit to compare with (default: version 0.2)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out")
    a = ap.parse_args()
    base = load_base(a.base)
    sigmas = sigma_grid(DiscreteVPSchedule(), 0.5, a.steps)
    x = torch.randn(4, 3, 64, 64)
    print(f"{label()}, {torch.get_num_threads()} threads; {a.steps} steps, batch 4, 64x64; base {a.base}")
    rows = []
    for name in current.SAMPLERS:
        times: dict[str, list[float]] = {"base": [], "this": []}
        for _ in range(a.rounds):
            for which, module in (("base", base), ("this", current)):
                gens = [torch.Generator().manual_seed(i) for i in range(4)]
                t = time.perf_counter()
                module.SAMPLERS[name](gaussian_d, x, sigmas, generator=gens)
                times[which].append((time.perf_counter() - t) / a.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"sampler": name, "base_us_per_step": med["base"] * 1e6, "this_us_per_step": med["this"] * 1e6,
                     "ratio": med["base"] / med["this"]})
        print(f"{name:<16} base {med['base'] * 1e6:8.1f} us/step   this {med['this'] * 1e6:8.1f} us/step   "
              f"x{med['base'] / med['this']:.2f}")
    step = DiscreteVPSchedule()
    s = torch.full((4,), 1.5)
    grid = step.log_sigmas.clone()
    lookups = {"without a device grid (copied per call)": lambda: step.step(s),
               "with the denoiser's buffer": lambda: step.step(s, grid)}
    for what, fn in lookups.items():
        t = time.perf_counter()
        for _ in range(2000):
            fn()
        print(f"schedule.step {what}: {(time.perf_counter() - t) / 2000 * 1e6:.1f} us")
    if a.out:
        Path(a.out).write_text(json.dumps({"machine": describe(), "base": a.base, "steps": a.steps, "rows": rows},
                                          indent=1))


if __name__ == "__main__":
    main()
