"""`edit()`: SDEdit from images to images for every model family, the one outer loop.

Guide preparation, per-sample generators, batching, progress, the divergence check, the exact
paste-back of kept pixels and the metadata live here once; each family supplies its frame,
encode/decode and conditioned denoiser through the model interface (families/base.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .color_match import match_colors
from .control_images import DEFAULT_CONTROL_PREPROCESS, check_preprocess, load_control_image, preprocess_control
from .crops import DEFAULT_CROP_PADDING, check_padding, mask_box
from .engine.editing import edit_tensors, release_grid
from .engine.flowedit import flowedit_tensors
from .engine.tiles import TileLayout, TiledDenoiser
from .errors import InputError, SamplingError
from .families.base import Frame, Model
from .families.control import check_pairing, control_to_tensor
from .precision import Choice, RunPrecision
from .progress import tqdm
from .images import Fit, ImageLike, as_pil, check_grow, grow_and_feather, image_to_tensor, load_guide, mask_to_tensor, paste_kept, \
    tensor_to_images
from .outpainting import DEFAULT_FILL, NEW_T0, Extension, check_band, check_band_t0, check_canvas, check_extension, \
    check_fill, default_band, grow, strength_map as outpaint_strength
from .settings import AUTO_T0, DEFAULT_STRENGTH_LEVELS, MAX_STRENGTH_LEVELS, RunSettings
from .tiling import AUTO_TILE, TileSize, Tiling, tiling_of
from .version import __version__

LATENT_MAX_AREA = 4  # latent models work on at most 4x their trained area (2x the side), unless asked (full_size)

StepCallback = Callable[[int, float, torch.Tensor, torch.Tensor], None]
CropToMask = bool | int | None  # None: when the input is larger than the model; True/int: always (int = padding)


@dataclass(frozen=True)
class Guide:
    """One input prepared for a model: the full image and mask, the model's frame, and both at the frame's size."""

    full: Image.Image  # RGB input at its own size
    full_mask: Image.Image | None  # L, same size, white = edit
    frame: Frame
    image: Image.Image  # the frame's box resized to frame.size: what the sampler sees
    mask: Image.Image | None
    strength: Image.Image | None = None  # per-pixel t0 as a fraction of t0 (L, frame size), instead of a mask
    full_strength: Image.Image | None = None  # the same at the input's size
    mask_grow: int = 0  # pixels the mask was grown by (recorded in the outputs' metadata)
    mask_feather: int = 0  # pixels its edge was feathered by
    strength_levels: int = 0  # the strength map's grey levels (each adds one step)
    posterized: int | None = None  # the levels it was reduced to, when it had more (strength_levels=)
    control: tuple[Image.Image, ...] = ()  # one RGB control image per ControlNet, at the frame's size
    control_source: tuple[str, ...] = ()  # what each is made from ("painting" or the file), for the metadata
    control_preprocess: str = DEFAULT_CONTROL_PREPROCESS
    tiling: Tiling | None = None  # tiled: the frame is the input at its own size, D blended over tiles
    color_reference: str = "edited"  # --color-match's reference: the guide in the "edited" region, or the "kept"
    # pixels (outpainting, where the edited region holds only a fill)
    outpaint: dict[str, Any] | None = None  # how the canvas was grown (outpaint()), for the metadata

    @property
    def keep(self) -> Image.Image | None:
        """What decides the exactly kept pixels (value 0): the mask, or the strength map."""
        return self.strength if self.strength is not None else self.mask

    @property
    def full_keep(self) -> Image.Image | None:
        return self.full_strength if self.full_strength is not None else self.full_mask

    @property
    def reference(self) -> Image.Image:
        """The guide as outputs come back (for faithfulness scores): the whole input for crop-to-mask, else the
        frame's box at the input's size or at the model's."""
        if self.frame.whole_input:
            return self.full
        return self.full.crop(self.frame.box) if self.frame.back_to_input else self.image


