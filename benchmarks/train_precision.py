"""Training speed of the bundled model's network, fp32 against bf16 autocast, alternating in one process.

    python benchmarks/train_precision.py [--rounds 5] [--steps 10]

Prints images/s per precision (medians over rounds) and writes docs/benchmarks/train-precision-<cpu>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from machine import describe, slug
from sdedit.research.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    data = torch.randint(0, 256, (512, 3, 64, 64), dtype=torch.uint8)
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            trainers[precision] = Trainer(TrainConfig(precision=precision), data, Path(tmp), torch.device("cpu"))
            for _ in range(2):  # warm-up
                trainers[precision].train_step()
        rates: dict[str, list[float]] = {p: [] for p in trainers}
        for _ in range(a.rounds):
            for precision, trainer in trainers.items():
                start = time.perf_counter()
                for _ in range(a.steps):
                    trainer.train_step()
                rates[precision].append(a.steps * trainer.cfg.batch_size / (time.perf_counter() - start))
    result = {"machine": describe(), "batch_size": 32, "steps_per_round": a.steps,
              "images_per_s": {p: statistics.median(r) for p, r in rates.items()}, "raw": rates}
    result["bf16_speedup"] = result["images_per_s"]["bf16"] / result["images_per_s"]["fp32"]
    out = ROOT / "docs" / "benchmarks" / f"train-precision-{slug()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "raw"}, indent=2))


if __name__ == "__main__":
    main()
