"""`sdedit ui`: a local Gradio app to paint strokes, or paint on a photo, and watch SDEdit turn them into images."""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..control_images import CONTROL_PREPROCESS, DEFAULT_CONTROL_PREPROCESS
from ..devices import Offload
from ..engine.samplers import SAMPLERS
from ..errors import InputError, SdeditError
from ..families.control import FULL_WINDOW
from ..families.base import Model
from ..families.flux import is_flux_folder
from ..families.qwen_image import is_qwen_image_folder
from ..families.stable_diffusion_3 import is_sd3_folder
from ..images import open_image, save_png
from ..loader import is_text_conditioned, load_model, recommended_t0_of
from ..loading.controlnets import ControlSpec
from ..loading.hub import is_cached
from ..loading.presets import BUNDLED_MODELS, PRESETS
from ..outpainting import DEFAULT_FILL, FILLS, NEW_T0
from ..settings import DEFAULT_GUIDANCE, DEFAULT_METHOD, DEFAULT_SAMPLER, DEFAULT_T0, RunSettings
from .ui_handlers import CONTROL_SOURCES, MAX_CONTROL_SCALE, METHOD_LABELS, ControlChoice, Limits, Progress, \
    Result, check_tiles, guide_and_mask, mask_strength, read_canvas, run_outpaint, run_steps, t0_hint, validate, \
    validate_control, validate_outpaint
from .ui_server import BodyCap, LoginBrake

PALETTE = ["#87b5e0", "#f2f2f2", "#f0a050", "#7a7f8c", "#3d4a5c", "#2f5a2a", "#6f9a3a", "#3a6ea5", "#d8c48a"]
# translucent brushes for the mask layer: a weaker edit there (per-pixel t0 = t0 x opacity, a strength map)
MASK_BRUSHES = [("#ff00ff", 0.25), ("#ff00ff", 0.5), ("#ff00ff", 0.75)]
CANVAS = 512  # side of the blank painting canvas, pixels
UPLOAD_FILES = 5  # images one request may carry: an editor's background, its two layers, the composite, a control
LISTEN_NEEDS_AUTH = ("--listen exposes the app to the network: give it a password with SDEDIT_UI_AUTH=USER:PASS, "
                     "--auth-file FILE (first line USER:PASS) or --auth USER:PASS")


def model_choices(extra: str | None = None) -> dict[str, str]:
    """Models the page may pick: the bundled ones, presets already downloaded, and the one given at start-up."""
    choices = {name: name for name in BUNDLED_MODELS}
    choices.update({name: name for name, p in PRESETS.items() if is_cached(p.repo_id)})
    if extra is not None:
        choices[extra] = extra
    return choices


def is_flow_source(source: str) -> bool:
    """Whether a source is a local rectified-flow model (SD3, FLUX.1, Qwen-Image), judged from its files."""
    path = Path(source).expanduser()
    return any(is_folder(path) for is_folder in (is_sd3_folder, is_flux_folder, is_qwen_image_folder))


