"""Tiled SDEdit, outpainting and colour matching, measured: cost against pixel count, seams, colour drift.

    python benchmarks/tiles.py cost [--sides 256 512 1024 2048 4096] [--family bundled|tiny-sd]
    python benchmarks/tiles.py seams
    python benchmarks/tiles.py colour [--n 8]
    python benchmarks/tiles.py report          # the README's tables from the raw files

cost: one tiled edit per canvas side (t0 0.3, one step: one evaluation of every tile), each in a fresh process
after a 64 px warm-up edit, its wall time and peak resident memory; the bundled model with its 64 px tiles (16 px overlap), or the test
suite's tiny random Stable Diffusion (64 px tiles: the VAE path, tiled above 1024 px).  The untiled edit runs
beside it while it fits (the network then sees the whole canvas).  seams: the judged edit (a 640x448
landscape, --tile 64 --tile-overlap 16, and other overlaps), 3 seeds: the jump at tile borders over the jump
elsewhere (metrics.tile_seam_ratio), and sharpness against the 64 px edit scaled up.  colour: unmasked edits of
held-out landscapes repeated K = 1, 3, 10 times, with and without --color-match: the colour shift against the
guide (metrics.colour_shift).  Raw results go to docs/benchmarks/tiles-<part>-<cpu>.json; medians are printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, label, slug  # noqa: E402


def one_cost(family: str, side: int, tiled: bool, folder: str) -> dict:
    """In this process: load, edit one side x side canvas once (one step), report seconds and peak RSS."""
    import torch

    from sdedit import edit, load_model
    from sdedit.research.landscapes import landscape

    torch.set_num_threads(2)
    model = load_model("landscapes" if family == "bundled" else folder, device="cpu", precision="fp32")
    image = landscape(1, 256).resize((side, side))
    kw = dict(t0=0.3, steps=1, seed=0, progress=False, tile=64 if tiled else None, tile_overlap=16 if tiled else None,
              full_size=not tiled, fit="stretch" if model.square else "crop",
              **({"prompt": "a lake"} if family != "bundled" else {}))
    edit(model, image.resize((64, 64)), **kw)  # warm-up: the first call's one-off costs are not the canvas'
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    edit(model, image, **kw)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"family": family, "side": side, "tiled": tiled, "seconds": seconds, "peak_mb": peak,
            "before_mb": base}


def cost(a: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.family == "tiny-sd":
            from tests.tiny_sd import make_tiny_sd

            make_tiny_sd(Path(tmp) / "sd")
        for side in a.sides:
            for tiled in (True, False):
                if not tiled and side > a.untiled_max:
                    continue
                run = subprocess.run([sys.executable, __file__, "one", a.family, str(side), str(int(tiled)),
                                      str(Path(tmp) / "sd")], capture_output=True, text=True, timeout=3000)
                if run.returncode != 0:
                    rows.append({"family": a.family, "side": side, "tiled": tiled, "error": run.stderr[-300:]})
                else:
                    rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    return rows


def seams(a: argparse.Namespace) -> list[dict]:
    from sdedit import edit, load_model
    from sdedit.research.landscapes import landscape
    from sdedit.research.metrics import sharpness, tile_seam_ratio

    model = load_model("landscapes", device="cpu", precision="fp32")
    photo = landscape(3, 640).crop((0, 96, 640, 544))
    rows = []
    for seed in range(3):
        scaled = edit(model, photo, seed=seed, progress=False, fit="stretch")[0]
        for overlap in (0, 8, 16, 32):
            start = time.perf_counter()
            out = edit(model, photo, seed=seed, progress=False, tile=64, tile_overlap=overlap)[0]
            seconds = time.perf_counter() - start
            cols, lines = tile_seam_ratio(out, 64, overlap)
            own = tile_seam_ratio(photo, 64, overlap)
            rows.append({"seed": seed, "overlap": overlap, "seam_columns": cols, "seam_rows": lines,
                         "photo_columns": own[0], "photo_rows": own[1], "sharpness": float(sharpness([out])[0]),
                         "sharpness_64px_scaled": float(sharpness([scaled])[0]),
                         "sharpness_photo": float(sharpness([photo])[0]), "seconds": seconds})
            print(rows[-1], flush=True)
    return rows


def colour(a: argparse.Namespace) -> list[dict]:
    from sdedit import edit, load_model
    from sdedit.research.landscapes import landscapes
    from sdedit.research.metrics import colour_shift
    from PIL import Image

    model = load_model("landscapes", device="cpu", precision="fp32")
    held_out = [Image.fromarray(x) for x in landscapes(900_000, a.n)]
    rows = []
    for k in (1, 3, 10):
        for match in (False, True):
            shifts = [colour_shift(edit(model, g, t0=0.5, repeats=k, seed=i, color_match=match, progress=False)[0], g)
                      for i, g in enumerate(held_out)]
            rows.append({"repeats": k, "color_match": match, "t0": 0.5, "shifts": shifts,
                         "median": statistics.median(shifts), "mean": statistics.fmean(shifts)})
            print({k: v for k, v in rows[-1].items() if k != "shifts"}, flush=True)
    return rows


def report(a: argparse.Namespace) -> list[dict]:
    """The README's tables from the raw files of this CPU (medians over seeds and images)."""
    folder = ROOT / "docs" / "benchmarks"
    for family in ("bundled", "tiny-sd"):
        path = folder / f"tiles-cost-{family}-{slug()}.json"
        if path.is_file():
            rows = [r for r in json.loads(path.read_text())["rows"] if "error" not in r]
            print(f"\n{family}: side | tiled s | tiled s per Mpx | peak MB (growth) | untiled s | untiled peak MB")
            for side in sorted({r["side"] for r in rows}):
                t = next((r for r in rows if r["side"] == side and r["tiled"]), None)
                u = next((r for r in rows if r["side"] == side and not r["tiled"]), None)
                cells = [f"{side}^2"]
                cells += [f"{t['seconds']:.2f}", f"{t['seconds'] / (side * side / 1e6):.2f}",
                          f"{t['peak_mb']:.0f} (+{t['peak_mb'] - t['before_mb']:.0f})"] if t else ["-"] * 3
                cells += [f"{u['seconds']:.2f}", f"{u['peak_mb']:.0f} (+{u['peak_mb'] - u['before_mb']:.0f})"] \
                    if u else ["-", "-"]
                print("| " + " | ".join(cells) + " |")
    path = folder / f"tiles-seams-{slug()}.json"
    if path.is_file():
        rows = json.loads(path.read_text())["rows"]
        print("\noverlap | seam columns | seam rows | photo's own columns | rows | sharpness (64 px edit scaled)")
        for overlap in sorted({r["overlap"] for r in rows}):
            sel = [r for r in rows if r["overlap"] == overlap]
            med = {k: statistics.median(r[k] for r in sel) for k in sel[0] if k not in ("seed", "overlap")}
            print(f"| {overlap} | {med['seam_columns']:.2f} | {med['seam_rows']:.2f} | {med['photo_columns']:.2f} | "
                  f"{med['photo_rows']:.2f} | {med['sharpness']:.2f} ({med['sharpness_64px_scaled']:.2f}) |")
    path = folder / f"tiles-colour-{slug()}.json"
    if path.is_file():
        rows = json.loads(path.read_text())["rows"]
        print("\nK | colour shift | with --color-match (median over images)")
        for k in sorted({r["repeats"] for r in rows}):
            off = next(r for r in rows if r["repeats"] == k and not r["color_match"])
            on = next(r for r in rows if r["repeats"] == k and r["color_match"])
            print(f"| {k} | {off['median']:.2f} | {on['median']:.2f} |")
    return []


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        family, side, tiled, folder = sys.argv[2], int(sys.argv[3]), bool(int(sys.argv[4])), sys.argv[5]
        print(json.dumps(one_cost(family, side, tiled, folder)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["cost", "seams", "colour", "report"])
    ap.add_argument("--family", choices=["bundled", "tiny-sd"], default="bundled")
    ap.add_argument("--sides", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--untiled-max", type=int, default=1024, help="largest side also run untiled")
    ap.add_argument("--n", type=int, default=8, help="colour: held-out landscapes")
    a = ap.parse_args()
    print(label(), flush=True)
    rows = {"cost": cost, "seams": seams, "colour": colour, "report": report}[a.part](a)
    if a.part == "report":
        return
    name = f"tiles-{a.part}{'-' + a.family if a.part == 'cost' else ''}-{slug()}.json"
    out = ROOT / "docs" / "benchmarks" / name
    out.write_text(json.dumps({"machine": describe(), "command": " ".join(sys.argv[1:]), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
