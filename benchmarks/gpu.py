"""GPU figures in one run of under 5 minutes: per-evaluation time of the paper's network, latent SDEdit against
diffusers, and `sdedit batch` throughput.

    python benchmarks/gpu.py [--out docs/benchmarks/gpu-<name>.json] [--quick]

1. The 256x256 DDPM network (church config, random weights): seconds per evaluation at fp32,
   bf16 and fp16 autocast and with torch.compile, batch 1 and 16; FLOPs counted with
   torch.utils.flop_counter against the GPU's measured peak (the best of large matrix products
   per dtype).
2. An SD 1.5-shaped UNet (random weights, 512x512, 10 steps, guidance 7.5): one SDEdit run of
   this package against diffusers' StableDiffusionImg2ImgPipeline with the same components,
   interleaved, fp16.
3. `sdedit batch` on the bundled model: items/s at --batch-size 1, 8, 32.
Variants alternate within each round; medians.  Needs CUDA; exits 2 without it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402
from speed import count_flops, medians  # noqa: E402


def sync() -> None:
    torch.cuda.synchronize()


def peak(dtype: torch.dtype, n: int = 8192, rounds: int = 5) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    a @ b
    sync()
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def network(rounds: int, batches: list[int]) -> list[dict]:
    from diffusers import UNet2DModel

    from sdedit.loading.presets import PRESETS

    config = PRESETS["church"].arch.unet_config()
    torch.manual_seed(0)
    net = UNet2DModel(**config).eval().requires_grad_(False)
    flops = count_flops(net, 256)
    net = net.cuda().to(memory_format=torch.channels_last)
    compiled = torch.compile(net)
    peaks = {"fp32": peak(torch.float32), "bf16": peak(torch.bfloat16), "fp16": peak(torch.float16)}
    peaks["tf32"] = peaks["fp32"]
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, 256, 256, device="cuda").contiguous(memory_format=torch.channels_last)
        t = torch.full((batch,), 500.0, device="cuda")

        def runner(model, dtype):
            def run() -> None:
                with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32,
                                                            enabled=dtype is not None):
                    model(x, t)
                sync()
            return run

        fns = {"fp32": runner(net, None), "bf16": runner(net, torch.bfloat16), "fp16": runner(net, torch.float16),
               "bf16 + compile": runner(compiled, torch.bfloat16)}
        res = medians(fns, rounds)
        for name, sec in res.items():
            p = peaks[name.split()[0]]
            rows.append({"batch": batch, "variant": name, "s_per_eval": sec, "images_per_s": batch / sec,
                         "gflop_per_image": flops / 1e9, "fraction_of_peak": flops * batch / sec / p,
                         "peak_tflops": p / 1e12})
            print(f"256x256 batch {batch:>2} {name:<15} {sec * 1000:8.2f} ms  {batch / sec:8.1f} img/s  "
                  f"{flops * batch / sec / p:6.1%} of the {name.split()[0]} peak ({p / 1e12:.0f} TFLOP/s)", flush=True)
    return rows


def latent(rounds: int, steps: int) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from tiny_sd import tiny_tokenizer

    from sdedit.api import edit
    from sdedit.engine.schedules import DiscreteVPSchedule
    from sdedit.families.stable_diffusion import StableDiffusionModel

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tiny_tokenizer(Path(tmp) / "tok", max_length=77)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD 1.5's widths: 320, 640, 1280, 1280
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77))
    for m in (unet, vae, text):
        m.eval().requires_grad_(False).cuda()
    unet.half()
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    model = StableDiffusionModel(unet, vae, text, tokenizer, DiscreteVPSchedule(0.00085, 0.012, 1000, "scaled_linear"),
                                 "epsilon", "sd15-shaped")
    model.optimize(precision="fp16")
    image = Image.new("RGB", (512, 512), (120, 140, 90))

    def ours() -> None:
        edit(model, image, prompt="a photo", t0=0.6, steps=steps, sampler="ddim", seed=0, progress=False)
        sync()

    def theirs() -> None:
        pipe("a photo", image=image, strength=1.0, num_inference_steps=steps, guidance_scale=7.5,
             generator=torch.Generator().manual_seed(0), output_type="pil")
        sync()

    res = medians({"sdedit": ours, "diffusers img2img": theirs}, rounds)
    ratio = res["sdedit"] / res["diffusers img2img"]
    print(f"SD 1.5-shaped UNet, 512x512, {steps} steps, fp16: sdedit {res['sdedit']:.2f} s, diffusers "
          f"{res['diffusers img2img']:.2f} s (ratio {ratio:.3f})", flush=True)
    return {"steps": steps, "seconds": res, "ratio_sdedit_over_diffusers": ratio}


def batch_throughput(items: int) -> list[dict]:
    from sdedit.research.evaluation import held_out_landscapes

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in"
        inp.mkdir()
        for i, img in enumerate(held_out_landscapes(items, 64)):
            img.save(inp / f"{i:04d}.png")
        for bs in (1, 8, 32):
            out = Path(tmp) / f"out{bs}"
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "sdedit", "batch", str(inp), "-o", str(out), "--batch-size",
                                str(bs), "-q", "--device", "cuda"], capture_output=True, text=True)
            sec = time.perf_counter() - t
            rows.append({"batch_size": bs, "items": items, "seconds": sec, "items_per_s": items / sec,
                         "returncode": r.returncode})
            print(f"sdedit batch --batch-size {bs:>2}: {items / sec:.1f} items/s (whole command)", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and items (a smoke run)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    rounds = 2 if a.quick else a.rounds
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    result = {"machine": describe(), "network_256": network(rounds, [1, 16]),
              "latent_vs_diffusers": latent(max(2, rounds // 2), 10),
              "batch": batch_throughput(64 if a.quick else 256)}
    name = torch.cuda.get_device_name(0).lower().replace(" ", "-")
    out = a.out or Path(__file__).parents[1] / "docs" / "benchmarks" / f"gpu-{name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
