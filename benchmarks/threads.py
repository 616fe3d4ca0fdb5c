"""When are fewer threads faster?  The README's main job, whole command, at --threads 1 and 2, on a quiet machine
and beside a process that keeps one core busy (another job on a shared machine).

    python benchmarks/threads.py [--rounds 5] [--out docs/benchmarks/threads-<cpu>.json]

Variants alternate within each round; medians.  The busy process is a Python loop started for the
second half and stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from auto_precision import ROOT, command  # noqa: E402
from machine import describe, label, slug  # noqa: E402

import os  # noqa: E402


def measure(rounds: int, env: dict[str, str]) -> dict[str, float]:
    variants = {"--threads 1": ["--threads", "1"], "--threads 2": ["--threads", "2"]}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, extra in variants.items():
            times[k].append(command(extra, env))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    print(label(), flush=True)
    env = {**os.environ, "SDEDIT_PRECISION": "fp32"}  # the same arithmetic in every variant
    command([], env)  # warm the file cache
    result: dict = {"machine": describe(), "quiet": measure(a.rounds, env)}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        result["one_core_busy"] = measure(a.rounds, env)
    finally:
        hog.kill()
    for when in ("quiet", "one_core_busy"):
        for k, v in result[when].items():
            print(f"{when:<14} {k}: {v:.2f} s (median of {a.rounds})")
    out = a.out or ROOT / "docs" / "benchmarks" / f"threads-{slug()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(out)


if __name__ == "__main__":
    main()
