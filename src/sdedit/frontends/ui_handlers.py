"""What the web UI does, without Gradio: validate settings, read the canvas, derive masks, run SDEdit in steps."""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..api import Guide, Row, batch_steps, choose_t0, iter_edits, prepare_guide, prepare_outpaint
from ..control_images import CONTROL_PREPROCESS, DEFAULT_CONTROL_PREPROCESS
from ..engine.samplers import SAMPLERS
from ..errors import InputError
from ..families.base import Model
from ..images import Fit, grow_and_feather, open_image, tensor_to_images, to_rgb
from ..outpainting import DEFAULT_FILL, FILLS, MAX_EXTENSION, Extension, check_canvas
from ..research.metrics import l2_distance
from ..settings import AUTO_T0, DEFAULT_METHOD, DEFAULT_SAMPLER, METHODS, RunSettings
from ..tiling import AUTO_TILE, TileSize


@dataclass(frozen=True)
class Limits:
    """Server-side bounds on what one request may ask for, whatever the browser sends."""

    max_pixels: int = 16_000_000  # per uploaded image, checked before decoding
    max_samples: int = 8
    max_steps: int = 1000
    max_repeats: int = 5
    max_grow: int = 64  # mask dilation, pixels
    max_feather: int = 32  # mask blur radius, pixels
    max_prompt_chars: int = 1000  # prompt and negative prompt, each
    max_upload_bytes: int = 20 * 2**20  # per uploaded file
    max_request_bytes: int = 2**20  # any request that is not an upload (settings and prompts are a few KB)
    max_tiled_pixels: int = 1024 * 1024  # a photo edited at its own size in tiles
    max_extension: int = 1024  # outpainting: pixels added on one side
    max_outpaint_pixels: int = 1024 * 1024  # outpainting: the grown canvas

    @property
    def max_side(self) -> int:
        """The most pixels the Outpaint tab may add on one side: this server's bound, within the library's."""
        return min(self.max_extension, MAX_EXTENSION)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or value is None:
        raise InputError(f"{what} must be a number, got {_short(value)}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {_short(value)}") from None
    if not math.isfinite(x):
        raise InputError(f"{what} must be finite, got {_short(value)}")
    return x


def _integer(value: Any, what: str, lo: int, hi: int) -> int:
    x = _number(value, what)
    if x != int(x) or not lo <= x <= hi:
        raise InputError(f"{what} must be a whole number from {lo} to {hi}, got {_short(value)}")
    return int(x)


