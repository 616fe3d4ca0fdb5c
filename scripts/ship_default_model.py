"""Copy a training run's EMA weights into the package as the bundled default model (fp16 safetensors).

    python scripts/ship_default_model.py ~/.cache/sdedit/default-run

Writes src/sdedit/models/landscapes/ and docs/figures/default-model-{loss,samples}.png, and
prints the facts the model card needs (steps, hours, images seen, final loss).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from diffusers import UNet2DModel

from sdedit.research.training import TrainConfig, TrainState, export_model, read_training_meta

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    run = Path(sys.argv[1]).expanduser()
    meta = read_training_meta(run / "training" / "state.safetensors")
    saved = meta["config"]
    cfg = TrainConfig(**{**saved, "widths": tuple(saved["widths"]), "attn_res": tuple(saved["attn_res"])})
    s = meta["state"]
    state = TrainState(s["step"], s["seconds"], s["images"], [tuple(x) for x in s["losses"]])
    from sdedit import load_model

    ema = load_model(run).denoiser_net.unet
    unet = UNet2DModel(**cfg.unet_config())
    unet.load_state_dict(ema.state_dict())
    dest = ROOT / "src" / "sdedit" / "models" / "landscapes"
    dest.mkdir(parents=True, exist_ok=True)
    export_model(unet, cfg, state, dest, dtype=torch.float16)
    figures = ROOT / "docs" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for name in ("loss", "samples"):
        if (run / "training" / f"{name}.png").is_file():
            shutil.copy(run / "training" / f"{name}.png", figures / f"default-model-{name}.png")
    last = state.losses[-10:]
    print(f"steps {state.step}, hours {state.seconds / 3600:.2f}, images seen {state.images}, "
          f"loss (mean of the last {len(last) * 50} steps) {sum(v for _, v in last) / max(len(last), 1):.4f}, "
          f"parameters {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M, "
          f"weights {(dest / 'diffusion_pytorch_model.safetensors').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