@dataclass
class ModelPool:
    """Loads the models the page names, one at a time (the last one stays loaded)."""

    sources: dict[str, str]  # name shown on the page -> load_model source
    device: str | None = None
    config: str | None = None  # for an original checkpoint given at start-up
    text: set[str] = field(default_factory=set)  # names of the text-conditioned models seen so far
    flow: set[str] = field(default_factory=set)  # names of the rectified-flow models seen so far (FlowEdit acts)
    guidance: dict[str, float | None] = field(default_factory=dict)  # loaded so far: recommended guidance, or None
    loras: dict[str, list[str]] = field(default_factory=dict)  # LoRAs per model name (from the command line)
    # the ControlNet per model name (from the command line): the page's control panel steers it
    controlnets: dict[str, list[ControlSpec | str]] = field(default_factory=dict)
    control_window: tuple[float, float] = FULL_WINDOW  # (start, end) in t where the ControlNets act
    offload: Offload = "none"  # for latent models; the bundled and preset pixel models are small and stay resident
    _loaded: dict[str, Model] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.text |= {n for n, src in self.sources.items() if is_text_conditioned(src)}
        self.flow |= {n for n, src in self.sources.items() if is_flow_source(src)}
        self.controlnets = {n: [s if isinstance(s, ControlSpec) else ControlSpec.parse(s) for s in specs]
                            for n, specs in self.controlnets.items() if specs}
        for name, specs in self.controlnets.items():
            if name not in self.sources:
                raise InputError(f"ControlNet for {name}, a model this server does not offer")
            if len(specs) > 1:
                raise InputError(f"the web app steers one ControlNet per model; {name} was given {len(specs)}")
            if not 0.0 <= specs[0].scale <= MAX_CONTROL_SCALE:
                raise InputError(f"ControlNet {specs[0].source}: the web app's scale runs from 0 to "
                                 f"{MAX_CONTROL_SCALE:g}, got {specs[0].scale:g}")

    def get(self, name: str) -> Model:
        """The model behind a validated name, loading it on first use."""
        with self._lock:
            if name not in self._loaded:
                self._loaded.clear()
                src = self.sources[name]
                own = src not in BUNDLED_MODELS and src not in PRESETS
                self._loaded[name] = load_model(src, config=self.config if own else None, device=self.device,
                                                loras=self.loras.get(name, []), offload=self.offload if own else "none",
                                                controlnets=self.controlnets.get(name, []),
                                                control_window=self.control_window)
                net = self._loaded[name]
                if net.text_conditioned:
                    self.text.add(name)
                if net.schedule.kind == "flow":
                    self.flow.add(name)
                self.guidance[name] = net.recommended_guidance if net.takes_guidance else None
            return self._loaded[name]

    def takes_guidance(self, name: str) -> bool:
        """Whether the page shows the guidance control for a model: where it acts (known once the model loaded)."""
        return name in self.text and (name not in self.guidance or self.guidance[name] is not None)

    def takes_flowedit(self, name: Any) -> bool:
        """Whether the page offers FlowEdit for a model: a rectified-flow one (known from its files, or once loaded)."""
        return isinstance(name, str) and name in self.flow

    def start_guidance(self, name: str) -> float:
        """The guidance the page starts at for a model: its own recommendation once loaded, else the default."""
        return self.guidance.get(name) or DEFAULT_GUIDANCE

    def control_scale(self, name: str) -> float | None:
        """The scale the control panel starts at for a model: its ControlNet's, or None (no ControlNet: no panel)."""
        specs = self.controlnets.get(name)
        return specs[0].scale if specs else None

    def slider_scale(self, name: str) -> float:
        """Where the scale slider stands for a model: its ControlNet's scale, else 1 (the panel is then hidden)."""
        scale = self.control_scale(name)
        return 1.0 if scale is None else scale

    def control_title(self, name: str) -> str:
        """The control panel's heading for a model: its ControlNet's name (a folder's or file's own name only)."""
        specs = self.controlnets.get(name)
        return f"**ControlNet** {Path(specs[0].source).name}" if specs else ""

    def recommended_t0(self, name: str) -> float:
        """The t0 the page starts at for a model: its own recommendation (read from its files if not loaded)."""
        with self._lock:
            if name in self._loaded:
                return self._loaded[name].recommended_t0
        return recommended_t0_of(self.sources[name]) if name in self.sources else DEFAULT_T0


def _save(img: Image.Image, folder: Path) -> str:
    """Write one result as a PNG with its settings, under the app's own folder; the path for the gallery."""
    folder.mkdir(parents=True, exist_ok=True)
    return str(save_png(img, folder / f"sdedit-{secrets.token_hex(6)}.png"))


def _checked(pool: ModelPool, limits: Limits, **values: Any) -> tuple[str, RunSettings, ControlChoice | None]:
    """The settings every tab sends, checked: the model's name, the run and the control panel's choice (the panel
    always sends its values: checked, then used only for a model with a ControlNet)."""
    control = {k: values.pop(f"control_{k}") for k in ("scale", "source", "image", "preprocess")}
    name, settings = validate(list(pool.sources), limits, **values, flow_models=pool.flow)
    return name, settings, validate_control(limits, **control, active=pool.control_scale(name) is not None)


def _loaded(pool: ModelPool, name: str, settings: RunSettings) -> tuple[Model, RunSettings]:
    """The model, and the settings without a guidance where it would not act (the slider always sends one)."""
    net = pool.get(name)
    return net, settings if net.takes_guidance else settings.with_(guidance=None)


