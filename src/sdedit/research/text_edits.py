"""The text-edit protocol of `sdedit eval --edits`: rows of (image, source prompt, target prompt, optional mask)
edited by each method at each t0 on the same seeds, scored by how much of the source they keep."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..api import Guide, iter_edits, prepare_guide
from ..control_images import DEFAULT_CONTROL_PREPROCESS
from ..errors import InputError
from ..families.base import Model
from ..files import printable
from ..images import open_image
from ..settings import RunSettings
from .edit_metrics import LearnedMetrics
from .evaluation import MAX_EVAL_IMAGES, MAX_EVAL_PIXELS, _peak_rss_mb, _reset_peak_rss, side_by_side, write_tables
from .metrics import l2_distance, layout_correlation

EDITS_CSV = "edits.csv"
REQUIRED_COLUMNS = ("image", "source_prompt", "target_prompt")
COLUMNS = (*REQUIRED_COLUMNS, "mask")  # mask: a mask image's file name, white = edit (optional, per row)
FIGURE_ROWS = 8  # rows of edits.csv the figure shows
FIGURE_SIDE = 128  # pixels per figure cell
RESULT_SUFFIXES = (".md", ".json", ".csv", "-rows.csv", ".png")  # what one eval --edits run writes


@dataclass(frozen=True)
class EditItem:
    """One row of edits.csv with its image (and mask) read."""

    line: int  # its line in edits.csv
    name: str  # the image's file name as written there
    image: Image.Image
    source_prompt: str  # what the image shows
    target_prompt: str  # what the edit should show
    mask: Image.Image | None = None  # white = edit


def check_edit_count(n: int | None) -> int | None:
    """The --n rule with --edits: the first 1 to MAX_EVAL_IMAGES rows, or None for all."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_EVAL_IMAGES):
        raise InputError(f"--n with --edits must be a whole number of rows from 1 to {MAX_EVAL_IMAGES}, got {n!r}")
    return n


def read_edits(folder: Path, count: int | None = None) -> list[EditItem]:
    """The rows of FOLDER/edits.csv (the first `count`), each image and mask read and checked; InputError otherwise."""
    if not folder.is_dir():
        raise InputError(f"--edits: not a folder: {printable(folder)}")
    path = folder / EDITS_CSV
    if not path.is_file():
        raise InputError(f"--edits: {printable(folder)} has no {EDITS_CSV} (columns {', '.join(REQUIRED_COLUMNS)}, "
                         "and optionally mask)")
    rows = _csv_rows(path)[:count]
    items, pixels = [], 0
    for line, row in rows:
        item = _item(folder, line, row)
        pixels += item.image.size[0] * item.image.size[1]
        if pixels > MAX_EVAL_PIXELS:
            raise InputError(f"{EDITS_CSV}: the images up to line {line} hold over {MAX_EVAL_PIXELS:,} pixels, the "
                             "limit of one eval; use fewer or smaller images")
        items.append(item)
    return items


def _csv_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line, fields by column) of every non-blank row of edits.csv, its header checked; InputError for bad CSV."""
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            header = _header(next(reader, []))
            for fields in reader:
                if not any(x.strip() for x in fields):
                    continue
                if len(fields) != len(header):
                    raise InputError(f"{EDITS_CSV} line {reader.line_num}: {len(fields)} fields, but the header has "
                                     f"{len(header)}")
                if len(rows) == MAX_EVAL_IMAGES:
                    raise InputError(f"{EDITS_CSV}: more than {MAX_EVAL_IMAGES:,} rows, the limit of one eval")
                rows.append((reader.line_num, {k: v.strip() for k, v in zip(header, fields, strict=True)}))
    except UnicodeDecodeError:
        raise InputError(f"{EDITS_CSV}: not UTF-8 text") from None
    except csv.Error as e:
        raise InputError(f"{EDITS_CSV}: not valid CSV ({e})") from None
    except OSError as e:
        raise InputError(f"{EDITS_CSV}: cannot be read ({e.strerror or e})") from None
    if not rows:
        raise InputError(f"{EDITS_CSV} has no rows under its header")
    return rows


def _header(fields: list[str]) -> list[str]:
    """The column names of edits.csv's first line: the required ones, optionally mask, nothing else, each once."""
    names = [x.strip() for x in fields]
    unknown = [x for x in names if x not in COLUMNS]
    if unknown:
        raise InputError(f"{EDITS_CSV}: unknown column {unknown[0][:40]!r}; the columns are {', '.join(COLUMNS)} "
                         "(mask optional)")
    lacking = [x for x in REQUIRED_COLUMNS if x not in names]
    if lacking:
        raise InputError(f"{EDITS_CSV} lacks the column{'s' * (len(lacking) > 1)} {', '.join(lacking)} (its first "
                         f"line names the columns: {', '.join(REQUIRED_COLUMNS)}, and optionally mask)")
    if len(set(names)) != len(names):
        raise InputError(f"{EDITS_CSV}: a column is named twice in its first line")
    return names


