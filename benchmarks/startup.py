"""Wall time of the README's main job as a user runs it, whole process, against another checkout of the package.

    python benchmarks/startup.py [--other PATH_TO_OTHER_SRC] [--runs 5] [--out docs/benchmarks/startup-<cpu>.json]

Runs `python -m sdedit edit examples/landscape-strokes.png -n 4 --seed 0 -o <tmp> -q` with this
checkout's package and, when given, with another checkout's `src` folder first on PYTHONPATH
(the code before a change), alternating, and reports medians and both checkouts' commits; plus
`python -X importtime`'s ten slowest imports of this checkout's run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, label, slug  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_once(src: Path) -> float:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": str(src)}
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "sdedit", "edit", str(ROOT / "examples" / "landscape-strokes.png"),
                            "-n", "4", "--seed", "0", "-o", out, "-q"], env=env, capture_output=True, text=True)
        took = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"{src}: exit {r.returncode}: {r.stderr[-300:]}")
    return took


def commit(src: Path) -> str | None:
    """The commit a checkout's src folder is at ('+dirty' when its tree has changes), or None outside git."""
    git = ["git", "-C", str(src)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def slowest_imports(n: int = 10) -> list[tuple[str, float]]:
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "sdedit", "edit",
                            str(ROOT / "examples" / "landscape-strokes.png"), "-n", "4", "--seed", "0", "-o", out,
                            "-q"], env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True)
    rows = []
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, name = line.split("|")
            try:
                rows.append((name.strip(), int(cum) / 1e6))
            except ValueError:
                continue
    top = [row for row in rows if not row[0].startswith(" ")]
    return sorted(top, key=lambda r: -r[1])[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", type=Path, help="another checkout's src folder (the code before a change)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    print(label(), flush=True)
    variants = {"this checkout": ROOT / "src", **({"other": a.other} if a.other else {})}
    for src in variants.values():
        run_once(src)  # warm the file cache
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.runs):
        for k, src in variants.items():
            times[k].append(run_once(src))
    result = {"machine": describe(), "runs": times, "median_s": {k: statistics.median(v) for k, v in times.items()},
              "other": str(a.other) if a.other else None, "commits": {k: commit(v) for k, v in variants.items()},
              "slowest_imports_s": slowest_imports()}
    for k, v in result["median_s"].items():
        print(f"{k:<15} median {v:.2f} s over {a.runs} runs ({', '.join(f'{x:.2f}' for x in times[k])})")
    for name, sec in result["slowest_imports_s"]:
        print(f"  import {name:<40} {sec:.2f} s")
    out = a.out or ROOT / "docs" / "benchmarks" / f"startup-{slug()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(out)


if __name__ == "__main__":
    main()
