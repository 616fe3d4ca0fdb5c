"""Control adherence against t0 with and without a ControlNet: `sdedit eval`'s table on a tiny random SD model.

    python benchmarks/control_adherence.py [--n 24] [--out docs/benchmarks/control-adherence-tiny-<cpu>]

The models are the test suite's tiny Stable Diffusion and a tiny ControlNet made from its UNet, with random
weights: the numbers check the plumbing (scale 0 is the plain run, the edge F1 column moves with the scale and
t0), not the quality of a real ControlNet.  With real weights, run the same `sdedit eval` command on them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from machine import label, slug  # noqa: E402
from tests.tiny_sd import make_tiny_controlnet, make_tiny_sd  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24, help="stroke paintings per row")
    ap.add_argument("--out", type=Path, help="output stem (.md, .json, .csv)")
    a = ap.parse_args()
    out = a.out or ROOT / "docs" / "benchmarks" / f"control-adherence-tiny-{slug()}"
    print(label(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = make_tiny_sd(Path(tmp) / "sd")
        make_tiny_controlnet(Path(tmp) / "cn", pipe.unet)
        command = [sys.executable, "-m", "sdedit", "eval", "--model", str(Path(tmp) / "sd"), "--controlnet",
                   str(Path(tmp) / "cn"), "--control-scale", "0", "0.5", "1", "--control-preprocess", "canny",
                   "--t0", "0.3", "0.5", "0.7", "0.9", "--n", str(a.n), "--prompt", "a landscape", "-o",
                   str(Path(tmp) / "eval"), "-q"]
        print(" ".join(command[1:]).replace(tmp, "TMP"), flush=True)
        subprocess.run(command, check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".md", ".json", ".csv"):
            shutil.copy(Path(tmp) / "eval" / f"eval{suffix}", out.with_suffix(suffix))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
