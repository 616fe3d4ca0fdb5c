"""The paper's evaluation protocol (Sec. 5.1): simulated stroke paintings of held-out images, SDEdit, then L2 and KID."""

from __future__ import annotations

import csv
import io
import json
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..api import Guide, iter_edits, prepare_guide
from ..control_images import DEFAULT_CONTROL_PREPROCESS
from ..engine.samplers import evaluations
from ..errors import InputError
from ..families.base import Model
from ..images import grow_and_feather
from ..settings import RunSettings
from .landscapes import HELD_OUT_START, landscape
from .metrics import FeatureKind, edge_f1, edge_sharpness, feature_extractor, image_features, kid_score, l2_distance, \
    layout_correlation, seam_metrics, sharpness, standardize
from .strokes import simulate_strokes

REALS_OFFSET = 100_000  # the held-out block that KID's real images come from, disjoint from the painted originals
EVAL_IMAGES = 200  # eval's --n when none is given
MAX_EVAL_IMAGES = 10_000  # images per set (originals, strokes, reals): far above the paper's protocol
MAX_EVAL_PIXELS = 256 * 1024 * 1024  # pixels per set held in memory (about 1 GB each): 256 images at 1024 px


def check_eval_count(n: int, resolution: int | None = None) -> int:
    """The --n rule: 2 to MAX_EVAL_IMAGES images, and at most MAX_EVAL_PIXELS pixels at the model's resolution."""
    top = MAX_EVAL_IMAGES if resolution is None else max(2, min(MAX_EVAL_IMAGES, MAX_EVAL_PIXELS // resolution**2))
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= top:
        where = "" if resolution is None else f" at this model's {resolution} px"
        raise InputError(f"--n must be a whole number of images from 2 to {top}{where}, got {n!r}")
    return n


def held_out_landscapes(count: int, size: int, offset: int = 0) -> list[Image.Image]:
    """Landscapes from the held-out seed range (never trained on); offset picks a disjoint block."""
    return [landscape(HELD_OUT_START + offset + i, size) for i in range(count)]


def held_out_reals(count: int, size: int) -> list[Image.Image]:
    """The real images KID compares against: held-out landscapes disjoint from those the paintings are made of."""
    return held_out_landscapes(count, size, offset=REALS_OFFSET)


@dataclass(frozen=True)
class Row:
    """One line of a quality table."""

    what: str
    t0: float | None
    nfe: int  # network evaluations per image
    seconds_per_image: float
    peak_rss_mb: float  # peak resident memory while this row ran (Linux; elsewhere the process's peak so far)
    l2_mean: float  # faithfulness: L2 to the stroke input, mean over images
    l2_std: float
    kid_mean: float | None  # realism: KID to real images (lower is better); None: undefined for these sets
    kid_std: float | None  # std over KID subsets (the spread of one subset's estimate)
    kid_se: float | None = None  # standard error of kid_mean (metrics.kid_standard_error; None where KID is)
    layout: float | None = None  # mean 8x8 layout correlation with the guide (metrics.layout_correlation)
    sharpness: float | None = None  # mean |Laplacian| (metrics.sharpness); rises with invisible noise too
    edge_sharpness: float | None = None  # mean Sobel gradient of the strongest edges (metrics.edge_sharpness)
    seam_jump: float | None = None  # masked edits: extra gradient on the mask's border (metrics.seam_metrics)
    colour_shift: float | None = None  # masked edits: mean colour change just outside the mask
    edge_f1: float | None = None  # control adherence: edge F1 to the guide's edges (metrics.edge_f1), mean


def _reset_peak_rss() -> None:
    """Start a new peak-memory window: Linux resets VmHWM when 5 is written to /proc/self/clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak then covers the whole process so far


def _peak_rss_mb() -> float:
    """Peak resident memory since the last reset (VmHWM), or since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class StrokeBenchmark:
    """Fixed strokes and real-image features, scored against any number of SDEdit settings."""

    def __init__(self, originals: list[Image.Image], reals: list[Image.Image], colors: int = 6,
                 features: FeatureKind = "random-cnn"):
        self.originals = originals
        self.strokes = [simulate_strokes(o, colors) for o in originals]
        self.feature_name, self.extract = feature_extractor(features)
        self.kid_undefined: str | None = None  # why KID could not be computed, when it could not
        self.control_preprocess = DEFAULT_CONTROL_PREPROCESS  # how each painting becomes its ControlNets' image
        self.real_features = self.features(reals)

    def features(self, images: list[Image.Image]) -> torch.Tensor:
        """Features for KID (Inception sees the images at their own size and resizes them itself)."""
        return image_features(images, self.extract, size=None if self.feature_name == "inception" else 64)

    def score(self, what: str, images: list[Image.Image], t0: float | None = None, nfe: int = 0,
              seconds: float = 0.0) -> Row:
        """L2 to the strokes and KID to the reals of a list of images."""
        try:
            ref, f = standardize(self.real_features, self.features(images))
            k_mean, k_std, k_se = kid_score(ref, f)
        except ValueError as e:  # too few or degenerate images: no number rather than a meaningless one
            self.kid_undefined = str(e)
            k_mean = k_std = k_se = None
        l2 = l2_distance(images, self.strokes)
        return Row(what, t0, nfe, seconds / max(len(images), 1), _peak_rss_mb(), float(l2.mean()), float(l2.std()),
                   k_mean, k_std, kid_se=k_se, layout=float(layout_correlation(images, self.strokes).mean()),
                   sharpness=float(sharpness(images).mean()), edge_sharpness=float(edge_sharpness(images).mean()),
                   edge_f1=float(edge_f1(images, self.strokes).mean()))

    def run_guides(self, model: Model, settings: RunSettings, guides: list[Guide]) -> tuple[list[Image.Image], float]:
        """SDEdit of prepared guides (guide i seeded settings.seed + i), one output each; and the seconds taken."""
        _reset_peak_rss()
        start = time.perf_counter()
        seed = settings.seed or 0
        outs = list(iter_edits(model, guides, [seed + i for i in range(len(guides))],
                               settings.with_(num_samples=1), progress=False))
        return outs, time.perf_counter() - start

    def guide(self, model: Model, image: Image.Image, mask: Image.Image | None = None, **kw: Any) -> Guide:
        """One painting prepared for the model; a model with ControlNets is steered by the painting itself."""
        return prepare_guide(model, image, mask, control_preprocess=self.control_preprocess if model.control_count
                             else DEFAULT_CONTROL_PREPROCESS, **kw)

    def baselines(self) -> list[Row]:
        """The stroke inputs themselves, and the originals they were made from."""
        return [self.score("stroke inputs", self.strokes), self.score("originals of the strokes", self.originals)]

    def run(self, model: Model, settings: RunSettings) -> tuple[Row, list[Image.Image]]:
        """SDEdit every stroke input with one setting (stroke i seeded settings.seed + i); its row and outputs."""
        settings = model.run_settings(settings)
        outs, sec = self.run_guides(model, settings, [self.guide(model, g) for g in self.strokes])
        t0, nfe = run_cost(outs)
        return self.score(f"SDEdit {settings.label()}", outs, t0, nfe, sec), outs


def run_cost(outs: list[Image.Image]) -> tuple[float, int]:
    """Mean t0 and network evaluations per image, from the outputs' metadata (t0 auto: each image's own)."""
    metas = [json.loads(o.info["sdedit"]) for o in outs]
    t0 = round(float(np.mean([m["t0"] for m in metas])), 4)
    return t0, round(float(np.mean([evaluations(m["sampler"], m["steps"]) * m["repeats"] for m in metas])))


MASK_VARIANTS = ("hard mask", "feathered mask", "strength map")
FEATHER = 4  # pixels of feather (or of the strength map's ramp) at 64 px
RAMP_LEVELS = 8  # grey levels of the strength map's ramp


def edit_region(index: int, size: tuple[int, int]) -> Image.Image:
    """A seeded elliptical mask covering about 10-20% of the image, away from its border (white = edit)."""
    rng = np.random.default_rng(index)
    w, h = size
    rx, ry = rng.uniform(0.15, 0.25, 2) * np.array([w, h])
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1
    return Image.fromarray((inside * 255).astype(np.uint8))


class MaskedBenchmark(StrokeBenchmark):
    """Stroke edits of held-out images inside a mask (the region replaced by its stroke painting), pasted back
    three ways; scored by L2 to the guide, KID, and the seam jump and colour shift against the unedited image."""

    def __init__(self, originals: list[Image.Image], reals: list[Image.Image], colors: int = 6,
                 features: FeatureKind = "random-cnn"):
        super().__init__(originals, reals, colors, features)
        self.masks = [edit_region(i, o.size) for i, o in enumerate(originals)]
        self.strokes = [Image.composite(s, o, m) for s, o, m in zip(self.strokes, originals, self.masks, strict=True)]

    def guides(self, model: Model, variant: str) -> list[Guide]:
        """The prepared guides of one paste-back variant."""
        if variant == "hard mask":
            return [self.guide(model, g, m) for g, m in zip(self.strokes, self.masks, strict=True)]
        if variant == "feathered mask":
            return [self.guide(model, g, m, mask_feather=FEATHER) for g, m in zip(self.strokes, self.masks,
                                                                                strict=True)]
        if variant == "strength map":
            ramps = []  # t0 falls from full inside the mask to 0 over FEATHER pixels outside, in RAMP_LEVELS steps
            for m in self.masks:
                soft = np.asarray(grow_and_feather(m, 0, FEATHER), np.float64) / 255
                ramps.append(Image.fromarray(np.round(np.ceil(soft * RAMP_LEVELS) / RAMP_LEVELS * 255).astype(np.uint8)))
            return [self.guide(model, g, strength_map=r) for g, r in zip(self.strokes, ramps, strict=True)]
        raise ValueError(f"unknown variant {variant!r}; one of {', '.join(MASK_VARIANTS)}")

    def run_variant(self, model: Model, settings: RunSettings, variant: str) -> tuple[Row, list[Image.Image]]:
        """One paste-back variant at one setting: its row (with seam jump and colour shift) and outputs."""
        settings = model.run_settings(settings)
        outs, sec = self.run_guides(model, settings, self.guides(model, variant))
        t0, nfe = run_cost(outs)
        row = self.score(f"{variant}, {settings.label()}", outs, t0, nfe, sec)
        seams = np.array([seam_metrics(o, r, m) for o, r, m in zip(outs, self.originals, self.masks, strict=True)])
        return replace(row, seam_jump=float(seams[:, 0].mean()), colour_shift=float(seams[:, 1].mean())), outs


def _kid_text(r: Row) -> str:
    return "undefined" if r.kid_mean is None or r.kid_se is None else f"{r.kid_mean:.4f} +- {r.kid_se:.4f}"


EXTRA_COLUMNS = (("layout", "layout corr."), ("edge_f1", "edge F1"), ("sharpness", "sharpness"),
                 ("edge_sharpness", "edge sharpness"),
                 ("seam_jump", "seam jump"), ("colour_shift", "colour shift"))


def markdown_table(rows: list[Row]) -> str:
    """Rows as a Markdown table (the optional columns where some row has them)."""
    extras = [(k, title) for k, title in EXTRA_COLUMNS if any(getattr(r, k) is not None for r in rows)]
    lines = ["| images | t0 | NFE | s / image | peak MB | L2 to guide (mean +- std) | KID (mean +- s.e.) |"
             + "".join(f" {title} |" for _, title in extras),
             "| --- | --- | --- | --- | --- | --- | --- |" + " --- |" * len(extras)]
    for r in rows:
        t0 = f"{r.t0:.2f}" if r.t0 is not None else "-"
        nfe = str(r.nfe) if r.nfe else "-"
        sec = f"{r.seconds_per_image:.3f}" if r.nfe else "-"
        mem = f"{r.peak_rss_mb:.0f}" if r.nfe else "-"
        cells = "".join(f" {getattr(r, k):.3f} |" if getattr(r, k) is not None else " - |" for k, _ in extras)
        lines.append(f"| {r.what} | {t0} | {nfe} | {sec} | {mem} | {r.l2_mean:.2f} +- {r.l2_std:.2f} | "
                     f"{_kid_text(r)} |{cells}")
    return "\n".join(lines)


def write_tables(rows: Sequence[Any], stem: Path, header: str = "", *, overwrite: bool = True,
                 table: Callable[[list[Any]], str] = markdown_table) -> list[Path]:
    """The rows (dataclasses) as <stem>.md (by `table`), <stem>.json and <stem>.csv; without overwrite, a taken stem
    becomes <stem>-1, -2, ..."""
    from ..files import free_stem, write_file

    suffixes = (".md", ".json", ".csv")
    if not overwrite:
        stem = free_stem(stem, suffixes)
    md = (header + "\n\n" if header else "") + table(list(rows)) + "\n"
    data = [asdict(r) for r in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(data[0]))
    w.writeheader()
    w.writerows(data)
    paths = []
    for suffix, text in zip(suffixes, (md, json.dumps(data, indent=2), buf.getvalue()), strict=True):
        paths.append(write_file(stem.with_name(stem.name + suffix), lambda f, t=text: f.write(t.encode()),
                                overwrite=overwrite))
    return paths


def side_by_side(columns: list[list[Image.Image]], size: int = 128) -> Image.Image:
    """A figure: each inner list is one column, images scaled to size with nearest-neighbour pixels."""
    rows = len(columns[0])
    fig = Image.new("RGB", (len(columns) * (size + 4) + 4, rows * (size + 4) + 4), (255, 255, 255))
    for c, col in enumerate(columns):
        for r, im in enumerate(col):
            fig.paste(im.resize((size, size), Image.Resampling.NEAREST), (4 + c * (size + 4), 4 + r * (size + 4)))
    return fig
