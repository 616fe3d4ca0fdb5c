"""Held-out denoising loss of bundled-style DDPMs per noise band, with the network in fp32 and in bf16 autocast.

    python benchmarks/loss_by_t.py MODEL [MODEL ...] [--n 512]

The epsilon MSE of DDPM training (Ho et al. 2020, Eq. 14) on held-out landscapes (seeds 10,000,000 + i: never
trained on), for t in bands up to the recommended t0's 300 and above, the same images, t and noise for every
model and precision.  It tells whether a continued run denoises the levels SDEdit visits better, and whether
bf16 autocast (8-bit mantissa: the noise at t < 50 is a few bf16 steps of the pixel values) costs accuracy at the
lowest levels.  Writes docs/benchmarks/loss-by-t-<cpu>.json.
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

from sdedit.loading.presets import BUNDLED_MODELS, bundled_path  # noqa: E402
from sdedit.research.evaluation import held_out_landscapes  # noqa: E402
from sdedit.research.training import alpha_bar  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BANDS = [(0, 25), (25, 100), (100, 200), (200, 300), (300, 500), (500, 1000)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    images = held_out_landscapes(a.n, 64)
    x0 = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 127.5 - 1
    gen = torch.Generator().manual_seed(0)
    draws = {band: (torch.randint(band[0], band[1], (a.n,), generator=gen), torch.randn(x0.shape, generator=gen))
             for band in BANDS}
    result = {"machine": describe(), "n": a.n, "bands": BANDS, "loss": {}}
    print(label(), flush=True)
    print("| model | precision | " + " | ".join(f"t {lo}-{hi}" for lo, hi in BANDS) + " |")
    from diffusers import UNet2DModel

    abar = alpha_bar()
    for name in a.models:
        folder = bundled_path(name) if name in BUNDLED_MODELS and not Path(name).exists() else Path(name)
        unet = UNet2DModel.from_pretrained(folder).float().eval()
        for precision in ("fp32", "bf16"):
            losses = []
            for band in BANDS:
                t, eps = draws[band]
                ab = abar[t][:, None, None, None]
                x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
                with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                    pred = torch.cat([unet(x_t[i:i + 64], t[i:i + 64]).sample.float() for i in range(0, a.n, 64)])
                losses.append(float(((pred - eps) ** 2).mean()))
            result["loss"].setdefault(name, {})[precision] = losses
            print(f"| {name} | {precision} | " + " | ".join(f"{v:.5f}" for v in losses) + " |", flush=True)
    out = a.out or ROOT / "docs" / "benchmarks" / f"loss-by-t-{slug()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