def _item(folder: Path, line: int, row: dict[str, str]) -> EditItem:
    """One row's images read (paths inside the folder), its prompts checked."""
    for column in REQUIRED_COLUMNS:
        if not row[column]:
            raise InputError(f"{EDITS_CSV} line {line}: empty {column}")
    image = _open(folder, row["image"], line, "image")
    mask = _open(folder, row["mask"], line, "mask") if row.get("mask") else None
    if mask is not None and mask.size != image.size:
        raise InputError(f"{EDITS_CSV} line {line}: the mask is {mask.size[0]}x{mask.size[1]} but the image is "
                         f"{image.size[0]}x{image.size[1]}; they must be the same size")
    return EditItem(line, row["image"], image, row["source_prompt"], row["target_prompt"], mask)


def _open(folder: Path, name: str, line: int, what: str) -> Image.Image:
    """A file named in edits.csv, relative to its folder and inside it, opened as an image."""
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise InputError(f"{EDITS_CSV} line {line}: the {what} {name[:80]!r} is outside the folder")
    try:
        return open_image(path)
    except InputError as e:
        raise InputError(f"{EDITS_CSV} line {line}: {e}") from None


def edit_methods(model: Model, asked: Sequence[str] | None) -> list[str]:
    """The methods compared: those asked, or SDEdit and FlowEdit on a flow model and SDEdit on any other;
    FlowEdit asked of another model is refused."""
    flow = model.schedule.kind == "flow"
    if asked is None:
        return ["sdedit", "flowedit"] if flow else ["sdedit"]
    if "flowedit" in asked and not flow:
        raise InputError(f"--method flowedit needs a rectified-flow model (Stable Diffusion 3, FLUX.1, Qwen-Image); "
                         f"{model.name} is a {model.schedule.kind} model")
    return list(dict.fromkeys(asked))


def scored_reference(guide: Guide) -> tuple[Image.Image, Image.Image | None]:
    """What an output is compared with: the source at the output's size, and the mask there (white = edit)."""
    frame = guide.frame
    if frame.whole_input:  # crop-to-mask: the whole photo comes back
        return guide.full, guide.full_keep
    if frame.back_to_input:
        keep = guide.full_keep
        return guide.full.crop(frame.box), None if keep is None else keep.crop(frame.box)
    return guide.image, guide.keep


def region_l2(output: Image.Image, reference: Image.Image, region: np.ndarray) -> float:
    """L2 (pixels in [0, 1], all channels) between two images of one size over a region (bool HxW)."""
    a = np.asarray(output.convert("RGB"), np.float64)[region] / 255.0
    b = np.asarray(reference.convert("RGB"), np.float64)[region] / 255.0
    return float(np.sqrt(((a - b) ** 2).sum()))


@dataclass(frozen=True)
class EditScore:
    """One output's scores (a line of eval-rows.csv)."""

    what: str  # the setting (a row of the table)
    method: str
    t0: float
    line: int  # its row's line in edits.csv
    image: str
    l2: float  # to the source, pixels in [0, 1]
    layout: float  # 8x8 layout correlation with the source (metrics.layout_correlation)
    l2_inside: float | None = None  # masked rows: L2 over the edited pixels (mask above 0)
    l2_outside: float | None = None  # masked rows: L2 over the kept pixels (mask 0): 0 by construction
    clip_score: float | None = None  # CLIP score with the target prompt (edit_metrics; None: not measured)
    lpips: float | None = None  # LPIPS to the source (edit_metrics; None: not measured)
    dino_structure: float | None = None  # DINO structure distance to the source (edit_metrics; None: not measured)


