"""GPU memory per family and --offload mode: measured on tiny random-weight pipelines, estimated for full-size ones.

    python benchmarks/memory.py [--out docs/benchmarks/memory-<machine>.json]

1. Measured, tiny random-weight SD / SDXL / SD3 / FLUX pipelines (tests/tiny_sd.py), one 64x64 prompted edit each:
   - always: each network's weight bytes (fp32), and the peak weight bytes resident on the execution device during
     the run under model offload, read from the offload's own transfer log (the run executes on the CPU when there
     is no GPU: that shows the mechanism's bookkeeping, not memory saved);
   - with CUDA: torch.cuda.max_memory_allocated of the whole run (weights and activations) for none, model and
     sequential.  Process RSS is not reported: on a CPU, offload moves nothing between memories.
2. Estimated, full-size families: exact parameter counts from their configs built on the meta device
   (memory_estimates.py cites the sources), weights at bf16 (the VAE at fp32, as sdedit runs it), per mode:
   none = all networks, model = the largest network, sequential = the largest single layer, each plus a rough
   activation allowance (memory_estimates.activations) at the family's native size, batch 1.  No GPU ran these:
   they are estimates.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from machine import describe, label, slug  # noqa: E402
from memory_estimates import FAMILIES, SHAPES, count, estimate  # noqa: E402
from tiny_sd import make_tiny_flux, make_tiny_sd, make_tiny_sd3, make_tiny_sdxl  # noqa: E402

from sdedit import edit, load_model  # noqa: E402
from sdedit.families.offload import ModelOffload  # noqa: E402

TINY = {"SD": make_tiny_sd, "SDXL": make_tiny_sdxl, "SD3": make_tiny_sd3, "FLUX": make_tiny_flux}


def run(model) -> None:
    """One 64x64 prompted edit, 3 steps."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    edit(model, image, t0=0.6, steps=3, seed=0, prompt="a red barn", guidance=1.0, progress=False)


def weight_bytes(net: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in net.parameters())


def peak_resident(offloader: ModelOffload, sizes: dict[str, int]) -> int:
    """The most weight bytes on the execution device at once, replayed from the offload's transfer log."""
    here: set[str] = set()
    peak = 0
    for name, way in offloader.moves:
        here = here | {name} if way == "in" else here - {name}
        peak = max(peak, sum(sizes[n] for n in here))
    return peak


def measure_tiny(folder: Path, family: str) -> dict:
    """Weight bytes per network, model offload's peak resident weights, and (CUDA) peak allocation per mode."""
    TINY[family](folder)
    model = load_model(folder, device="cpu", precision="fp32")
    sizes = {k: weight_bytes(v) for k, v in model.networks().items()}
    row: dict = {"family": family, "weight_bytes": sizes, "total_weight_bytes": sum(sizes.values())}
    model.offload("model", torch.device("cpu"))
    run(model)
    row["model_offload_peak_resident_weight_bytes"] = peak_resident(model.offloader, sizes)
    if torch.cuda.is_available():
        row["cuda_max_allocated_bytes"] = {}
        for mode in ("none", "model", "sequential"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            m = load_model(folder, device="cuda", precision="fp32", offload=mode)  # type: ignore[arg-type]
            run(m)
            row["cuda_max_allocated_bytes"][mode] = torch.cuda.max_memory_allocated() - base
            del m
    return row


def full_size() -> list[dict]:
    rows = []
    for family, builders in FAMILIES.items():
        nets = {k: count(b) for k, b in builders.items()}
        est = estimate(family, nets)
        rows.append({"family": family, "resolution": SHAPES[family][0], "networks": nets,
                     "networks_gib": est["networks_gib"], "largest_layer_gib": est["largest_layer_gib"],
                     "activations_gib": est["activations_gib"],
                     "estimate_gib": {k: est[k] for k in ("none", "model", "sequential")}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(f"docs/benchmarks/memory-{slug()}.json"))
    a = p.parse_args()
    print(label(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = [measure_tiny(Path(tmp) / f, f) for f in TINY]
    for r in tiny:
        cuda = r.get("cuda_max_allocated_bytes")
        print(f"tiny {r['family']:<5} weights {r['total_weight_bytes'] / 1e6:7.2f} MB, model offload peak resident "
              f"{r['model_offload_peak_resident_weight_bytes'] / 1e6:6.2f} MB"
              + (f", CUDA peak {', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in cuda.items())}" if cuda else ""))
    full = full_size()
    print("| family | size | parameters (main / text encoders / VAE) | none | model | sequential |")
    for r in full:
        n = {k: v["parameters"] / 1e9 for k, v in r["networks"].items()}
        main, vae = next(iter(n.values())), n["vae"]
        text = sum(v for k, v in n.items() if k.startswith("text_encoder"))
        e = r["estimate_gib"]
        print(f"| {r['family']} | {r['resolution']} | {main:.2f}B / {text:.2f}B / {vae:.3f}B | {e['none']:.1f} | "
              f"{e['model']:.1f} | {e['sequential']:.1f} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": describe(), "tiny_measured": tiny, "full_size_estimates": full},
                                indent=1) + "\n")
    print(a.out)


if __name__ == "__main__":
    main()
