"""SDEdit against FlowEdit on text edits: `sdedit eval --edits`'s table on a tiny random SD3 model.

    python benchmarks/edit_methods.py [--rows 6] [--out docs/benchmarks/edit-methods-tiny-sd3-<cpu>]

The model is the test suite's tiny Stable Diffusion 3 with random weights and the rows are random landscapes with
made-up prompts (half of them masked): the numbers check the plumbing (both methods on the same rows and seeds,
FlowEdit's no-noise start, the masked rows' zero outside the mask), not which method edits better.  With real
weights, run the same `sdedit eval --edits` command on your own rows.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from machine import label, slug  # noqa: E402
from tests.tiny_sd import make_tiny_sd3  # noqa: E402

PROMPTS = [("a green valley", "a snowy valley"), ("a lake at noon", "a lake at sunset"),
           ("hills under a blue sky", "hills under a storm")]


def rows(folder: Path, n: int) -> None:
    """n landscapes with source and target prompts, every other one with a mask over its lower half."""
    from sdedit.research.landscapes import landscape

    with open(folder / "edits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "source_prompt", "target_prompt", "mask"])
        for i in range(n):
            landscape(100 + i, 64).save(folder / f"{i}.png")
            mask = ""
            if i % 2:
                m = np.zeros((64, 64), np.uint8)
                m[32:] = 255
                Image.fromarray(m).save(folder / f"{i}-mask.png")
                mask = f"{i}-mask.png"
            w.writerow([f"{i}.png", *PROMPTS[i % len(PROMPTS)], mask])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--out", type=Path, help="output stem (.md, .json, .csv)")
    a = ap.parse_args()
    out = a.out or ROOT / "docs" / "benchmarks" / f"edit-methods-tiny-sd3-{slug()}"
    print(label(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        make_tiny_sd3(Path(tmp) / "sd3")
        (Path(tmp) / "rows").mkdir()
        rows(Path(tmp) / "rows", a.rows)
        command = [sys.executable, "-m", "sdedit", "eval", "--model", str(Path(tmp) / "sd3"), "--edits",
                   str(Path(tmp) / "rows"), "--t0", "0.5", "0.7", "0.9", "--steps", "8", "-o",
                   str(Path(tmp) / "eval"), "-q"]
        print(" ".join(command[1:]).replace(tmp, "TMP"), flush=True)
        subprocess.run(command, check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".md", ".json", ".csv"):
            shutil.copy(Path(tmp) / "eval" / f"eval{suffix}", out.with_suffix(suffix))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