@dataclass(frozen=True)
class EditRow:
    """One line of the text-edit table: one method at one setting over every row of edits.csv."""

    what: str
    method: str
    t0: float  # mean over rows (t0 auto: each image's own)
    nfe: int  # network evaluations per image
    seconds_per_image: float
    peak_rss_mb: float
    l2_mean: float  # structure kept: L2 to the source, pixels in [0, 1]
    l2_std: float
    layout: float  # structure kept: mean 8x8 layout correlation with the source
    masked: int  # rows with a mask
    l2_inside: float | None = None  # masked rows: mean L2 inside the mask
    l2_outside_max: float | None = None  # masked rows: largest L2 outside the mask (0: the kept pixels are exact)
    clip_score: float | None = None  # mean CLIP score with the target prompt; None: not measured
    lpips: float | None = None  # mean LPIPS to the source; None: not measured
    dino_structure: float | None = None  # mean DINO structure distance to the source; None: not measured


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


class TextEditBenchmark:
    """The rows of edits.csv prepared once for a model, edited at any setting (row i seeded seed + i) and scored."""

    def __init__(self, model: Model, items: list[EditItem], metrics: LearnedMetrics, seed: int = 0,
                 control_preprocess: str = DEFAULT_CONTROL_PREPROCESS):
        self.items, self.metrics, self.seed = items, metrics, seed
        self.guides = [prepare_guide(model, i.image, i.mask, control_preprocess=control_preprocess) for i in items]
        self.references = [scored_reference(g) for g in self.guides]

    def edit(self, model: Model, settings: RunSettings, index: int) -> Image.Image:
        """Row `index` edited: its target prompt (and, for FlowEdit, its source prompt), seed + index."""
        item = self.items[index]
        texts = {"source_prompt": item.source_prompt} if settings.method == "flowedit" else {}
        run = settings.with_(prompt=item.target_prompt, num_samples=1, **texts)
        return list(iter_edits(model, [self.guides[index]], [self.seed + index], run, progress=False))[0]

    def score(self, what: str, settings: RunSettings, index: int, output: Image.Image) -> EditScore:
        """One output's scores against its source (and mask, and target prompt)."""
        item = self.items[index]
        reference, mask = self.references[index]
        inside = outside = None
        if mask is not None:
            edited = np.asarray(mask.convert("L")) > 0
            inside, outside = region_l2(output, reference, edited), region_l2(output, reference, ~edited)
        clip = self.metrics.clip(output, item.target_prompt) if self.metrics.clip is not None else None
        lpips = self.metrics.lpips(output, reference) if self.metrics.lpips is not None else None
        dino = self.metrics.dino(output, reference) if self.metrics.dino is not None else None
        t0 = float(json.loads(output.info["sdedit"])["t0"])
        return EditScore(what, settings.method, t0, item.line, item.name,
                         float(l2_distance([output], [reference])[0]),
                         float(layout_correlation([output], [reference])[0]), inside, outside, clip, lpips, dino)

    def run(self, model: Model, settings: RunSettings) -> tuple[EditRow, list[EditScore], list[Image.Image]]:
        """Every row edited at one setting: the table's row, each output's scores, and the outputs."""
        settings = model.run_settings(settings)
        what = setting_name(settings)
        _reset_peak_rss()
        start = time.perf_counter()
        outs = [self.edit(model, settings, i) for i in range(len(self.items))]
        seconds = time.perf_counter() - start
        scores = [self.score(what, settings, i, o) for i, o in enumerate(outs)]
        return summarise(what, settings, scores, outs, seconds), scores, outs

    def sources(self) -> list[Image.Image]:
        """The sources at their outputs' size (the figure's first column)."""
        return [r for r, _ in self.references]


def setting_name(settings: RunSettings) -> str:
    """A table row's name: the method and its settings."""
    if settings.method == "flowedit":
        samples = f", n_avg={settings.flowedit_samples}" if settings.flowedit_samples > 1 else ""
        return f"FlowEdit {settings.label().removeprefix('flowedit, ')}{samples}"
    return f"SDEdit {settings.label()}"


def summarise(what: str, settings: RunSettings, scores: list[EditScore], outs: list[Image.Image],
              seconds: float) -> EditRow:
    """The table's row from each output's scores; NFE from each output's own t0 and steps."""
    metas = [json.loads(o.info["sdedit"]) for o in outs]
    nfe = np.mean([settings.with_(t0=m["t0"], steps=m["steps"]).nfe for m in metas])
    l2 = np.array([s.l2 for s in scores])
    masked = [s for s in scores if s.l2_outside is not None]
    return EditRow(what, settings.method, round(float(np.mean([s.t0 for s in scores])), 4), round(float(nfe)),
                   seconds / len(outs), _peak_rss_mb(), float(l2.mean()), float(l2.std()),
                   float(np.mean([s.layout for s in scores])), len(masked),
                   _mean([s.l2_inside for s in masked]),
                   max(s.l2_outside for s in masked if s.l2_outside is not None) if masked else None,
                   _mean([s.clip_score for s in scores]), _mean([s.lpips for s in scores]),
                   _mean([s.dino_structure for s in scores]))