def prepare_guide(model: Model, image: ImageLike, mask: ImageLike | None = None, *, fit: Fit = "crop",
                  original_size: bool = True, strength_map: ImageLike | None = None, mask_grow: int = 0,
                  mask_feather: int = 0, crop_to_mask: CropToMask = None, full_size: bool = False,
                  strength_levels: int = DEFAULT_STRENGTH_LEVELS, control_images: Sequence[ImageLike] = (),
                  control_preprocess: str = DEFAULT_CONTROL_PREPROCESS, tile: TileSize | None = None,
                  tile_overlap: int | None = None) -> Guide:
    """Read an image (and a mask or a strength map), and cut and resize them to where and how the model works.

    The output size rule, for every family and path: outputs have the size of the input they edit (the
    centre square for a pixel model's fit="crop"); original_size=False keeps the size the model worked at.
    strength_map: per-pixel t0 (white = t0, black = keep, grey g = t0 * g), instead of a mask; each grey level
    is entered exactly, one more step each, so a map with more than `strength_levels` levels is posterized first.
    crop_to_mask: edit only the mask's box (plus padding) at the model's resolution and return the whole
    input (crops.py); None = when the input is larger than the model (and outputs come back at its size),
    True = always, an int = always with that padding in pixels, False = never.
    full_size: latent models work on an input larger than LATENT_MAX_AREA times their trained area at its own
    size (slow) instead of at that area.
    control_images: one per ControlNet of the model (paired in order), or none: the input itself steers them;
    each is stretched to the input's size, cut and resized as the input is, then control_preprocess'ed.
    tile: tiled SDEdit (a size in input pixels, or 'auto': the model's resolution) with tile_overlap pixels shared
    by neighbours: the input (or crop-to-mask's box) is edited at its own size, any aspect, D blended over tiles.
    """
    control_preprocess = check_preprocess(control_preprocess)
    tiling = tiling_of(model, tile, tile_overlap)
    check_pairing(len(control_images), model.control_count, control_preprocess)
    if mask is not None and strength_map is not None:
        raise InputError("give a mask or a strength map, not both (a strength map of 0 and 255 is a mask)")
    check_grow(mask_grow, mask_feather)
    if (mask_grow or mask_feather) and mask is None:
        raise InputError("mask grow and feather apply to a mask; give --mask (a strength map's levels are used as "
                         "they are)")
    if strength_map is not None:
        check_strength_levels(strength_levels)
    full, full_mask = load_guide(image, mask if strength_map is None else strength_map,
                                 "mask" if strength_map is None else "strength map")
    posterized = None
    if strength_map is not None and full_mask is not None and grey_levels(full_mask) > strength_levels:
        full_mask, posterized = posterize(full_mask, strength_levels), strength_levels
    if full_mask is not None and strength_map is None and (mask_grow or mask_feather):
        full_mask = grow_and_feather(full_mask, mask_grow, mask_feather)
    if fit not in ("crop", "stretch"):
        raise InputError(f"fit must be 'crop' or 'stretch', got {fit!r}")
    if crop_to_mask not in (None, False) and mask is None and strength_map is None:
        raise InputError("crop-to-mask edits the box of a mask: give a mask (or a strength map)")
    if crop_to_mask not in (None, False) and not original_size:
        raise InputError("crop-to-mask returns the whole photo at its own size: it cannot keep the model's size")
    box = _crop_box(model, full, full_mask, crop_to_mask if original_size else False, tiled=tiling is not None)
    if tiling is not None:  # the box or the whole input, at its own size
        whole = (0, 0, *full.size)
        box = None if box == whole else box  # a box of the whole input crops nothing (none recorded)
        frame = Frame(box or whole, model.canvas_size(_box_size(box or whole)), box is not None or original_size,
                      whole_input=box is not None)
    else:
        frame = model.crop_frame(box) if box is not None else \
            _within_area(model, model.frame(full.size, fit, original_size), fit, full_size)
    region = full.crop(frame.box)
    small = region if region.size == frame.size else region.resize(frame.size, Image.Resampling.LANCZOS)
    small_mask = None
    if full_mask is not None:
        m = full_mask.crop(frame.box)
        # a strength map keeps its own levels (each level is one more step of the grid); a mask's edge softens
        resample = Image.Resampling.NEAREST if strength_map is not None else Image.Resampling.BILINEAR
        small_mask = m if m.size == frame.size else m.resize(frame.size, resample)
    controls = _control_images(model, full, frame, small, control_images, control_preprocess)
    sources = tuple(_source_name(c) for c in control_images) or ("painting",) * model.control_count
    if strength_map is not None:
        assert small_mask is not None
        return Guide(full, None, frame, small, None, small_mask, full_mask, strength_levels=grey_levels(small_mask),
                     posterized=posterized, control=controls, control_source=sources,
                     control_preprocess=control_preprocess, tiling=tiling)
    return Guide(full, full_mask, frame, small, small_mask, mask_grow=mask_grow, mask_feather=mask_feather,
                 control=controls, control_source=sources, control_preprocess=control_preprocess, tiling=tiling)


def _control_images(model: Model, full: Image.Image, frame: Frame, small: Image.Image, given: Sequence[ImageLike],
                    preprocess: str) -> tuple[Image.Image, ...]:
    """The ControlNets' images at the frame's size: each given one (stretched to the input's size, then cut and
    resized as the input is), or the framed input itself; then preprocessed."""
    out = []
    for i in range(model.control_count):
        if given:
            img = load_control_image(given[i], "control image")
            if img.size != full.size:
                img = img.resize(full.size, Image.Resampling.LANCZOS)
            img = img.crop(frame.box)
            if img.size != frame.size:
                img = img.resize(frame.size, Image.Resampling.LANCZOS)
        else:
            img = small
        out.append(preprocess_control(img, preprocess))
    return tuple(out)