def _stream(run: Iterator[Progress | Result], samples: int, outdir: Path, progress: Any) -> Iterator[Any]:
    """A run's events as the page's (gallery, preview) updates: previews while sampling, then the saved images."""
    import gradio as gr

    progress(0.0, desc="starting")
    for ev in run:
        if isinstance(ev, Progress):
            progress(ev.fraction, desc=f"sampling {samples} image(s)")
            yield gr.update(), _enlarge(ev.preview)
        else:
            yield [(_save(img, outdir), text) for img, text in ev.images], gr.update()


def make_handler(pool: ModelPool, limits: Limits, outdir: Path, *, photo: bool) -> Callable[..., Iterator[Any]]:
    """The generate handler of one tab: validate, read the canvas, run, stream previews, then the gallery."""
    import gradio as gr

    def handler(editor: Any, model: Any, t0: Any, sampler: Any, steps: Any, repeats: Any, samples: Any, seed: Any,
                grow: Any, feather: Any, prompt: Any = "", negative_prompt: Any = "", guidance: Any = None,
                auto_t0: Any = False, control_scale: Any = None, control_source: Any = None,
                control_image: Any = None, control_preprocess: Any = None, color_match: Any = False,
                method: Any = None, source_prompt: Any = "", tiles: Any = False,
                progress: gr.Progress = gr.Progress()) -> Iterator[Any]:
        try:
            name, settings, control = _checked(
                pool, limits, model=model, t0=t0, sampler=sampler, steps=steps, repeats=repeats, samples=samples,
                seed=seed, prompt=prompt, negative_prompt=negative_prompt, guidance=guidance, auto_t0=auto_t0,
                color_match=color_match, method=method, source_prompt=source_prompt, control_scale=control_scale,
                control_source=control_source, control_image=control_image, control_preprocess=control_preprocess)
            canvas = read_canvas(editor, limits)
            guide, mask = guide_and_mask(canvas, photo=photo, grow=grow, feather=feather, limits=limits)
            tile = check_tiles(tiles, guide.size, limits)
            strength = mask_strength(canvas) if photo else None
            net, settings = _loaded(pool, name, settings)
            run = run_steps(net, settings, guide, mask, fit="stretch" if photo else "crop", original_size=photo,
                            strength_map=strength, control=control, tile=tile)
            yield from _stream(run, settings.num_samples, outdir, progress)
        except SdeditError as e:
            raise gr.Error(public_message(e), print_exception=False) from None

    return handler


def make_outpaint_handler(pool: ModelPool, limits: Limits, outdir: Path) -> Callable[..., Iterator[Any]]:
    """The Outpaint tab's handler: validate, grow the canvas, run (the seam band from the t0 slider, the new region
    from NEW_T0), stream previews, then the gallery. grow and feather (the photo tab's) are ignored."""
    import gradio as gr

    def handler(image: Any, left: Any, right: Any, top: Any, bottom: Any, fill: Any, model: Any, t0: Any,
                sampler: Any, steps: Any, repeats: Any, samples: Any, seed: Any, grow: Any = 0, feather: Any = 0,
                prompt: Any = "", negative_prompt: Any = "", guidance: Any = None, auto_t0: Any = False,
                control_scale: Any = None, control_source: Any = None, control_image: Any = None,
                control_preprocess: Any = None, color_match: Any = False, method: Any = None,
                source_prompt: Any = "", progress: gr.Progress = gr.Progress()) -> Iterator[Any]:
        try:
            name, settings, control = _checked(
                pool, limits, model=model, t0=NEW_T0, sampler=sampler, steps=steps, repeats=repeats,
                samples=samples, seed=seed, prompt=prompt, negative_prompt=negative_prompt, guidance=guidance,
                color_match=color_match, method=method, source_prompt=source_prompt, control_scale=control_scale,
                control_source=control_source, control_image=control_image, control_preprocess=control_preprocess)
            choice = validate_outpaint(limits, image=image, left=left, right=right, top=top, bottom=bottom,
                                       fill=fill, t0=t0, auto_t0=auto_t0, control=control, method=settings.method)
            net, settings = _loaded(pool, name, settings)
            yield from _stream(run_outpaint(net, settings, choice, control=control), settings.num_samples, outdir,
                               progress)
        except SdeditError as e:
            raise gr.Error(public_message(e), print_exception=False) from None

    return handler


