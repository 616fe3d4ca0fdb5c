"""Throughput of `sdedit batch`: items batched together (--batch-size) and 1 or 2 processes (torchrun).

    python benchmarks/batch_throughput.py [--items 64] [--rounds 2] [--steps 20] [--procs 1 2] [--batch-sizes 1 8 32]

Builds a folder of held-out landscape stroke paintings, runs the batch command with each
process count in alternation (so drift hits all alike), each into a fresh output folder, and
reports the median items/s of the whole command (model loading and start-up included) and
checks that every process count wrote the same files.  Each process count runs at every batch
size (items per network call); the outputs are compared within each batch size.
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
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import describe, label

    print(label(), flush=True)

    from sdedit.research.evaluation import held_out_landscapes
    from sdedit.research.strokes import simulate_strokes

    root = Path(tempfile.mkdtemp(prefix="sdedit-batch-bench-"))
    inp = root / "in"
    inp.mkdir()
    for i, img in enumerate(held_out_landscapes(a.items, 64)):
        simulate_strokes(img).save(inp / f"strokes{i:04d}.png")
    variants = [(p, b) for b in a.batch_sizes for p in a.procs]
    times: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    outputs: dict[tuple[int, int], dict[str, bytes]] = {}
    for r in range(a.rounds):
        for p, b in variants:
            out = root / f"out-{p}-{b}-{r}"
            cmd = ["batch", str(inp), "-o", str(out), "--steps", str(a.steps), "--sampler", a.sampler, "-q",
                   "--batch-size", str(b)]
            launcher = [sys.executable, "-m", "sdedit"] if p == 1 else \
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(p), "-m", "sdedit"]
            env = dict(os.environ)
            t = time.perf_counter()
            subprocess.run(launcher + cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[(p, b)].append(time.perf_counter() - t)
            outputs[(p, b)] = {f.name: f.read_bytes() for f in out.glob("*.png")}
    same = {b: all(outputs[(p, b)] == outputs[(a.procs[0], b)] for p in a.procs) for b in a.batch_sizes}
    across = all(outputs[v] == outputs[variants[0]] for v in variants)
    print(f"{a.items} items, {a.sampler} {a.steps} steps at t0 = 0.5, bundled model, {os.cpu_count()} CPU cores")
    print("| processes | --batch-size | median s (whole command) | items/s |\n| --- | --- | --- | --- |")
    rows = []
    for p, b in variants:
        med = statistics.median(times[(p, b)])
        rows.append({"processes": p, "batch_size": b, "median_s": med, "items_per_s": a.items / med})
        print(f"| {p} | {b} | {med:.1f} | {a.items / med:.2f} |")
    print(f"identical outputs across process counts, per batch size: {same}; across batch sizes too: {across}")
    if a.out:
        import json

        a.out.write_text(json.dumps({"machine": describe(), "items": a.items, "steps": a.steps, "rows": rows,
                                     "identical_across_processes": same, "identical_across_batch_sizes": across},
                                    indent=2))


if __name__ == "__main__":
    main()
