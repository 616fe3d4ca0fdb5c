"""Do the model card's realism and sharpness scores reward invisible pixel noise, and does blur lower them?

    python benchmarks/metric_noise.py [MODEL ...] [--n 200] [--sigma 2 4]

SDEdit at the recommended t0 = 0.3 (default sampler and steps, seed 0 + i) of 200 held-out stroke paintings, as
benchmarks/recommended_t0.py runs it; then the same outputs with Gaussian noise of std sigma/255 added to every
pixel (a grey level or two: not visible), and blurred by a 0.5 px Gaussian, scored again: KID, the Laplacian
`sharpness` and the Sobel `edge_sharpness` (sdedit.research.metrics).  A score for "sharper edges and textures"
should not rise with noise that adds neither, and should fall with blur; a realism score should not improve with
noise.  Writes docs/benchmarks/metric-noise-<cpu>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, label, slug  # noqa: E402

from sdedit import load_model  # noqa: E402
from sdedit.research.evaluation import StrokeBenchmark, held_out_landscapes, held_out_reals  # noqa: E402
from sdedit.research.metrics import edge_sharpness  # noqa: E402
from sdedit.settings import RunSettings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def add_noise(images: list[Image.Image], sigma: float, rng: np.random.Generator) -> list[Image.Image]:
    """Each image plus N(0, sigma) per pixel and channel (on the 0-255 scale), rounded and clipped."""
    return [Image.fromarray(np.clip(np.rint(np.asarray(im, np.float64) + rng.normal(0.0, sigma, (*im.size[::-1], 3))),
                                    0, 255).astype(np.uint8)) for im in images]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["landscapes"])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--sigma", type=float, nargs="+", default=[2.0, 4.0])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    reals = held_out_reals(a.n, 64)
    bench = StrokeBenchmark(held_out_landscapes(a.n, 64), reals)
    result = {"machine": describe(), "n": a.n, "t0": 0.3, "real_sharpness": bench.score("reals", reals).sharpness,
              "real_edge_sharpness": float(edge_sharpness(reals).mean()), "models": {}}
    print(label(), flush=True)
    print("| model | changed | KID | sharpness | edge sharpness |\n| --- | --- | --- | --- | --- |")
    for name in a.models:
        _, outs = bench.run(load_model(name), RunSettings(t0=0.3, seed=0))
        variants = {"as is": outs, **{f"noise {s:g}": add_noise(outs, s, np.random.default_rng(0)) for s in a.sigma},
                    "blur 0.5 px": [im.filter(ImageFilter.GaussianBlur(0.5)) for im in outs]}
        rows = []
        for what, images in variants.items():
            row = bench.score(what, images)
            rows.append({"changed": what, "kid_mean": row.kid_mean, "kid_std": row.kid_std,
                         "sharpness": row.sharpness, "edge_sharpness": row.edge_sharpness})
            print(f"| {name} | {what} | {row.kid_mean:.4f} +- {row.kid_std:.4f} | {row.sharpness:.2f} | "
                  f"{row.edge_sharpness:.2f} |",
                  flush=True)
        result["models"][name] = rows
    print(f"real held-out landscapes: sharpness {result['real_sharpness']:.2f}, "
          f"edge sharpness {result['real_edge_sharpness']:.2f}")
    out = a.out or ROOT / "docs" / "benchmarks" / f"metric-noise-{slug()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