def public_message(e: BaseException) -> str:
    """An error as the page may show it: one line, and server paths (uploads, results) reduced to file names."""
    text = " ".join(str(e).split())
    for root in {os.environ.get("GRADIO_TEMP_DIR"), tempfile.gettempdir()} - {None, ""}:
        text = re.sub(re.escape(str(root).rstrip("/")) + r"/[^\s:'\"]*/([^/\s:'\"]+)", r"\1", text)
    return text


PENDING_BLOB_BYTES = 256 * 2**20  # images the browser's editors sent for runs not started yet, all sessions together


def checked_editor(limits: Limits, **kwargs: Any) -> Any:
    """A Gradio image editor whose images are checked by our own reader (listed formats, pixel limit from the
    header, whole decode) before Gradio decodes them: a bomb or a truncated upload gets its one-line reason."""
    import gradio as gr
    from gradio.components.base import server

    class Editor(gr.ImageEditor):
        is_template = True  # the browser draws it as the plain image editor

        def preprocess(self, payload: Any) -> Any:
            try:
                for name, image in _editor_images(payload, self.blob_storage):
                    open_image(image, max_pixels=limits.max_pixels, name=name)
            except SdeditError as e:
                raise gr.Error(public_message(e), print_exception=False) from None
            return super().preprocess(payload)

        @server
        def accept_blobs(self, data: Any) -> None:
            """The browser's images of one run, kept until the run starts; past the budget the oldest go."""
            super().accept_blobs(data)
            while sum(_blob_bytes(b) for b in self.blob_storage.values()) > PENDING_BLOB_BYTES \
                    and len(self.blob_storage) > 1:
                self.blob_storage.pop(next(iter(self.blob_storage)))

    return Editor(**kwargs)


def checked_image(limits: Limits, *, what: str = "control image", **kwargs: Any) -> Any:
    """A Gradio image upload checked by our own reader (formats, pixel limit from the header, whole decode) before
    Gradio decodes it, as the editors are; `what` names it in a refusal."""
    import gradio as gr

    class Upload(gr.Image):
        is_template = True  # the browser draws it as the plain image component

        def preprocess(self, payload: Any) -> Any:
            if payload is not None and payload.path:
                try:
                    open_image(payload.path, max_pixels=limits.max_pixels, name=what)
                except SdeditError as e:
                    raise gr.Error(public_message(e), print_exception=False) from None
            return super().preprocess(payload)

    return Upload(**kwargs)


def _editor_images(payload: Any, blobs: dict[str, Any]) -> Iterator[tuple[str, str | bytes]]:
    """(name, file path or bytes) of every image an editor's value carries: uploaded files, or the browser's blobs."""
    if payload is None:
        return
    value = blobs.get(payload.id) if payload.id is not None else payload
    if value is None:
        return
    for name, item in [("background", value.background), *((f"layer {i}", x) for i, x in enumerate(value.layers)),
                       ("composite", value.composite)]:
        if item is not None:
            yield name, item if isinstance(item, bytes) else item.path


def _blob_bytes(value: Any) -> int:
    return sum(len(b) for b in [value.background, value.composite, *value.layers] if b is not None)


def _enlarge(img: Image.Image | None, side: int = 256) -> Image.Image | None:
    """Small previews shown with visible pixels rather than as a thumbnail."""
    if img is None or img.width >= side:
        return img
    k = max(1, side // img.width)
    return img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)


HELP = """**Paint** a scene with a few flat colours (sky, mountains, trees, water), or **edit a photo** by painting
colours where it should change; on the 'mask' layer the translucent (magenta) brushes ask for a weaker edit
there (t0 x opacity). *t0* sets how much noise SDEdit adds before denoising: low keeps your strokes, high makes
the result more realistic; it starts at the model's recommended value, and *auto* picks the largest t0 that
stays within the faithfulness budget for each image. **Outpaint** grows an image's canvas and fills the new
region. *Colour match* keeps the guide's colours. On flow models (SD3, FLUX.1, Qwen-Image) *FlowEdit* moves the
image from what the *source prompt* describes to what the prompt describes, with its own steps (no sampler).
Results keep their settings in the PNG; download them from the gallery."""
OUTPAINT_HELP = f"""The new region is generated (from t0 = {NEW_T0:g}); along the seam a band starts at the *t0*
slider's value, so the fill there steers the start. The image's own pixels are kept exactly."""


