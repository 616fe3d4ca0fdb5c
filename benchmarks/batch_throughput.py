"""Throughput of `sdedit batch` with 1 and 2 processes (torchrun; gloo on CPU, one GPU each on GPUs).

    python benchmarks/batch_throughput.py [--items 64] [--rounds 2] [--steps 20] [--procs 1 2]

Builds a folder of held-out landscape stroke paintings, runs the batch command with each
process count in alternation (so drift hits all alike), each into a fresh output folder, and
reports the median items/s of the whole command (model loading and start-up included) and
checks that every process count wrote the same files.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sampler", default="dpm++2m-sde")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()

    from sdedit.research.evaluation import held_out_landscapes
    from sdedit.research.strokes import simulate_strokes

    root = Path(tempfile.mkdtemp(prefix="sdedit-batch-bench-"))
    inp = root / "in"
    inp.mkdir()
    for i, img in enumerate(held_out_landscapes(a.items, 64)):
        simulate_strokes(img).save(inp / f"strokes{i:04d}.png")
    times: dict[int, list[float]] = {p: [] for p in a.procs}
    outputs: dict[int, dict[str, bytes]] = {}
    for r in range(a.rounds):
        for p in a.procs:
            out = root / f"out-{p}-{r}"
            cmd = ["batch", str(inp), "-o", str(out), "--steps", str(a.steps), "--sampler", a.sampler, "-q"]
            launcher = [sys.executable, "-m", "sdedit"] if p == 1 else \
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(p), "-m", "sdedit"]
            env = dict(os.environ)
            t = time.perf_counter()
            subprocess.run(launcher + cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[p].append(time.perf_counter() - t)
            outputs[p] = {f.name: f.read_bytes() for f in out.glob("*.png")}
    same = all(outputs[p] == outputs[a.procs[0]] for p in a.procs)
    print(f"{a.items} items, {a.sampler} {a.steps} steps at t0 = 0.5, bundled model, {os.cpu_count()} CPU cores")
    print("| processes | median s (whole command) | items/s |\n| --- | --- | --- |")
    for p in a.procs:
        med = statistics.median(times[p])
        print(f"| {p} | {med:.1f} | {a.items / med:.2f} |")
    print(f"identical outputs across process counts: {same}")


if __name__ == "__main__":
    main()