def _source_name(image: ImageLike) -> str:
    """A control image's name in metadata: its file name, or 'image' for one given in memory."""
    return os.path.basename(os.fspath(image)) if isinstance(image, (str, os.PathLike)) else "image"


def check_strength_levels(levels: int) -> None:
    """The strength_levels rule: a whole number from 1 to MAX_STRENGTH_LEVELS."""
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_STRENGTH_LEVELS:
        raise InputError(f"strength levels must be a whole number from 1 to {MAX_STRENGTH_LEVELS}, got {levels!r}")


def grey_levels(strength: Image.Image) -> int:
    """The distinct non-black levels of a strength map (L): the steps it adds."""
    a = np.asarray(strength)
    return len(np.unique(a[a > 0]))


def posterize(strength: Image.Image, levels: int) -> Image.Image:
    """A strength map with its grey levels rounded to `levels` evenly spaced ones; black (kept) stays black and
    no other pixel becomes black."""
    a = np.asarray(strength).astype(np.float64)
    q = np.where(a > 0, np.maximum(1, np.rint(a / 255 * levels)), 0)
    return Image.fromarray(np.rint(q * 255 / levels).astype(np.uint8), "L")


def _within_area(model: Model, frame: Frame, fit: Fit, full_size: bool) -> Frame:
    """A latent model's frame at most LATENT_MAX_AREA times its trained area (keeping the aspect), unless full_size:
    the compute of a step grows with the area, and the networks were trained near theirs."""
    w, h = frame.size
    limit = LATENT_MAX_AREA * model.resolution ** 2
    if model.square or full_size or w * h <= limit:
        return frame
    scale = math.sqrt(limit / (w * h))
    w, h = model.frame((max(1, round(w * scale)), max(1, round(h * scale))), fit, True).size
    if w * h > limit:  # a sliver: the short side was raised to the latent grid's minimum, so shorten the long one
        w, h = model.frame((limit // h, h) if w >= h else (w, limit // w), fit, True).size
    return dataclasses.replace(frame, size=(w, h))


def _box_size(box: tuple[int, int, int, int]) -> tuple[int, int]:
    return box[2] - box[0], box[3] - box[1]


def _crop_box(model: Model, full: Image.Image, keep: Image.Image | None, crop_to_mask: CropToMask,
              tiled: bool = False) -> tuple[int, int, int, int] | None:
    """The crop-to-mask box when it applies (a mask or map is given, and asked for or the input is larger); a tiled
    edit's box takes any aspect."""
    if crop_to_mask is None:
        crop_to_mask = max(full.size) > model.resolution
    if crop_to_mask is False or keep is None:
        return None
    padding = DEFAULT_CROP_PADDING if crop_to_mask is True else check_padding(crop_to_mask)
    # an all-black mask keeps every pixel: the whole photo comes back as it is (the invariant of a keep-all mask)
    return mask_box(keep, padding, model.resolution, model.square and not tiled) or (0, 0, *full.size)


def prepare_outpaint(model: Model, image: ImageLike, extension: Extension, *, fill: str = DEFAULT_FILL,
                     band: int | None = None, t0: float | str | None = None, seed: int = 0,
                     tile: TileSize | None = None, tile_overlap: int | None = None,
                     crop_to_mask: CropToMask = None) -> Guide:
    """The guide of an outpainting (outpainting.py): the image on the grown canvas, the new region pre-filled
    (seeded by `seed` for the noise fill), and the strength map of a run at NEW_T0 (t0: the band's, default the
    model's recommended).  Square (pixel) models work tiled (tile 'auto' unless given): the canvas takes any aspect.
    """
    fill = check_fill(fill)
    if t0 == AUTO_T0:
        raise InputError("t0 auto measures faithfulness to a guide, and a new region has none: give a number")
    band_t0 = model.recommended_t0 if t0 is None else check_band_t0(t0)
    band = check_band(default_band(model.resolution) if band is None else band)
    if tile is None and model.square:
        tile = AUTO_TILE
    tiling_of(model, tile, tile_overlap)  # refused before the canvas is made
    full = as_pil(image, "image")
    check_canvas(full.size, extension)
    canvas = grow(full, extension, fill, seed)
    strength = outpaint_strength(full.size, extension, band_t0, band)
    guide = prepare_guide(model, canvas, strength_map=strength, fit="stretch", crop_to_mask=crop_to_mask, tile=tile,
                          tile_overlap=tile_overlap)
    record = {**extension.metadata(), "fill": fill, **({"fill_seed": seed} if fill == "noise" else {}), "band": band,
              "t0": band_t0, "input_size": list(full.size)}
    return dataclasses.replace(guide, color_reference="kept", outpaint=record)


def outpaint(model: Model, image: ImageLike, *, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
             fill: str = DEFAULT_FILL, band: int | None = None, t0: float | None = None,
             steps: int | None = None, repeats: int | None = None, sampler: str | None = None,
             num_samples: int | None = None, seed: int | None = None, batch_size: int | None = None,
             precision: str | None = None, prompt: str | None = None, negative_prompt: str | None = None,
             guidance: float | None = None, settings: RunSettings | None = None, tile: TileSize | None = None,
             tile_overlap: int | None = None, color_match: bool | None = None, progress: bool = True,
             callback: StepCallback | None = None) -> list[Image.Image]:
    """Outpainting with SDEdit: the image on a canvas `left`/`right`/`top`/`bottom` pixels larger, the new region
    pre-filled (fill: edge, blur, noise or color) and generated from t0 = 1, a `band` of it along the seam from
    `t0` (smoothly rising to 1), the original pixels kept bit for bit.  color_match: the new region takes the
    original's colour statistics.  Outputs have the canvas' size; settings are as edit()'s.
    """
    run = settings_from(model, settings, steps=steps, repeats=repeats, sampler=sampler, num_samples=num_samples,
                        seed=seed, batch_size=batch_size, precision=precision, prompt=prompt,
                        negative_prompt=negative_prompt, guidance=guidance, color_match=color_match)
    assert run.seed is not None
    guide = prepare_outpaint(model, image, check_extension(left, right, top, bottom), fill=fill, band=band, t0=t0,
                             seed=run.seed, tile=tile, tile_overlap=tile_overlap)
    run = run.with_(t0=NEW_T0, steps=run.steps if steps is not None else None)
    return list(iter_edits(model, [guide], [run.seed], run, fit="stretch", progress=progress, callback=callback))


def settings_from(model: Model, settings: RunSettings | None = None, **fields: Any) -> RunSettings:
    """A RunSettings from keyword arguments (None = the default)."""
    given = {k: v for k, v in fields.items() if v is not None}
    if settings is not None:
        return settings.with_(**given) if given else settings
    return RunSettings(**given)


def edit(model: Model, image: ImageLike, *, mask: ImageLike | None = None, t0: float | None = None,
         steps: int | None = None, repeats: int | None = None, sampler: str | None = None,
         num_samples: int | None = None, seed: int | None = None, batch_size: int | None = None,
         precision: str | None = None, prompt: str | None = None, negative_prompt: str | None = None,
         guidance: float | None = None, settings: RunSettings | None = None, fit: Fit = "crop",
         original_size: bool = True, progress: bool = True, strength_map: ImageLike | None = None,
         mask_grow: int = 0, mask_feather: int = 0, crop_to_mask: CropToMask = None,
         faithfulness: float | None = None, callback: StepCallback | None = None,
         full_size: bool = False, control_images: Sequence[ImageLike] = (),
         control_preprocess: str = DEFAULT_CONTROL_PREPROCESS, tile: TileSize | None = None,
         tile_overlap: int | None = None, color_match: bool | None = None, method: str | None = None,
         source_prompt: str | None = None, source_guidance: float | None = None,
         flowedit_samples: int | None = None) -> list[Image.Image]:
    """SDEdit (Meng et al. 2022) on one guide image: num_samples outputs, sample j seeded with seed + j.

    t0: a number in (0, 1], None for the model's recommended t0, or "auto": per image the largest t0
    whose output stays within `faithfulness` (an L2 budget at the model's resolution; see choose_t0).
    image/mask: paths, PIL images or arrays (floats in [0, 1]); mask white = edit, black =
    keep, soft values blend; none = edit everything.  strength_map instead of a mask: per-pixel
    t0 (white = t0, grey g = t0 * g, black = keep), each pixel entering the reverse process at its
    own time exactly.  crop_to_mask: a photo larger than the model is edited in the mask's box at the
    model's resolution and returned whole (see prepare_guide).  Unset settings take RunSettings'
    defaults (or pass `settings`).  Pixel models work on the centre square (fit="crop") or
    the stretched image at their resolution; latent models on the whole input at its own size
    (at most LATENT_MAX_AREA times their trained area unless full_size).  Outputs come back at the
    size of the input they edit (original_size=False: at the size the model worked at).  Kept
    pixels are the input's, bit for bit.  control_images: one per ControlNet loaded with the model (none: the
    input steers them), control_preprocess: none, canny or scribble.  tile/tile_overlap: tiled SDEdit at the
    input's own size (see prepare_guide).  color_match: keep the guide's colour statistics (color_match.py).
    method="flowedit" (flow models): FlowEdit from source_prompt to prompt instead of SDEdit (engine/flowedit.py).
    Each output's settings are in img.info["sdedit"].
    """
    run = settings_from(model, settings, t0=t0, steps=steps, repeats=repeats, sampler=sampler,
                        num_samples=num_samples, seed=seed, batch_size=batch_size, precision=precision,
                        prompt=prompt, negative_prompt=negative_prompt, guidance=guidance, faithfulness=faithfulness,
                        color_match=color_match, method=method, source_prompt=source_prompt,
                        source_guidance=source_guidance, flowedit_samples=flowedit_samples)
    guide = prepare_guide(model, image, mask, fit=fit, original_size=original_size, strength_map=strength_map,
                          mask_grow=mask_grow, mask_feather=mask_feather, crop_to_mask=crop_to_mask,
                          full_size=full_size, control_images=control_images, control_preprocess=control_preprocess,
                          tile=tile, tile_overlap=tile_overlap)
    assert run.seed is not None
    return list(iter_edits(model, [guide], [run.seed], run, fit=fit, progress=progress, callback=callback))


@dataclass(frozen=True)
class Row:
    """One output to make: a guide, its seed and sample index, and the settings of its guide (t0 resolved)."""

    guide: Guide
    seed: int
    sample: int
    run: RunSettings
    auto: dict[str, float] | None = None  # t0 auto: the budget and the probe's L2 at the chosen t0


def iter_edits(model: Model, guides: Sequence[Guide], seeds: Sequence[int], settings: RunSettings, *,
               fit: Fit = "crop", progress: bool = True, callback: StepCallback | None = None) -> Iterator[Image.Image]:
    """SDEdit of many guides, settings.num_samples each (guide i, sample j seeded seeds[i] + j), yielded as finished.

    Rows of guides with the same frame size and t0 share network calls, up to settings.batch_size;
    every row has its own generator, so an output does not depend on what it was batched with.
    Unset t0 and guidance take the model's recommended values; t0 'auto' is chosen per guide (choose_t0).
    """
    model.check_conditioning(settings)
    precision = model.run_precision(settings.precision)  # one precision for the whole run, decided on its first batch
    settings = model.run_settings(settings)
    check_control_window(model, settings.t0)
    bar = None
    try:
        denoiser = model.denoiser(settings)
        source = source_denoiser(model, settings)
        rows: list[Row] = []
        probes = tqdm(total=len(guides) * T0_PROBES, desc="t0 auto", unit="probe",
                      disable=not progress or settings.t0 != AUTO_T0)
        for i, guide in enumerate(guides):
            run, auto = settings, None
            if settings.t0 == AUTO_T0:
                t0, l2 = choose_t0(model, denoiser, guide, seeds[i], settings, precision,
                                   on_probe=lambda: probes.update(1))
                run, auto = settings.with_(t0=t0, steps=settings.steps), {"budget": settings.budget(guide.frame.size),
                                                                          "l2": l2}
            rows.extend(Row(guide, seeds[i] + j, j, run, auto) for j in range(settings.num_samples))
        probes.close()
        batches = _batches(rows, settings.batch_size)
        bar = tqdm(total=sum(batch_steps(model, b[0]) for b in batches), desc="sdedit", unit="step",
                   disable=not progress)

        def on_step(i: int, sigma: float, x: torch.Tensor, denoised: torch.Tensor) -> None:
            assert bar is not None
            bar.update(1)
            if callback is not None:
                callback(i, sigma, x, denoised)

        for batch in batches:
            x = _run_batch(model, denoiser, batch, on_step, precision, source)
            assert precision.choice is not None
            for row, out in zip(batch, tensor_to_images(x), strict=True):
                yield _finish(model, row, out, fit, precision.choice)
    finally:
        if bar is not None:
            bar.close()
        model.release()  # offloaded networks back in CPU memory between runs


def source_denoiser(model: Model, settings: RunSettings) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """FlowEdit's source branch: D for the source prompt at the source guidance (the run's unless given); None for
    SDEdit.  FlowEdit moves along a flow model's velocity fields: other models are refused."""
    if settings.method != "flowedit":
        return None
    if model.schedule.kind != "flow":
        raise InputError(f"FlowEdit needs a rectified-flow model (Stable Diffusion 3, FLUX.1, Qwen-Image); "
                         f"{model.name} is a {model.schedule.kind} model: use --method sdedit")
    guidance = settings.guidance if settings.source_guidance is None else settings.source_guidance
    return model.denoiser(settings.with_(prompt=settings.source_prompt, guidance=guidance))


PROBE_SAMPLER, PROBE_STEPS = "dpm++2m-sde", 5  # t0 auto's cheap runs (within 5% of the full recipe's L2)
T0_RANGE = (0.05, 1.0)  # where t0 auto searches
T0_BISECTIONS = 6  # the chosen t0 is within (1 - 0.05) / 2^6 = 0.015 of the budget's edge
T0_PROBES = 2 + T0_BISECTIONS  # probe runs per image (the range's two ends, then the halvings) at most


def probe_l2(model: Model, denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], guide: Guide, seed: int,
             settings: RunSettings, t0: float, precision: RunPrecision | None = None) -> float:
    """t0 auto's measure: L2 between a few-step SDEdit of the guide at t0 and the guide, at the frame's size,
    pixels in [0, 1] (the paper's faithfulness score)."""
    probe = settings.with_(t0=t0, sampler=PROBE_SAMPLER, steps=PROBE_STEPS, repeats=1)
    x = _run_batch(model, denoiser, [Row(guide, seed, 0, probe)], lambda *_: None,
                   precision or model.run_precision(settings.precision))
    reference = (image_to_tensor(guide.image).to(x.device) + 1) / 2
    return float((((x[:1].float().clamp(-1, 1) + 1) / 2 - reference) ** 2).sum().sqrt())


def choose_t0(model: Model, denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], guide: Guide, seed: int,
              settings: RunSettings, precision: RunPrecision | None = None,
              on_probe: Callable[[], None] | None = None) -> tuple[float, float]:
    """The largest t0 whose probe_l2 stays within settings.budget, by bisection on T0_RANGE (L2 grows with t0);
    and its L2.  If even the smallest t0 breaks the budget, that smallest t0 (the most faithful there is)."""
    budget = settings.budget(guide.frame.size)
    precision = precision or model.run_precision(settings.precision)  # one precision for every probe

    def l2(t0: float) -> float:
        value = probe_l2(model, denoiser, guide, seed, settings, t0, precision)
        if on_probe is not None:
            on_probe()
        return value

    lo, hi = T0_RANGE
    at_hi = l2(hi)
    if at_hi <= budget:
        return hi, at_hi
    at_lo = l2(lo)
    for _ in range(T0_BISECTIONS):
        mid = round((lo + hi) / 2, 4)
        at_mid = l2(mid)
        if at_mid <= budget:
            lo, at_lo = mid, at_mid
        else:
            hi = mid
    return lo, at_lo