def build_app(pool: ModelPool, *, limits: Limits | None = None, outdir: Path | None = None,
              default_model: str | None = None) -> Any:
    """The Gradio Blocks of the app (not launched)."""
    import gradio as gr

    limits = limits or Limits()
    outdir = outdir or Path(tempfile.mkdtemp(prefix="sdedit-ui-out-"))
    names = list(pool.sources)
    brush = gr.Brush(colors=[*PALETTE, *MASK_BRUSHES], default_color=PALETTE[0], color_mode="defaults",
                     default_size=24)

    with gr.Blocks(title="sdedit") as app:
        gr.Markdown("## sdedit: stroke paintings to images (SDEdit)\n" + HELP)
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Paint", id="paint"):
                        paint = checked_editor(limits, type="filepath", format="png", brush=brush,
                                               eraser=gr.Eraser(),
                                               layers=gr.LayerOptions(layers=["strokes"], allow_additional_layers=False),
                                               canvas_size=(CANVAS, CANVAS), label="stroke painting",
                                               elem_id="paint-canvas", sources=("upload", "clipboard"))
                        with gr.Row():
                            example = gr.Button("start from an example painting", size="sm", elem_id="paint-example")
                            paint_go = gr.Button("Generate", variant="primary", elem_id="paint-go", scale=3)
                    with gr.Tab("Edit a photo", id="photo"):
                        photo = checked_editor(limits, type="filepath", format="png", brush=brush,
                                               eraser=gr.Eraser(), layers=gr.LayerOptions(layers=["strokes", "mask"],
                                                                      allow_additional_layers=False),
                                               label="photo: paint colours on 'strokes'; optionally the region to "
                                                     "change on 'mask'", elem_id="photo-canvas",
                                               sources=("upload", "clipboard"))
                        with gr.Row():
                            grow = gr.Slider(0, limits.max_grow, value=8, step=1, label="mask grow (px)")
                            feather = gr.Slider(0, limits.max_feather, value=4, step=1, label="mask feather (px)")
                            tiles = gr.Checkbox(False, label="work at the photo's own size in tiles", elem_id="tiles")
                        photo_go = gr.Button("Edit", variant="primary", elem_id="photo-go")
                    with gr.Tab("Outpaint", id="outpaint"):
                        outpaint = checked_image(limits, what="image to outpaint", type="filepath", format="png",
                                                 image_mode="RGB", label="image to outpaint",
                                                 sources=("upload", "clipboard"), elem_id="outpaint-image")
                        with gr.Row():
                            sides = [gr.Number(value=0, precision=0, minimum=0, maximum=limits.max_side,
                                               label=f"{side} (px)", elem_id=f"outpaint-{side}")
                                     for side in ("left", "right", "top", "bottom")]
                            fill = gr.Dropdown(list(FILLS), value=DEFAULT_FILL, label="fill of the new region",
                                               elem_id="outpaint-fill")
                        gr.Markdown(OUTPAINT_HELP)
                        outpaint_go = gr.Button("Outpaint", variant="primary", elem_id="outpaint-go")
                with gr.Row():
                    model = gr.Dropdown(names, value=default_model if default_model in names else names[0],
                                        label="model")
                    sampler = gr.Dropdown(list(SAMPLERS), value=DEFAULT_SAMPLER, label="sampler")
                first = default_model if default_model in names else names[0]
                with gr.Group(visible=first in pool.text) as text_box:
                    prompt = gr.Textbox("", label="prompt (text-conditioned models)", elem_id="prompt",
                                        max_length=limits.max_prompt_chars)
                    with gr.Row():
                        negative = gr.Textbox("", label="negative prompt", max_length=limits.max_prompt_chars)
                        # shown only for models that take guidance (the handler sends none to the others)
                        guidance = gr.Slider(1.0, 20.0, value=pool.start_guidance(first), step=0.5, label="guidance",
                                             visible=pool.takes_guidance(first), elem_id="guidance")
                    with gr.Row():
                        # shown only for flow models; the source prompt only for FlowEdit (the sampler is then off)
                        method = gr.Radio([(label, value) for value, label in METHOD_LABELS.items()],
                                          value=DEFAULT_METHOD, label="method", visible=pool.takes_flowedit(first),
                                          elem_id="method")
                        source_prompt = gr.Textbox("", label="source prompt (FlowEdit: what the input shows)",
                                                   max_length=limits.max_prompt_chars, visible=False,
                                                   elem_id="source-prompt")
                with gr.Group(visible=pool.control_scale(first) is not None, elem_id="control") as control_box:
                    control_title = gr.Markdown(pool.control_title(first))
                    with gr.Row():
                        control_scale = gr.Slider(0.0, MAX_CONTROL_SCALE, value=pool.slider_scale(first), step=0.05,
                                                  label="control scale (0 = as if no ControlNet)",
                                                  elem_id="control-scale")
                        control_preprocess = gr.Radio(list(CONTROL_PREPROCESS), value=DEFAULT_CONTROL_PREPROCESS,
                                                      label="control preprocess", elem_id="control-preprocess")
                    control_source = gr.Radio([(label, value) for value, label in CONTROL_SOURCES.items()],
                                              value="painting", label="control image", elem_id="control-source")
                    control_image = checked_image(limits, type="filepath", format="png", image_mode="RGB",
                                                  label="control image to upload (edges, scribble, depth or pose map)",
                                                  sources=("upload", "clipboard"), elem_id="control-image")
                start_t0 = pool.recommended_t0(first)
                with gr.Row():
                    t0 = gr.Slider(0.05, 1.0, value=start_t0, step=0.01, label="t0 (noise level)", scale=4)
                    auto_t0 = gr.Checkbox(False, label="auto t0 (largest within the faithfulness budget)",
                                          elem_id="t0-auto")
                hint = gr.Markdown(t0_hint(start_t0))
                with gr.Row():
                    steps = gr.Slider(0, 200, value=0, step=1, label="steps (0 = default for sampler and t0)")
                    repeats = gr.Slider(1, limits.max_repeats, value=1, step=1, label="repeats K")
                    samples = gr.Slider(1, limits.max_samples, value=4, step=1, label="samples")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=2**31 - 1, label="seed")
                    dice = gr.Button("random seed", size="sm")
                    color_match = gr.Checkbox(False, label="colour match (keep the guide's colours)",
                                              elem_id="color-match")
            with gr.Column(scale=2):
                preview = gr.Image(label="denoised estimate while sampling", interactive=False, height=256,
                                   elem_id="preview")
                gallery = gr.Gallery(label="results", columns=2, height="auto", buttons=["download", "fullscreen"],
                                     elem_id="results")
                cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")

        controls = [model, t0, sampler, steps, repeats, samples, seed, grow, feather, prompt, negative, guidance,
                    auto_t0, control_scale, control_source, control_image, control_preprocess, color_match, method,
                    source_prompt]
        model.change(lambda name: (gr.update(visible=name in pool.text), gr.update(value=pool.recommended_t0(name)),
                                   gr.update(visible=pool.takes_guidance(name), value=pool.start_guidance(name)),
                                   gr.update(visible=pool.control_scale(name) is not None),
                                   gr.update(value=pool.slider_scale(name)),
                                   gr.update(value=pool.control_title(name))),
                     model, [text_box, t0, guidance, control_box, control_scale, control_title], queue=False,
                     api_name=False)
        model.change(lambda name, chosen: method_controls(pool, name, chosen), [model, method],
                     [method, source_prompt, sampler], queue=False, api_name=False)
        method.change(lambda name, chosen: method_controls(pool, name, chosen)[1:], [model, method],
                      [source_prompt, sampler], queue=False, api_name=False)
        control_image.upload(lambda: "image", None, control_source, queue=False, api_name=False)
        ev_paint = paint_go.click(make_handler(pool, limits, outdir, photo=False), [paint, *controls],
                                  [gallery, preview], api_name="paint", concurrency_id="sdedit")
        ev_photo = photo_go.click(make_handler(pool, limits, outdir, photo=True), [photo, *controls, tiles],
                                  [gallery, preview], api_name="edit_photo", concurrency_id="sdedit")
        ev_outpaint = outpaint_go.click(make_outpaint_handler(pool, limits, outdir),
                                        [outpaint, *sides, fill, *controls], [gallery, preview], api_name="outpaint",
                                        concurrency_id="sdedit")
        cancel.click(None, None, None, cancels=[ev_paint, ev_photo, ev_outpaint], queue=False)
        # the white canvas arrives with the page, not in its config (which would then name a server path)
        app.load(_blank_painting, None, paint, queue=False, api_name=False)
        example.click(_example_painting, None, paint, queue=False, api_name=False)
        dice.click(lambda: secrets.randbits(31), None, seed, queue=False, api_name=False)
        t0.change(_hint, t0, hint, queue=False, api_name=False)
    return app


