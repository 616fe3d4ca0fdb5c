"""Per-evaluation cost of the paper's 256x256 DDPM network, and of SDEdit end to end, on this machine.

    python benchmarks/bench_network.py [--repeats 3] [--out results.json]

Random weights (the cost does not depend on them).  Variants run side by side in one
process and are reported as medians and as ratios to plain eager fp32 (the layout the
released code runs), so a noisy shared machine still gives comparable numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from diffusers import UNet2DModel

from sdedit import edit
from sdedit.families.pixel import EpsDenoiser, PixelModel
from sdedit.loading.presets import PRESETS
from speed import medians  # benchmarks/ is on sys.path when run as a script
from sdedit.engine.schedules import DiscreteVPSchedule


def network(channels_last: bool) -> UNet2DModel:
    torch.manual_seed(0)
    unet = UNet2DModel(**PRESETS["church"].arch.unet_config()).eval().requires_grad_(False)
    return unet.to(memory_format=torch.channels_last) if channels_last else unet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row (median reported)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--sdedit-steps", type=int, default=10, help="steps of the end-to-end SDEdit run")
    ap.add_argument("--out", help="also write the rows as JSON here")
    a = ap.parse_args()

    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    nets = {"eager fp32 (released layout)": network(False), "sdedit: channels_last + inference_mode": network(True)}
    for batch in a.batches:
        x = torch.randn(batch, 3, 256, 256)
        t = torch.full((batch,), 499.0)

        def runner(unet: UNet2DModel, xin: torch.Tensor):
            def once() -> None:
                with torch.inference_mode():
                    unet(xin, t)
            return once

        fns = {name: runner(unet, x.contiguous(memory_format=torch.channels_last) if "channels_last" in name else x)
               for name, unet in nets.items()}
        res = medians(fns, a.repeats if batch == 1 else max(1, a.repeats - 1))
        base = next(iter(res.values()))
        for name, sec in res.items():
            rows.append({"what": name, "batch": batch, "s_per_eval": sec, "s_per_image": sec / batch,
                         "images_per_s": batch / sec, "speedup_vs_eager": base / sec})
            print(f"batch {batch:>2}  {name:<42} {sec:7.2f} s/eval  {sec / batch:6.2f} s/image  "
                  f"x{base / sec:.2f}")

    # SDEdit end to end: one 256x256 image, t0 = 0.5, DDPM ancestral steps.
    unet = nets["sdedit: channels_last + inference_mode"]
    model = PixelModel(EpsDenoiser(unet, DiscreteVPSchedule()), DiscreteVPSchedule(), 256, "random-256")
    img = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    steps = a.sdedit_steps
    start = time.perf_counter()
    edit(model, img, t0=0.5, steps=steps, sampler="ddpm", seed=0, progress=False)
    sec = time.perf_counter() - start
    rows.append({"what": f"SDEdit end to end, t0=0.5, {steps} ddpm steps, 1 image", "batch": 1, "seconds": sec,
                 "s_per_step": sec / steps})
    print(f"SDEdit end to end, {steps} steps: {sec:.1f} s ({sec / steps:.2f} s/step); "
          f"the released recipe (500 steps, K=3) would take {sec / steps * 1500 / 60:.0f} min per image here")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
