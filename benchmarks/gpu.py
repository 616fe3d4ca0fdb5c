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
    from latent_vs_diffusers import compare

    return compare("cuda", rounds=rounds, steps=steps, precisions=("fp16",))


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