def method_controls(pool: ModelPool, name: Any, method: Any) -> tuple[Any, Any, Any]:
    """Updates of the method radio, the source prompt and the sampler for a model and the chosen method: the radio
    for flow models only (back to SDEdit elsewhere), the source prompt for FlowEdit only, the sampler off for it."""
    import gradio as gr

    flow = pool.takes_flowedit(name)
    flowedit = flow and method == "flowedit"
    return (gr.update(visible=flow, value="flowedit" if flowedit else DEFAULT_METHOD), gr.update(visible=flowedit),
            gr.update(interactive=not flowedit))


def _blank_painting() -> dict[str, Any]:
    """A white canvas to paint on."""
    return {"background": Image.new("RGB", (CANVAS, CANVAS), "white"), "layers": [], "composite": None}


def _example_painting() -> dict[str, Any]:
    """The bundled stroke painting as the canvas background, ready to paint over."""
    from importlib import resources

    with resources.as_file(resources.files("sdedit") / "assets" / "landscape-strokes.png") as path:
        img = Image.open(path).convert("RGB").resize((CANVAS, CANVAS), Image.Resampling.NEAREST)
    return {"background": img, "layers": [], "composite": None}


def _hint(t0: Any) -> str:
    try:
        return t0_hint(float(t0))
    except (TypeError, ValueError):
        return ""


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """USER:PASS from the command line, or None."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise InputError("--auth must be USER:PASS with both parts non-empty")
    return user, password


def check_listen(listen: bool, auth: tuple[str, str] | None) -> None:
    """Refuse to serve on the network without a password."""
    if listen and auth is None:
        raise InputError(LISTEN_NEEDS_AUTH)


def guards(limits: Limits) -> list[Any]:
    """The server's HTTP guards, outermost first: request bodies capped, failed logins braked per address."""
    from starlette.middleware import Middleware

    return [Middleware(BodyCap, cap=limits.max_request_bytes,
                       upload_cap=UPLOAD_FILES * limits.max_upload_bytes + limits.max_request_bytes),
            Middleware(LoginBrake)]


