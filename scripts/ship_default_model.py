"""Copy a training run's EMA weights into the package as the bundled default model (fp16 safetensors).

    python scripts/ship_default_model.py ~/.cache/sdedit/default-run --recommended-t0 0.3 [--before-steps N ...]

Writes src/sdedit/weights/landscapes/ and docs/figures/default-model-{loss,samples}.png, and prints the facts
the model card needs (steps, hours, images seen, final loss).  --recommended-t0 is the value measured by
benchmarks/recommended_t0.py; --earlier STEPS HOURS IMAGES adds a run this one continued from.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import UNet2DModel

from sdedit.research.training import TrainConfig, TrainState, export_model, read_training_meta

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--recommended-t0", type=float, required=True)
    ap.add_argument("--earlier", type=float, nargs=3, metavar=("STEPS", "HOURS", "IMAGES"),
                    help="the run this one was initialised from (added to the totals)")
    a = ap.parse_args()
    run = a.run.expanduser()
    meta = read_training_meta(run / "training" / "state.safetensors")
    saved = meta["config"]
    cfg = TrainConfig(**{**saved, "widths": tuple(saved["widths"]), "attn_res": tuple(saved["attn_res"])})
    s = meta["state"]
    state = TrainState(s["step"], s["seconds"], s["images"], [tuple(x) for x in s["losses"]])
    steps, hours, images = a.earlier or (0, 0, 0)
    total = TrainState(state.step + int(steps), state.seconds + hours * 3600, state.images + int(images))
    from sdedit.research.training import initial_weights

    cfg, weights = initial_weights(replace(cfg, init_from=str(run)))  # the run folder holds the EMA weights
    unet = UNet2DModel(**cfg.unet_config())
    unet.load_state_dict(weights)
    dest = ROOT / "src" / "sdedit" / "weights" / "landscapes"
    dest.mkdir(parents=True, exist_ok=True)
    export_model(unet, cfg, total, dest, dtype=torch.float16,
                 facts={"recommended_t0": a.recommended_t0,
                        "recommended_t0_source": "benchmarks/recommended_t0.py: the largest t0 with 8x8 layout "
                                                 "correlation >= 0.9 on 200 held-out stroke paintings",
                        "clip_denoised": True,  # without it the model gives black images from t0 >= 0.9
                        "clip_denoised_source": "docs/default-model.md 'Colours from pure noise': without it, t0 "
                                                ">= 0.9 gives black images",
                        **({"continued_from": {"steps": int(steps), "hours": hours, "images": int(images)}}
                           if a.earlier else {})})
    figures = ROOT / "docs" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for name in ("loss", "samples"):
        if (run / "training" / f"{name}.png").is_file():
            shutil.copy(run / "training" / f"{name}.png", figures / f"default-model-{name}.png")
    last = state.losses[-10:]
    print(f"this run: steps {state.step}, hours {state.seconds / 3600:.2f}, images seen {state.images}; in all: "
          f"steps {total.step}, hours {total.seconds / 3600:.2f}, images {total.images}; loss (mean of the last "
          f"{len(last) * 50} steps) {sum(v for _, v in last) / max(len(last), 1):.4f}, "
          f"parameters {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M, "
          f"weights {(dest / 'diffusion_pytorch_model.safetensors').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
