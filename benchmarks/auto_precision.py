"""Does precision 'auto' pick the faster precision on this machine?  Per network evaluation and whole commands.

    python benchmarks/auto_precision.py [--rounds 3] [--command-rounds 5] [--out docs/benchmarks/auto-precision-<cpu>.json]

1. Per evaluation, variants alternating in one process, medians: the paper's 256x256 DDPM
   network (church config, random weights) as the original release runs it (diffusers' class, eager,
   contiguous, fp32) and as this package loads and runs it (its lean network, channels_last) in fp32, in bf16 autocast and at the default ('auto', decided
   by sdedit.precision's measurement on this machine, with a fresh cache; its cost is reported);
   the same for the bundled 64x64 model at batch 1 and 8.
2. The README's main job as a user runs it, whole commands alternating: the default, --precision
   fp32 and --precision bf16, after one default run that makes the measured decision (timed apart).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, label, slug  # noqa: E402
from speed import medians  # noqa: E402

from sdedit.engine.precision import under_precision  # noqa: E402
from sdedit.engine.schedules import DiscreteVPSchedule  # noqa: E402
from sdedit.families.pixel import EpsDenoiser, unet_from_config  # noqa: E402
from sdedit.loader import load_model  # noqa: E402
from sdedit.loading.presets import PRESETS  # noqa: E402
from sdedit.precision import RunPrecision  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def per_evaluation(name: str, d_ours, original, x: torch.Tensor, sigma: float, multiple: int, rounds: int) -> dict:
    """Original (if given), fp32, bf16 and auto, per evaluation of D on x."""
    s = torch.full((x.shape[0],), sigma)
    decided = RunPrecision("auto", torch.device("cpu"), name, multiple)
    t = time.perf_counter()
    choice = decided.resolve(d_ours, x, sigma)
    cost = time.perf_counter() - t

    def run(d):
        def once() -> None:
            with torch.inference_mode():
                d(x, s)
        return once

    fns = {}
    if original is not None:
        t_net = torch.full((x.shape[0],), 500.0)
        xc = x.contiguous()

        def run_original() -> None:
            with torch.no_grad():
                original(xc, t_net)
        fns["original release (eager, contiguous, fp32)"] = run_original
    fns["sdedit fp32"] = run(d_ours)
    fns["sdedit bf16"] = run(under_precision(d_ours, x.device, "bf16"))
    fns[f"sdedit default (auto: {choice.precision})"] = run(decided.wrap(d_ours))
    res = medians(fns, rounds)
    fastest = min(res["sdedit fp32"], res["sdedit bf16"])
    default = res[f"sdedit default (auto: {choice.precision})"]
    row = {"network": name, "batch": x.shape[0], "seconds_per_eval": res, "auto": choice.precision,
           "reason": choice.reason, "decision_seconds": cost, "default_over_fastest": default / fastest}
    if original is not None:
        row["speedup_of_default_vs_original"] = res["original release (eager, contiguous, fp32)"] / default
    for k, v in res.items():
        print(f"{name} batch {x.shape[0]}: {k:<45} {v:.4f} s/eval", flush=True)
    print(f"  auto chose {choice.precision} ({choice.reason}) in {cost:.2f} s; default / fastest = "
          f"{default / fastest:.3f}" + (f"; default vs original x{row['speedup_of_default_vs_original']:.2f}"
                                        if original is not None else ""), flush=True)
    return row


def networks(rounds: int) -> list[dict]:
    from diffusers import UNet2DModel

    os.environ["SDEDIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="sdedit-bench-cache-")  # decisions made afresh here
    rows = []
    torch.manual_seed(0)
    config = PRESETS["church"].arch.unet_config()
    original = UNet2DModel(**config).eval().requires_grad_(False)
    ours = unet_from_config(config).eval().requires_grad_(False).to(memory_format=torch.channels_last)  # as loaded
    ours.load_state_dict(original.state_dict())
    schedule = DiscreteVPSchedule()
    sigma = float(schedule.sigmas[500])
    x = torch.randn(1, 3, 256, 256).contiguous(memory_format=torch.channels_last)
    rows.append(per_evaluation("church-256", EpsDenoiser(ours, schedule), original, x, sigma, 32, rounds))
    model = load_model("landscapes", device="cpu")
    for batch in (1, 8):
        x = torch.randn(batch, 3, 64, 64)
        rows.append(per_evaluation("landscapes-64", model.denoise, None, x, model.sigma(0.3), model.size_multiple,
                                   max(rounds, 5)))
    return rows


def command(args: list[str], env: dict[str, str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "sdedit", "edit", str(ROOT / "examples" / "landscape-strokes.png"),
                            "-n", "4", "--seed", "0", "-o", out, "-q", *args], env=env, capture_output=True, text=True)
        took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"exit {r.returncode}: {r.stderr[-300:]}")
    return took


def main_job(rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "SDEDIT_CACHE_DIR": cache}
        env.pop("SDEDIT_PRECISION", None)
        first = command([], env)  # measures and caches the decision
        decision = json.loads((Path(cache) / "precision.json").read_text())["entries"]
        variants = {"default (auto)": [], "--precision fp32": ["--precision", "fp32"],
                    "--precision bf16": ["--precision", "bf16"]}
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for k, extra in variants.items():
                times[k].append(command(extra, env))
    res = {k: statistics.median(v) for k, v in times.items()}
    fastest = min(res["--precision fp32"], res["--precision bf16"])
    for k, v in res.items():
        print(f"main job, whole command: {k:<18} {v:.2f} s (median of {rounds})", flush=True)
    print(f"  first default run (measures and caches): {first:.2f} s; default / fastest = "
          f"{res['default (auto)'] / fastest:.3f}", flush=True)
    return {"seconds": res, "first_default_run": first, "decision": decision,
            "default_over_fastest": res["default (auto)"] / fastest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per network variant")
    ap.add_argument("--command-rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    print(label(), flush=True)
    result = {"machine": describe(), "per_evaluation": networks(a.rounds), "main_job": main_job(a.command_rounds)}
    out = a.out or ROOT / "docs" / "benchmarks" / f"auto-precision-{slug()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(out)


if __name__ == "__main__":
    main()
