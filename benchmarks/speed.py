"""Per-evaluation speed of the denoiser, and how close it is to the machine's peak.

    python benchmarks/speed.py [--sizes 64 256] [--compile] [--out docs/speed.json]

For each resolution (64: the bundled model's architecture; 256: the paper's DDPM network,
random weights): images/s against batch size for plain eager fp32 (the released code's
layout) and this package's settings (channels_last + inference_mode), bf16 autocast where
asked, and torch.compile where asked; FLOPs of one evaluation counted with
torch.utils.flop_counter; the machine's practical peak (fp32, and bf16) measured as the best
of large matrix products, so each row can say how close it comes.
Variants of one row alternate within each round, so drift hits them alike; medians reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from diffusers import UNet2DModel
from torch.utils.flop_counter import FlopCounterMode

from sdedit.loading.presets import PRESETS
from sdedit.research.training import TrainConfig


def arch(size: int) -> dict:
    """The UNet config benchmarked at a resolution."""
    if size == 256:
        return PRESETS["church"].arch.unet_config()
    return TrainConfig(size=size).unet_config()


def medians(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each fn, the fns alternating within each round, after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def count_flops(unet: UNet2DModel, size: int) -> int:
    """FLOPs (2 per multiply-add) of one evaluation at batch 1."""
    x, t = torch.randn(1, 3, size, size), torch.tensor([500.0])
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        unet(x, t)
    return counter.get_total_flops()


def peak_flops(dtype: torch.dtype = torch.float32, sizes: tuple[int, ...] = (1024, 2048), rounds: int = 5) -> float:
    """The machine's practical peak: the best FLOP/s of large GEMMs over sizes and rounds.

    Each GEMM runs twice: as torch.mm (MKL for fp32) and as a 1x1 convolution in
    channels_last (oneDNN), because on some CPUs (AMD, here) MKL's sgemm reaches only half of
    what oneDNN does.  A best, not a median: noise only ever makes a run slower.
    """
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        x = torch.randn(1, n, 32, 32).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(n, n, 1, 1).to(dtype).contiguous(memory_format=torch.channels_last)
        for fn, flops in ((lambda: torch.mm(a, b), 2 * n**3), (lambda: torch.nn.functional.conv2d(x, w), 2 * n * n * 1024)):
            with torch.inference_mode():
                fn()
                for _ in range(rounds):
                    t = time.perf_counter()
                    fn()
                    best = max(best, flops / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batches", type=int, nargs="+", help="batch sizes (default: 1..32 at 64 px, 1..4 at 256)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to warm up)")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    ap.add_argument("--one-thread", action="store_true", help="also time channels_last on 1 thread (thread scaling)")
    ap.add_argument("--out", help="write all rows as JSON here")
    a = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    peaks = {"fp32": peak_flops(), "bf16": peak_flops(torch.bfloat16)} if device == "cpu" else {}
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads"
          + "".join(f", {k} matmul peak {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
    rows = []
    for size in a.sizes:
        torch.manual_seed(0)
        eager = UNet2DModel(**arch(size)).eval().requires_grad_(False).to(device)
        flops = count_flops(eager.cpu(), size)
        eager.to(device)
        fast = UNet2DModel(**arch(size)).eval().requires_grad_(False).to(device, memory_format=torch.channels_last)
        variants: dict[str, tuple[UNet2DModel, bool, torch.dtype | None]] = {
            "eager fp32": (eager, False, None), "channels_last": (fast, True, None)}
        if a.bf16:
            variants["channels_last + bf16 autocast"] = (fast, True, torch.bfloat16)
        if a.compile:
            variants["channels_last + compile"] = (torch.compile(fast), True, None)
        if a.one_thread:
            variants["channels_last, 1 thread"] = (fast, True, None)
        batches = a.batches or ([1, 2, 4, 8, 16, 32] if size <= 64 else [1, 2, 4])
        print(f"\n{size}x{size}: {sum(p.numel() for p in eager.parameters()) / 1e6:.2f}M parameters, "
              f"{flops / 1e9:.2f} GFLOP per image")
        for batch in batches:
            x = torch.randn(batch, 3, size, size, device=device)
            t = torch.full((batch,), 500.0, device=device)

            def runner(net, cl: bool, dtype, threads: int | None = None):
                xin = x.contiguous(memory_format=torch.channels_last) if cl else x

                def run() -> None:
                    before = torch.get_num_threads()
                    if threads:
                        torch.set_num_threads(threads)
                    try:
                        with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32,
                                                                    enabled=dtype is not None):
                            net(xin, t)
                        if device == "cuda":
                            torch.cuda.synchronize()
                    finally:
                        torch.set_num_threads(before)
                return run

            res = medians({k: runner(*v, 1 if "1 thread" in k else None) for k, v in variants.items()}, a.rounds)
            base = res["eager fp32"]
            for name, sec in res.items():
                peak = peaks.get("bf16" if "bf16" in name else "fp32")
                frac = flops * batch / sec / peak if peak else None
                rows.append({"size": size, "batch": batch, "variant": name, "s_per_eval": sec,
                             "images_per_s": batch / sec, "speedup_vs_eager": base / sec,
                             "gflop_per_image": flops / 1e9, "fraction_of_peak": frac})
                print(f"  batch {batch:>2} {name:<30} {sec * 1000:9.1f} ms  {batch / sec:8.2f} img/s  "
                      f"x{base / sec:4.2f}" + (f"  {frac:5.1%} of peak" if frac else ""))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"peak_flops": peaks, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