def edit_table(rows: list[EditRow], masked: bool) -> str:
    """Rows as a Markdown table; the mask columns when some row of edits.csv has a mask (with no rows: the header)."""
    mask_titles = " L2 in mask | L2 outside mask (max) |" if masked else ""
    lines = ["| method | t0 | NFE | s / image | peak MB | L2 to source (mean +- std) | layout corr. |" + mask_titles
             + " CLIP score | LPIPS | DINO struct. |",
             "| --- | --- | --- | --- | --- | --- | --- |" + " --- |" * (2 * masked + 3)]
    for r in rows:
        cells = [r.l2_inside, r.l2_outside_max] if masked else []
        extra = "".join(f" {v:.3f} |" if v is not None else " - |"
                        for v in [*cells, r.clip_score, r.lpips, r.dino_structure])
        lines.append(f"| {r.what} | {r.t0:.2f} | {r.nfe} | {r.seconds_per_image:.3f} | {r.peak_rss_mb:.0f} | "
                     f"{r.l2_mean:.2f} +- {r.l2_std:.2f} | {r.layout:.3f} |{extra}")
    return "\n".join(lines)


def edits_header(model: str, folder: Path, items: list[EditItem], seed: int, methods: list[str],
                 metrics: LearnedMetrics) -> str:
    """What the table is (model, rows, seeds, methods, which learned scores), how to read it, and what was not
    measured."""
    clip = f"; CLIP score by {metrics.clip_model}" if metrics.clip_model else ""
    dino = f"; DINO structure distance by {metrics.dino_model}" if metrics.dino_model else ""
    note = metrics.note()
    return (f"sdedit eval --edits: model {model}, {len(items)} rows of {printable(folder / EDITS_CSV)} "
            f"({sum(i.mask is not None for i in items)} with a mask), row i seeded {seed} + i; methods "
            f"{', '.join(methods)}{clip}{dino}.\n\n"
            "Structure kept: L2 (pixels in [0, 1]) and 8x8 layout correlation to the source, and inside and outside "
            "the masks, and the DINO structure distance (self-similarity of DINO ViT keys, Tumanyan et al. 2022; 0: "
            "the same structure); an edit that changes nothing keeps all of it, so read them beside the CLIP score "
            "with the target prompt, or the figure (the .png beside this table: the sources, then one column per row "
            "here)."
            + (f"\n\n{note}" if note else ""))


def _thumbnail(img: Image.Image, side: int) -> Image.Image:
    """The image scaled to fit a side x side white square, its aspect kept (nearest pixels when enlarged)."""
    w, h = img.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    cell = Image.new("RGB", (side, side), (255, 255, 255))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    cell.paste(img.convert("RGB").resize(size, resample), ((side - size[0]) // 2, (side - size[1]) // 2))
    return cell


def edit_figure(columns: list[list[Image.Image]]) -> Image.Image:
    """The figure: the sources, then one column per table row, FIGURE_ROWS rows of edits.csv at most."""
    return side_by_side([[_thumbnail(im, FIGURE_SIDE) for im in col[:FIGURE_ROWS]] for col in columns], FIGURE_SIDE)


def write_edit_results(rows: list[EditRow], scores: list[EditScore], figure: Image.Image, stem: Path,
                       header: str, masked: bool) -> list[Path]:
    """<stem>.md/.json/.csv (the table), <stem>-rows.csv (every output's scores) and <stem>.png (the figure), under
    the first of stem, stem-1, ... that no earlier run took."""
    from ..files import free_stem, write_file
    from ..images import save_png

    stem = free_stem(stem, RESULT_SUFFIXES)
    paths = write_tables(rows, stem, header, overwrite=False, table=lambda r: edit_table(r, masked))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(asdict(scores[0])))
    w.writeheader()
    w.writerows(asdict(s) for s in scores)
    text = buf.getvalue().encode()
    paths.append(write_file(stem.with_name(stem.name + "-rows.csv"), lambda f: f.write(text)))
    paths.append(save_png(figure, stem.with_name(stem.name + ".png")))
    return paths