def _batches(rows: list[Row], size: int) -> list[list[Row]]:
    """Consecutive rows in groups of at most `size` that share a frame size, t0 and the presence of a mask
    (rows with strength maps only with rows of the same guide: the map's levels shape the step grid)."""
    def key(row: Row) -> tuple[Any, ...]:
        guide = row.guide
        return (guide.frame.size, guide.mask is None, id(guide) if guide.strength is not None else None, row.run.t0,
                row.run.steps, guide.tiling, guide.color_reference)

    out: list[list[Row]] = []
    for row in rows:
        last = out[-1] if out else None
        if last is not None and len(last) < size and key(last[0]) == key(row):
            last.append(row)
        else:
            out.append([row])
    return out


def batch_steps(model: Model, row: Row) -> int:
    """Sampler steps of the batch `row` leads, over all repeats: a strength map adds its levels to the grid."""
    run = row.run
    if row.guide.strength is None:
        return run.total_steps
    assert isinstance(run.t0, float) and run.steps is not None
    strength = model.encode_mask(mask_to_tensor(row.guide.strength)).double()
    if float(strength.max()) <= 0.0:
        return 0  # keeps everything: no step
    sigmas, _ = release_grid(schedule_of(model, row.guide), run.t0, run.steps, strength, run.grid)
    return (len(sigmas) - 1) * run.repeats