def limit_decoding(limits: Limits) -> None:
    """Make Pillow refuse, from the header and before decoding, any image over the upload limit in this process.

    Gradio decodes uploads itself (the image editor re-encodes them) before a handler sees them, so
    the limit must hold for every decode in the server process, not only for ours.
    """
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: an error, not a warning


def launch(app: Any, *, port: int, listen: bool, auth: tuple[str, str] | None, queue_size: int,
           outdir: Path, block: bool = True, limits: Limits | None = None) -> str:
    """Start the server (loopback unless listen, which needs auth); returns its address."""
    check_listen(listen, auth)
    limits = limits or Limits()
    limit_decoding(limits)
    app.queue(max_size=queue_size, default_concurrency_limit=1)
    host = "0.0.0.0" if listen else "127.0.0.1"
    try:
        app.launch(server_name=host, server_port=port, auth=auth, prevent_thread_lock=True, quiet=True,
                   show_error=False, max_file_size=limits.max_upload_bytes, allowed_paths=[str(outdir)],
                   ssr_mode=False, footer_links=[], mcp_server=False, app_kwargs={"middleware": guards(limits)})
    except OSError as e:
        raise InputError(f"cannot serve on {host}:{port} ({e}); is another app using it? pick one with --port") \
            from None
    address = f"http://{'127.0.0.1' if not listen else host}:{app.server_port}/"
    print(f"sdedit ui: running on {address} (Ctrl-C to stop)", flush=True)
    if block:
        app.block_thread()
    return address