def _text(value: Any, what: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise InputError(f"{what} must be text of at most {limit} characters")
    return value


def _checkbox(value: Any, what: str) -> bool:
    """A checkbox's value a page sent (None: unticked)."""
    if value is not None and not isinstance(value, bool):
        raise InputError(f"{what} must be a checkbox value (true or false), got {_short(value)}")
    return bool(value)


def validate(models: Sequence[str], limits: Limits, *, model: Any, t0: Any, sampler: Any, steps: Any,
             repeats: Any, samples: Any, seed: Any, prompt: Any = "", negative_prompt: Any = "",
             guidance: Any = None, auto_t0: Any = False, color_match: Any = False, method: Any = None,
             source_prompt: Any = "", flow_models: Collection[str] = ()) -> tuple[str, RunSettings]:
    """Check every setting a page sent (steps 0 = the sampler's default for t0): the model's name and the run.
    auto_t0: the 'auto t0' checkbox (True: t0 auto whatever the slider says); color_match: the 'colour match' one;
    method and source_prompt: the method radio (None: SDEdit) and FlowEdit's source prompt, for the models named
    in flow_models only (with SDEdit the hidden source prompt is checked, then ignored)."""
    if _checkbox(auto_t0, "auto t0"):
        t0 = AUTO_T0
    color_match = _checkbox(color_match, "colour match")
    if model not in models:
        raise InputError(f"unknown model {_short(model)}; this server offers: {', '.join(models)}")
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {_short(sampler)}; choose one of: {', '.join(SAMPLERS)}")
    fields: dict[str, Any] = dict(
        t0=AUTO_T0 if t0 == AUTO_T0 else _number(t0, "t0"), sampler=sampler,
        steps=_integer(steps, "steps", 0, limits.max_steps) or None,
        repeats=_integer(repeats, "repeats K", 1, limits.max_repeats),
        num_samples=_integer(samples, "number of samples", 1, limits.max_samples),
        seed=_integer(seed, "seed", 0, 2**31 - 1), prompt=_text(prompt, "prompt", limits.max_prompt_chars),
        negative_prompt=_text(negative_prompt, "negative prompt", limits.max_prompt_chars), color_match=color_match)
    if guidance is not None:
        fields["guidance"] = _bounded(guidance, "guidance", 0.0, 30.0)
    fields.update(_method_fields(method, source_prompt, limits, model=model, flow=model in flow_models,
                                 auto=fields["t0"] == AUTO_T0))
    return model, RunSettings(**fields)


METHOD_LABELS = {"sdedit": "SDEdit", "flowedit": "FlowEdit"}  # the method radio: value -> label


def _method_fields(method: Any, source_prompt: Any, limits: Limits, *, model: str, flow: bool,
                   auto: bool) -> dict[str, Any]:
    """The RunSettings fields of the method a page sent: none for SDEdit; FlowEdit's on a flow model at a t0 number,
    its source prompt, and the default sampler in place of the dropdown's (FlowEdit takes its own Euler steps)."""
    method = DEFAULT_METHOD if method is None else method
    if not isinstance(method, str) or method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {_short(method)}")
    source = _text(source_prompt, "source prompt", limits.max_prompt_chars)
    if method != "flowedit":
        return {}
    if not flow:
        raise InputError(f"FlowEdit needs a rectified-flow model (Stable Diffusion 3, FLUX.1, Qwen-Image); {model} "
                         f"is not one: choose SDEdit")
    if auto:
        raise InputError("t0 auto is SDEdit's: untick 'auto t0' for FlowEdit")
    return dict(method=method, source_prompt=source, sampler=DEFAULT_SAMPLER)


def _short(value: Any, limit: int = 60) -> str:
    """A value a page sent, as an error message may quote it (one line, bounded)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _bounded(value: Any, what: str, lo: float, hi: float) -> float:
    x = _number(value, what)
    if not lo <= x <= hi:
        raise InputError(f"{what} must be from {lo:g} to {hi:g}, got {_short(value)}")
    return x


MAX_CONTROL_SCALE = 2.0  # the control panel's scale slider runs from 0 (as if no ControlNet) to this
CONTROL_SOURCES = {"painting": "use the painting", "image": "an uploaded control image"}  # value -> label


@dataclass(frozen=True)
class ControlChoice:
    """The control panel's checked values: the ControlNet's scale (None: the command line's), the uploaded control
    image (None: the painting steers) and the preprocess."""

    scale: float | None
    image: Image.Image | None
    preprocess: str


def validate_control(limits: Limits, *, scale: Any, source: Any, image: Any, preprocess: Any,
                     active: bool) -> ControlChoice | None:
    """Check the control panel's values a page sent (None: the panel's default); None when the model has no
    ControlNet (active False: the hidden panel's values are checked, then ignored). The image is read only when
    it is the chosen source."""
    source = "painting" if source is None else source
    if not isinstance(source, str) or source not in CONTROL_SOURCES:
        raise InputError(f"control image source must be one of {', '.join(CONTROL_SOURCES)}, got {_short(source)}")
    preprocess = DEFAULT_CONTROL_PREPROCESS if preprocess is None else preprocess
    if not isinstance(preprocess, str) or preprocess not in CONTROL_PREPROCESS:
        raise InputError(f"control preprocess must be one of {', '.join(CONTROL_PREPROCESS)}, got {_short(preprocess)}")
    checked = None if scale is None else _bounded(scale, "control scale", 0.0, MAX_CONTROL_SCALE)
    if not active:
        return None
    picture = None
    if source == "image":
        picture = _load(image, "the control image", limits)
        if picture is None:
            raise InputError(f"upload a control image first, or choose '{CONTROL_SOURCES['painting']}'")
        picture = to_rgb(picture)
    return ControlChoice(checked, picture, preprocess)


def check_tiles(tiles: Any, size: tuple[int, int], limits: Limits) -> TileSize | None:
    """The 'tiles' checkbox for a photo of `size`: 'auto' (edited at its own size in tiles of the model's
    resolution) within the server's pixel limit for a tiled edit, or None (edited at the model's size)."""
    if not _checkbox(tiles, "tiles"):
        return None
    if size[0] * size[1] > limits.max_tiled_pixels:
        raise InputError(f"the photo has {size[0] * size[1]:,} pixels; this server edits at most "
                         f"{limits.max_tiled_pixels:,} in tiles (untick 'tiles' to edit it at the model's size)")
    return AUTO_TILE


@dataclass(frozen=True)
class OutpaintChoice:
    """The Outpaint tab's checked values: the image, the pixels added on each side, the fill and the seam's t0."""

    image: Image.Image
    extension: Extension
    fill: str
    t0: float


def validate_outpaint(limits: Limits, *, image: Any, left: Any, right: Any, top: Any, bottom: Any, fill: Any,
                      t0: Any, auto_t0: Any, control: ControlChoice | None,
                      method: str = DEFAULT_METHOD) -> OutpaintChoice:
    """Check the Outpaint tab's values a page sent; the grown canvas within images' and this server's pixel limits
    before anything is allocated. t0 is the seam band's (the new region past it is generated from t0 = 1); method:
    the checked run's (outpainting is SDEdit's)."""
    if method == "flowedit":
        raise InputError("the Outpaint tab runs SDEdit (a new region has nothing for a source prompt to describe): "
                         "choose the method SDEdit")
    sides = {name: _integer(v, f"{name} (px)", 0, limits.max_side)
             for name, v in (("left", left), ("right", right), ("top", top), ("bottom", bottom))}
    if not any(sides.values()):
        raise InputError("outpainting needs at least one of left, right, top, bottom above 0 pixels")
    fill = DEFAULT_FILL if fill is None else fill
    if not isinstance(fill, str) or fill not in FILLS:
        raise InputError(f"fill must be one of {', '.join(FILLS)}, got {_short(fill)}")
    if _checkbox(auto_t0, "auto t0"):
        raise InputError("t0 auto measures faithfulness to a guide, and a new region has none: untick 'auto t0'")
    band_t0 = _number(t0, "t0")
    if not 0.0 < band_t0 <= 1.0:
        raise InputError(f"t0 (the seam's) must be in (0, 1], got {_short(t0)}")
    if control is not None and (control.image is not None or control.preprocess != DEFAULT_CONTROL_PREPROCESS):
        raise InputError(f"the Outpaint tab steers the ControlNet with the grown canvas as it is: choose "
                         f"'{CONTROL_SOURCES['painting']}' and preprocess '{DEFAULT_CONTROL_PREPROCESS}'")
    picture = _load(image, "the image to outpaint", limits)
    if picture is None:
        raise InputError("upload an image to outpaint first")
    extension = Extension(**sides)
    w, h = check_canvas(picture.size, extension)
    if w * h > limits.max_outpaint_pixels:
        raise InputError(f"the outpainted canvas would be {w}x{h} pixels; this server's limit is "
                         f"{limits.max_outpaint_pixels:,}")
    return OutpaintChoice(to_rgb(picture), extension, fill, band_t0)


def t0_hint(t0: float) -> str:
    """One line on the realism-faithfulness trade-off at this t0 (the paper's Figure 3)."""
    if t0 < 0.3:
        return f"t0 = {t0:.2f}: stays very close to your strokes; little realism is added."
    if t0 <= 0.6:
        return f"t0 = {t0:.2f}: the usual balance; realistic, and still follows your strokes' layout and colours."
    return f"t0 = {t0:.2f}: very realistic, but free to drift away from your strokes."


@dataclass
class Canvas:
    """An ImageEditor value read into images: the picture, the strokes layer and the optional mask layer."""

    background: Image.Image | None  # RGB, the uploaded image (None on a blank canvas)
    strokes: Image.Image | None  # RGBA layer the user painted colours on
    mask: Image.Image | None  # RGBA layer the user painted the edit region on
    composite: Image.Image  # RGB: everything flattened on white


def _load(src: Any, what: str, limits: Limits) -> Image.Image | None:
    if src is None:
        return None
    if isinstance(src, Image.Image):
        if src.width * src.height > limits.max_pixels:
            raise InputError(f"{what} has {src.width * src.height:,} pixels; the limit is {limits.max_pixels:,}")
        return src
    if isinstance(src, (str, Path)):
        return open_image(src, max_pixels=limits.max_pixels)  # checks the size before decoding
    raise InputError(f"{what}: expected an image, got {type(src).__name__}")


def read_canvas(value: Mapping[str, Any] | None, limits: Limits) -> Canvas:
    """Read {background, layers, composite} (paths or PIL images) from the editor; layers[0] strokes, [1] mask."""
    if not value or value.get("composite") is None:
        raise InputError("the canvas is empty: paint some strokes or upload an image first")
    composite = _load(value["composite"], "the canvas", limits)
    background = _load(value.get("background"), "the uploaded image", limits)
    layers = [_load(v, "a layer", limits) for v in (value.get("layers") or [])]
    size = background.size if background is not None else composite.size

    def layer(i: int) -> Image.Image | None:
        if i >= len(layers) or layers[i] is None:
            return None
        lay = layers[i].convert("RGBA")
        return lay if lay.size == size else lay.resize(size, Image.Resampling.NEAREST)

    return Canvas(to_rgb(background) if background is not None else None, layer(0), layer(1), to_rgb(composite))


def painted(layer: Image.Image | None) -> np.ndarray:
    """Boolean map of the pixels a layer covers (alpha > 0)."""
    if layer is None:
        return np.zeros((0, 0), bool)
    return np.asarray(layer.getchannel("A")) > 0


def derive_mask(covered: np.ndarray, grow: int, feather: int) -> Image.Image:
    """Edit mask from painted pixels: grown by `grow` px, edges feathered outward by `feather` px (white = edit)."""
    return grow_and_feather(Image.fromarray((covered * 255).astype(np.uint8)), grow, feather)


def guide_and_mask(canvas: Canvas, *, photo: bool, grow: int, feather: int,
                   limits: Limits) -> tuple[Image.Image, Image.Image | None]:
    """The SDEdit guide and mask of one canvas: a painting is edited everywhere; a photo only where painted."""
    if not photo:
        return canvas.composite, None
    if canvas.background is None:
        raise InputError("upload a photo to edit first (or use the Paint tab for a blank canvas)")
    grow = _integer(grow, "mask grow", 0, limits.max_grow)
    feather = _integer(feather, "mask feather", 0, limits.max_feather)
    strokes = painted(canvas.strokes)
    user_mask = painted(canvas.mask)
    guide = canvas.background.convert("RGBA")
    if canvas.strokes is not None:
        guide = Image.alpha_composite(guide, canvas.strokes)
    guide = guide.convert("RGB")
    if user_mask.any():
        return guide, derive_mask(user_mask | strokes if strokes.size else user_mask, 0, feather)
    if not strokes.size or not strokes.any():
        raise InputError("paint some strokes on the photo first (on the 'strokes' layer)")
    return guide, derive_mask(strokes, grow, feather)


STRENGTH_LEVELS = 8  # a translucent mask brush's opacity, rounded to eighths (antialiased edges add no levels)


def mask_strength(canvas: Canvas) -> Image.Image | None:
    """A strength map (per-pixel t0 = t0 x opacity) when the mask layer was painted with a translucent brush:
    most painted pixels partly opaque; None for an opaque mask (then the mask is binary as before)."""
    if canvas.mask is None:
        return None
    alpha = np.asarray(canvas.mask.getchannel("A")).astype(np.float64) / 255
    painted_px = alpha > 0
    partial = painted_px & (alpha < 250 / 255)
    if not painted_px.any() or partial.sum() <= painted_px.sum() / 2:
        return None
    level = np.round(alpha * STRENGTH_LEVELS) / STRENGTH_LEVELS
    strokes = painted(canvas.strokes)
    if strokes.size:
        level[strokes] = 1.0  # painted colours are edited at the full t0
    return Image.fromarray(np.round(level * 255).astype(np.uint8))


def caption(settings: Mapping[str, Any], l2: float) -> str:
    """Gallery caption: seed, settings and faithfulness (L2 to the guide at the model's resolution)."""
    k = f", K={settings['repeats']}" if settings["repeats"] > 1 else ""
    return (f"seed {settings['seed']} | t0 {settings['t0']:g} | {settings['sampler']} {settings['steps']} steps{k} "
            f"| L2 to guide {l2:.2f}")


def faithfulness(outputs: list[Image.Image], reference: Image.Image) -> list[float]:
    """L2 between each output and the guide, both at the size the model worked at (the paper's measure)."""
    outs = [o if o.size == reference.size else o.resize(reference.size, Image.Resampling.LANCZOS) for o in outputs]
    return [float(v) for v in l2_distance(outs, [reference] * len(outs))]


class Cancelled(Exception):
    """Raised inside sampling when the user cancels a run."""


@dataclass
class Progress:
    """A run's state while it goes: fraction done and the current denoised estimate of sample 0."""

    fraction: float
    preview: Image.Image | None


@dataclass
class Result:
    """A finished run: the images with their captions."""

    images: list[tuple[Image.Image, str]]


def run_steps(model: Model, settings: RunSettings, guide: Image.Image, mask: Image.Image | None, *,
              fit: Fit = "crop", original_size: bool = False, strength_map: Image.Image | None = None,
              preview_every: float = 0.25, edit_fn: Callable[..., Iterator[Image.Image]] = iter_edits,
              control: ControlChoice | None = None, tile: TileSize | None = None) -> Iterator[Progress | Result]:
    """SDEdit in a worker thread, yielding progress with previews; closing the iterator cancels the run.

    control: the control panel's choice for a model with one ControlNet (its scale for this run only, on a model
    sharing the networks; the uploaded image or the painting; the preprocess). tile: tiled SDEdit at the guide's
    own size (api.prepare_guide's). edit_fn has the signature of api.iter_edits (tests wrap it to watch the worker).
    """
    control = control or ControlChoice(None, None, DEFAULT_CONTROL_PREPROCESS)
    model = _scaled(model, control)
    prepared = prepare_guide(model, guide, None if strength_map is not None else mask, fit=fit,
                             original_size=original_size, strength_map=strength_map,
                             control_images=[control.image] if control.image is not None else [],
                             control_preprocess=control.preprocess, tile=tile)
    yield from run_prepared(model, settings, prepared, fit=fit, preview_every=preview_every, edit_fn=edit_fn)


def run_outpaint(model: Model, settings: RunSettings, choice: OutpaintChoice, *, control: ControlChoice | None = None,
                 preview_every: float = 0.25,
                 edit_fn: Callable[..., Iterator[Image.Image]] = iter_edits) -> Iterator[Progress | Result]:
    """Outpainting as run_steps runs SDEdit (settings' t0: the new region's, outpainting.NEW_T0): the image on
    the grown canvas, the seam band from choice.t0, the original pixels kept bit for bit."""
    model = _scaled(model, control)
    assert settings.seed is not None
    prepared = prepare_outpaint(model, choice.image, choice.extension, fill=choice.fill, t0=choice.t0,
                                seed=settings.seed)
    yield from run_prepared(model, settings, prepared, fit="stretch", preview_every=preview_every, edit_fn=edit_fn)


def _scaled(model: Model, control: ControlChoice | None) -> Model:
    """The model with the control panel's scale for this run (sharing the networks), or as it is."""
    if control is None or control.scale is None:
        return model
    return model.with_control_scales([control.scale])


def guide_steps(model: Model, prepared: Guide, settings: RunSettings) -> int:
    """Sampler steps of a run on one guide (t0 known): a strength map's levels add theirs to each batch's."""
    assert settings.seed is not None
    batches = math.ceil(settings.num_samples / settings.batch_size)
    return batches * batch_steps(model, Row(prepared, settings.seed, 0, settings))


def run_prepared(model: Model, settings: RunSettings, prepared: Guide, *, fit: Fit = "crop",
                 preview_every: float = 0.25,
                 edit_fn: Callable[..., Iterator[Image.Image]] = iter_edits) -> Iterator[Progress | Result]:
    """SDEdit of a prepared guide in a worker thread, as run_steps (t0 auto is chosen here, before the run)."""
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()
    settings = model.run_settings(settings)
    if settings.t0 == AUTO_T0:  # probes first; the steps follow from the t0 chosen
        t0, _ = choose_t0(model, model.denoiser(settings), prepared, settings.seed or 0, settings)
        settings = settings.with_(t0=t0, steps=settings.steps)
    total = max(1, guide_steps(model, prepared, settings))
    done = [0]

    def on_step(i: int, sigma: float, x: torch.Tensor, denoised: torch.Tensor) -> None:
        if stop.is_set():
            raise Cancelled()
        done[0] += 1
        # pixel models show their denoised estimate; a latent one would need a VAE decode per step
        estimate = denoised[:1].detach().clamp(-1, 1).float().cpu() if denoised.shape[1] == 3 else None
        events.put(("step", (done[0], estimate)))

    def work() -> None:
        try:
            assert settings.seed is not None
            outs = list(edit_fn(model, [prepared], [settings.seed], settings, fit=fit, progress=False,
                                callback=on_step))
            events.put(("done", outs))
        except BaseException as e:  # handed to the caller's thread, re-raised there
            events.put(("error", e))

    worker = threading.Thread(target=work, name="sdedit-ui-run", daemon=True)
    worker.start()
    last = 0.0
    try:
        while True:
            kind, payload = events.get()
            if kind == "step":
                count, estimate = payload
                now = time.monotonic()
                if now - last >= preview_every or count == total:
                    last = now
                    yield Progress(count / total, tensor_to_images(estimate)[0] if estimate is not None else None)
            elif kind == "error":
                raise payload
            else:
                l2 = faithfulness(payload, prepared.image)
                yield Result([(img, caption(json.loads(img.info["sdedit"]), d)) for img, d in zip(payload, l2)])
                return
    finally:
        stop.set()
        worker.join()