def schedule_of(model: Model, guide: Guide) -> Any:
    """The schedule of a guide's edit: for the size the network sees (a tile's, when tiled)."""
    w, h = guide.frame.size
    if guide.tiling is not None:
        w, h = min(w, guide.tiling.size), min(h, guide.tiling.size)
    return model.schedule_for((w, h))


def _run_batch(model: Model, denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: list[Row],
               on_step: StepCallback, precision: RunPrecision,
               source: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Encode each row's guide with its generator, SDEdit the batch in the sampler's space under the run's
    precision (the network only; encoding and decoding stay fp32), decode, check."""
    settings = batch[0].run
    # one generator per row, on the model's device: noise is drawn where it is used (the CPU's stream on a CPU)
    generators = [torch.Generator(device=model.device).manual_seed(row.seed) for row in batch]
    parts, masks, maps, conditions = [], [], [], []
    start = 0
    while start < len(batch):
        # consecutive rows of one guide are encoded together (one VAE pass, one posterior draw per row)
        guide = batch[start].guide
        end = start
        while end < len(batch) and batch[end].guide is guide:
            end += 1
        x_g = image_to_tensor(guide.image)
        # ControlNets' images first (FLUX and SD3 draw their latents from the row's generator before the guide's, as
        # diffusers' ControlNet pipelines do), then the guide's posterior, then an inpainting model's extra input
        control = model.control_condition([control_to_tensor(c) for c in guide.control], generators[start:end]) \
            if guide.control else None
        parts.append(model.encode(x_g, generators[start:end]))
        keep = None if guide.keep is None else mask_to_tensor(guide.keep)
        extra = model.edit_condition(x_g, keep, generators[start:end])
        given = [c for c in (extra, control) if c is not None]
        conditions.append(torch.cat(given, dim=1) if given else None)
        if guide.mask is not None:
            masks.append(model.encode_mask(mask_to_tensor(guide.mask)).expand(end - start, -1, -1, -1))
        if guide.strength is not None:
            maps.append(model.encode_mask(mask_to_tensor(guide.strength)).expand(end - start, -1, -1, -1))
        start = end
    z_g = torch.cat(parts)
    mask = torch.cat(masks) if masks else None
    strength = torch.cat(maps) if maps else None
    assert isinstance(settings.t0, float) and settings.steps is not None
    condition = torch.cat(conditions) if conditions[0] is not None else None
    guide = batch[0].guide
    schedule = schedule_of(model, guide)
    _resolve(model, denoiser, guide, z_g, schedule.sigma(settings.t0), condition, settings, precision)
    target = _bound(model, denoiser, guide, condition, settings, precision)
    colors = _color_matching(model, batch, generators) if settings.color_match else None
    between = None if colors is None else functools.partial(colors.between, model)
    try:
        if source is not None:  # FlowEdit: the source's D against the target's, no noise added to the latents
            z = flowedit_tensors(_bound(model, source, guide, condition, settings, precision), target, schedule, z_g,
                                 t0=settings.t0, steps=settings.steps, samples=settings.flowedit_samples,
                                 repeats=settings.repeats, mask=mask, strength=strength, generator=generators,
                                 callback=on_step, grid=settings.grid, between=between)
        else:
            z = edit_tensors(target, schedule, z_g, mask=mask, t0=settings.t0, steps=settings.steps,
                             repeats=settings.repeats, sampler=settings.sampler, generator=generators,
                             callback=on_step, strength=strength, grid=settings.grid, between=between)
    except FloatingPointError as e:
        raise SamplingError(f"sampling diverged: {e}; no image written") from None
    x = model.decode(z)
    if colors is not None:
        x = colors.match(x)
    if not torch.isfinite(x).all():
        raise SamplingError("sampling produced NaN or inf; no image written")
    return x


def _resolve(model: Model, denoiser: Callable[..., torch.Tensor], guide: Guide, z_g: torch.Tensor, sigma: float,
             condition: torch.Tensor | None, settings: RunSettings, precision: RunPrecision) -> None:
    """Decide the run's precision on the network's own input: the batch, or a batch of tiles when tiled."""
    if guide.tiling is None:
        precision.resolve(denoiser, z_g, sigma, condition)
        return
    tile, overlap = guide.tiling.cells(model.latent_factor)
    layout = TileLayout(z_g.shape[-2], z_g.shape[-1], tile, overlap)
    _, _, th, tw = layout.boxes[0]
    rows = min(settings.batch_size, len(layout.boxes) * z_g.shape[0])  # what one network call takes
    probe = z_g[:1, :, :th, :tw].expand(rows, -1, -1, -1)
    precision.resolve(denoiser, probe, sigma, None if condition is None else
                      condition[:1, :, :th, :tw].expand(rows, -1, -1, -1))


def _bound(model: Model, denoiser: Callable[..., torch.Tensor], guide: Guide, condition: torch.Tensor | None,
           settings: RunSettings, precision: RunPrecision) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The run's D under its precision, with the batch's condition bound, blended over tiles when tiled."""
    if guide.tiling is None:
        return precision.wrap(denoiser if condition is None else functools.partial(denoiser, condition=condition))
    tile, overlap = guide.tiling.cells(model.latent_factor)
    return precision.wrap(TiledDenoiser(denoiser, tile, overlap, settings.batch_size, condition))


@dataclass(frozen=True)
class ColorMatching:
    """--color-match for one batch: each row's reference (its guide) and the region whose colours are matched."""

    reference: torch.Tensor  # (B, 3, H, W) guides in [-1, 1] at the frame's size
    region: torch.Tensor | None  # (B, 1, H, W): the edited region (1 = edited), None = everywhere
    source: torch.Tensor | None  # where the reference's statistics come from (None: the region)
    generators: Sequence[torch.Generator]

    def match(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded outputs (B, 3, H, W) with the reference's colour statistics."""
        return match_colors(x, self.reference, self.region, self.source)

    def between(self, model: Model, z: torch.Tensor) -> torch.Tensor:
        """A round's output in the sampler's space, matched in pixels and encoded again (one posterior draw per
        row from its generator, as the guide's)."""
        x = self.match(model.decode(z))
        return torch.cat([model.encode(x[i:i + 1], [g]) for i, g in enumerate(self.generators)])


def _color_matching(model: Model, batch: list[Row], generators: Sequence[torch.Generator]) -> ColorMatching:
    """The colour references of a batch's rows: each guide, over its edited region (a mask's weights, a strength
    map's non-zero pixels), or over its kept pixels for outpainting."""
    refs, regions, sources = [], [], []
    for row in batch:
        guide = row.guide
        refs.append(image_to_tensor(guide.image))
        keep = guide.keep
        region = None if keep is None else mask_to_tensor(keep)
        if region is not None and guide.strength is not None:
            region = (region > 0).to(region.dtype)
        regions.append(region)
        sources.append(None if region is None or guide.color_reference == "edited" else 1.0 - region)
    def cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
        given = [t for t in parts if t is not None]
        return torch.cat(given).to(model.device) if len(given) == len(parts) else None

    return ColorMatching(torch.cat(refs).to(model.device), cat(regions), cat(sources), generators)


def _finish(model: Model, row: Row, out: Image.Image, fit: Fit, precision: Choice) -> Image.Image:
    """Back to the input's size when the frame says so, the exact kept pixels pasted, the settings attached."""
    guide, settings = row.guide, row.run
    frame = guide.frame
    if frame.back_to_input:
        box_size = (frame.box[2] - frame.box[0], frame.box[3] - frame.box[1])
        if out.size != box_size:
            out = out.resize(box_size, Image.Resampling.LANCZOS)
        if guide.full_keep is not None:
            out = paste_kept(out, guide.full.crop(frame.box), guide.full_keep.crop(frame.box),
                             blend=guide.strength is None)
        if frame.whole_input:  # crop-to-mask: the box goes back into the untouched photo
            whole = guide.full.copy()
            whole.paste(out, frame.box[:2])
            out = whole
    elif guide.keep is not None:
        out = paste_kept(out, guide.image, guide.keep, blend=guide.strength is None)
    meta = {"model": model.name,
            **settings.metadata(text_conditioned=model.text_conditioned, takes_guidance=model.takes_guidance),
            "precision": precision.precision, "precision_reason": precision.reason,
            **({"loras": model.info["loras"]} if model.info.get("loras") else {}),
            **({"ip_adapters": model.info["ip_adapters"], "ip_images": model.info["ip_images"]}
               if model.info.get("ip_adapters") else {}),
            **_control_metadata(model, guide, float(settings.t0)),  # type: ignore[arg-type]
            **({"fit": fit} if model.square and not frame.whole_input and guide.tiling is None else {}),  # where it acted
            **(guide.tiling.metadata() if guide.tiling is not None else {}),
            "size": list(frame.size), "resolution": model.resolution, "masked": guide.mask is not None,
            **({"strength_map": True, "strength_levels": guide.strength_levels} if guide.strength is not None
               else {}),
            **({"strength_posterized": guide.posterized} if guide.posterized is not None else {}),
            **({"mask_grow": guide.mask_grow} if guide.mask_grow else {}),
            **({"mask_feather": guide.mask_feather} if guide.mask_feather else {}),
            **({"crop": list(frame.box)} if frame.whole_input else {}),
            **({"outpaint": guide.outpaint} if guide.outpaint is not None else {}),
            "device": str(model.device), "sdedit_version": __version__, "seed": row.seed, "sample": row.sample,
            **({"t0_auto": row.auto} if row.auto is not None else {})}
    out.info["sdedit"] = json.dumps(meta)
    return out


def check_control_window(model: Model, t0: object) -> None:
    """A ControlNet whose window ends above t0 would never act: refused (with t0 auto, outputs whose chosen t0 is
    below every window record no ControlNet)."""
    for c in getattr(model, "controls", ()):
        if isinstance(t0, float) and c.end > t0:
            raise InputError(f"ControlNet {c.spec.source} acts from t = {c.start:g} to {c.end:g}, above t0 = {t0:g}: "
                             f"it would never act; lower --control-end or raise --t0")


def _control_metadata(model: Model, guide: Guide, t0: float) -> dict[str, Any]:
    """What steered an output besides its prompt: each ControlNet with its scale and image, the preprocess, the window
    (nothing when no window reaches the output's t0)."""
    if not guide.control or all(c.end > t0 for c in getattr(model, "controls", ())):
        return {}
    return {"controlnets": model.info.get("controlnets", []), "control_images": list(guide.control_source),
            "control_preprocess": guide.control_preprocess,
            **({"control_window": model.info["control_window"]} if "control_window" in model.info else {})}


def steps_total(settings: RunSettings, guides: int = 1) -> int:
    """Sampler steps a run with a known t0 takes (for progress bars outside `edit`)."""
    return math.ceil(guides * settings.num_samples / settings.batch_size) * settings.total_steps
