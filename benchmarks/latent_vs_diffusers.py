"""Latent SDEdit against diffusers' img2img on the same Stable Diffusion 1.5-shaped components (random weights).

    python benchmarks/latent_vs_diffusers.py [--device cpu] [--steps 10] [--rounds 3] [--size 512]

The UNet has SD 1.5's widths (320, 640, 1280, 1280; cross-attention 768), the VAE SD's, the
text encoder CLIP ViT-L's shape (12 layers, 768 wide; a byte-level tokenizer built locally).
One run = encode, `steps` UNet evaluations with classifier-free guidance (7.5), decode, at
size x size, in both; diffusers' pipeline runs strength 1.0 so that it takes the same number
of steps as SDEdit from t0 = 0.6 with that many steps.  Runs alternate; medians.  fp32 against
diffusers' fp32, then this package at precision 'auto' (bf16 where native).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from machine import describe, label, slug  # noqa: E402
from speed import medians  # noqa: E402


def components(device: str):
    """SD 1.5-shaped UNet, VAE and text encoder with random weights, and a local tokenizer."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from tiny_sd import tiny_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny_tokenizer(Path(tmp) / "tok", max_length=77)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # 320, 640, 1280, 1280 by default
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77))
    for m in (unet, vae, text):
        m.eval().requires_grad_(False).to(device)
    return unet, vae, text, tokenizer


def compare(device: str, *, rounds: int, steps: int, size: int = 512,
            precisions: tuple[str, ...] = ("fp32", "auto")) -> dict:
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
    from PIL import Image

    from sdedit.api import edit
    from sdedit.engine.schedules import DiscreteVPSchedule
    from sdedit.families.stable_diffusion import StableDiffusionModel

    unet, vae, text, tokenizer = components(device)
    if "fp16" in precisions:
        unet.half()  # diffusers' own fp16 path: the weights in half precision
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    model = StableDiffusionModel(unet, vae, text, tokenizer, DiscreteVPSchedule(0.00085, 0.012, 1000, "scaled_linear"),
                                 "epsilon", "sd15-shaped")
    image = Image.new("RGB", (size, size), (120, 140, 90))

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    chosen: dict[str, str] = {}  # what each variant ran at, and why ('auto': measured on this machine)

    def ours(precision: str):
        def run() -> None:
            out = edit(model, image, prompt="a photo", t0=0.6, steps=steps, sampler="ddim", seed=0, progress=False,
                       precision=precision)
            chosen[precision] = json.loads(out[0].info["sdedit"])["precision_reason"]
            sync()
        return run

    def theirs() -> None:
        with torch.inference_mode():
            pipe("a photo", image=image, strength=1.0, num_inference_steps=steps, guidance_scale=7.5,
                 generator=torch.Generator().manual_seed(0), output_type="pil")
        sync()

    fns = {"diffusers img2img": theirs, **{f"sdedit {p}": ours(p) for p in precisions}}
    res = medians(fns, rounds)
    base = res["diffusers img2img"]
    for k, v in res.items():
        print(f"SD 1.5-shaped, {size}x{size}, {steps} steps, CFG: {k:<22} {v:7.2f} s  ({v / base:.3f} x diffusers)",
              flush=True)
    return {"device": device, "size": size, "steps": steps, "seconds": res,
            "ratio_to_diffusers": {k: v / base for k, v in res.items()},
            "precision_reasons": chosen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    print(label(), flush=True)
    result = {"machine": describe(), **compare(a.device, rounds=a.rounds, steps=a.steps, size=a.size)}
    out = a.out or Path(__file__).parents[1] / "docs" / "benchmarks" / f"latent-vs-diffusers-{slug()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(out)


if __name__ == "__main__":
    main()
