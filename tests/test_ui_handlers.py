"""The web UI's handlers without a browser: validation, canvas reading, masks, runs, cancellation."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
from PIL import Image

from sdedit.api import iter_edits
from sdedit.errors import InputError
from sdedit.images import read_settings
from sdedit.settings import default_steps
from sdedit.frontends.ui_handlers import Cancelled, Limits, Progress, Result, derive_mask, guide_and_mask, read_canvas, \
    run_steps, validate

from .conftest import DATA, gaussian_model

MODELS = ["landscapes", "tiny"]
GOOD = dict(model="landscapes", t0=0.5, sampler="ddpm", steps=0, repeats=1, samples=2, seed=7)


def test_validate_accepts_and_fills_default_steps():
    name, req = validate(MODELS, Limits(), **GOOD)
    assert (name, req.t0, req.num_samples, req.seed) == ("landscapes", 0.5, 2, 7)
    assert req.steps == default_steps("ddpm", 0.5)
    assert validate(MODELS, Limits(), **{**GOOD, "steps": 12.0, "t0": "0.3"})[1].steps == 12


@pytest.mark.parametrize("field, value", [
    ("model", "/etc/passwd"), ("model", "https://example.org/x.ckpt"), ("model", None), ("sampler", "lms"),
    ("t0", 0), ("t0", 1.5), ("t0", "nan"), ("t0", "abc"), ("t0", None), ("steps", -1), ("steps", 1001),
    ("steps", 2.5), ("repeats", 0), ("repeats", 6), ("samples", 9), ("samples", True), ("seed", -1),
    ("seed", 2**31), ("seed", "1e400"), ("seed", [1]), ("auto_t0", "true"), ("auto_t0", "false"), ("auto_t0", [True]),
    ("auto_t0", 1), ("auto_t0", {"value": True}), ("model", "x" * 100_000), ("t0", "y\n" * 100_000),
    ("sampler", ["ddpm"] * 10_000), ("prompt", "x" * 1001), ("negative_prompt", "x" * 1001), ("prompt", 3),
])
def test_validate_rejects_what_a_page_could_send(field, value):
    with pytest.raises(InputError) as e:
        validate(MODELS, Limits(), **{**GOOD, field: value})
    assert "\n" not in str(e.value) and len(str(e.value)) < 400  # a page's value is quoted, bounded


@pytest.mark.parametrize("auto_t0, t0", [(True, "auto"), (False, 0.5), (None, 0.5)])
def test_the_auto_t0_checkbox_overrides_the_slider_only_when_ticked(auto_t0, t0):
    assert validate(MODELS, Limits(), **{**GOOD, "auto_t0": auto_t0})[1].t0 == t0


def test_derive_mask_grows_then_feathers_outward_only():
    covered = np.zeros((21, 21), bool)
    covered[10, 10] = True
    grown = np.asarray(derive_mask(covered, grow=2, feather=0))
    assert (grown[8:13, 8:13] == 255).all() and grown.sum() == 25 * 255
    soft = np.asarray(derive_mask(covered, grow=2, feather=2))
    assert (soft[8:13, 8:13] == 255).all()  # the grown region is still fully edited
    ring = soft[6, 10]
    assert 0 < ring < 255 and soft[0, 0] == 0  # a soft edge outside it, nothing far away


def photo_and_strokes(size=(48, 40)):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    strokes = Image.new("RGBA", size, (0, 0, 0, 0))
    strokes.paste((20, 120, 40, 255), (30, 5, 42, 20))
    return photo, strokes


def test_photo_guide_is_the_photo_with_strokes_and_mask_is_derived_from_them():
    photo, strokes = photo_and_strokes()
    canvas = read_canvas({"background": photo, "layers": [strokes], "composite": photo}, Limits())
    guide, mask = guide_and_mask(canvas, photo=True, grow=1, feather=0, limits=Limits())
    g, m, p = np.asarray(guide), np.asarray(mask), np.asarray(photo)
    assert (g[5:20, 30:42] == (20, 120, 40)).all()
    assert (m[4:21, 29:43] == 255).all() and m.sum() == 17 * 14 * 255
    assert (g[m == 0] == p[m == 0]).all()


def test_a_painted_mask_layer_wins_over_the_derived_mask():
    photo, strokes = photo_and_strokes()
    mask_layer = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    mask_layer.paste((255, 255, 255, 255), (0, 0, 10, 10))
    canvas = read_canvas({"background": photo, "layers": [strokes, mask_layer], "composite": photo}, Limits())
    _, mask = guide_and_mask(canvas, photo=True, grow=8, feather=0, limits=Limits())
    m = np.asarray(mask)
    assert (m[:10, :10] == 255).all() and (m[5:20, 30:42] == 255).all()  # painted region plus the strokes
    assert m.sum() == (100 + 15 * 12) * 255  # no growing of a hand-painted mask


@pytest.mark.parametrize("value, photo, message", [
    (None, False, "canvas is empty"),
    ({"background": None, "layers": [], "composite": None}, False, "canvas is empty"),
    ({"background": None, "layers": [], "composite": Image.new("RGB", (8, 8))}, True, "upload a photo"),
    ({"background": Image.new("RGB", (8, 8)), "layers": [Image.new("RGBA", (8, 8))],
      "composite": Image.new("RGB", (8, 8))}, True, "paint some strokes"),
    ({"background": Image.new("RGB", (200, 200)), "layers": [], "composite": Image.new("RGB", (200, 200))},
     True, "pixels; the limit"),
])
def test_bad_canvases_are_one_line_errors(value, photo, message):
    limits = Limits(max_pixels=10_000)
    with pytest.raises(InputError, match=message):
        guide_and_mask(read_canvas(value, limits), photo=photo, grow=0, feather=0, limits=limits)


def test_uploaded_files_are_checked_before_decoding(tmp_path):
    from .helpers import bomb_png

    with pytest.raises(InputError, match="pixels"):
        read_canvas({"background": str(bomb_png(tmp_path / "b.png", 5000, 5000)), "layers": [],
                     "composite": str(bomb_png(tmp_path / "c.png", 5000, 5000))}, Limits())


def test_photo_run_edits_only_where_painted_at_full_size():
    photo, strokes = photo_and_strokes()
    canvas = read_canvas({"background": photo, "layers": [strokes], "composite": photo}, Limits())
    guide, mask = guide_and_mask(canvas, photo=True, grow=2, feather=2, limits=Limits())
    _, req = validate(["g"], Limits(), model="g", t0=0.6, sampler="ddpm", steps=10, repeats=1, samples=2, seed=3)
    events = list(run_steps(gaussian_model(), req, guide, mask, fit="stretch", original_size=True,
                            preview_every=0.0))
    progress = [e for e in events if isinstance(e, Progress)]
    assert [round(p.fraction, 6) for p in progress] == [round((i + 1) / 10, 6) for i in range(10)]
    assert all(p.preview is not None and p.preview.size == (32, 32) for p in progress)
    result = events[-1]
    assert isinstance(result, Result) and len(result.images) == 2
    keep = np.asarray(mask) == 0
    for j, (img, text) in enumerate(result.images):
        out = np.asarray(img)
        assert img.size == photo.size
        assert (out[keep] == np.asarray(photo)[keep]).all()  # kept pixels bit for bit, at the photo's size
        assert np.abs(out[5:20, 30:42].astype(int) - (20, 120, 40)).mean() > 5  # the painted region was edited
        assert text.startswith(f"seed {3 + j} | t0 0.6 | ddpm 10 steps") and "L2 to guide" in text
        assert json.loads(img.info["sdedit"])["seed"] == 3 + j


def test_closing_the_run_cancels_sampling_and_ends_the_worker():
    seen: list[BaseException] = []

    def recording_edit(*args, **kwargs):
        try:
            yield from iter_edits(*args, **kwargs)
        except BaseException as e:
            seen.append(e)
            raise

    _, req = validate(["g"], Limits(), model="g", t0=1.0, sampler="ddpm", steps=1000, repeats=5, samples=8, seed=0)
    run = run_steps(gaussian_model(resolution=64), req, Image.new("RGB", (64, 64)), None, preview_every=0.0,
                    edit_fn=recording_edit)
    first = next(run)
    assert isinstance(first, Progress) and first.fraction < 0.01
    run.close()
    assert len(seen) == 1 and isinstance(seen[0], Cancelled)
    assert not [t for t in threading.enumerate() if t.name == "sdedit-ui-run"]


def test_errors_inside_a_run_reach_the_caller():
    def broken_edit(*args, **kwargs):
        raise InputError("broken on purpose")

    _, req = validate(["g"], Limits(), model="g", t0=0.5, sampler="ddpm", steps=5, repeats=1, samples=1, seed=0)
    with pytest.raises(InputError, match="broken on purpose"):
        list(run_steps(gaussian_model(), req, Image.new("RGB", (32, 32)), None, edit_fn=broken_edit))


def test_gradio_handler_writes_pngs_with_settings_and_turns_errors_into_messages(tmp_path):
    import gradio as gr

    from sdedit.frontends.ui import ModelPool, make_handler

    pool = ModelPool({"tiny": str(DATA / "tiny.ckpt")}, device="cpu", config=str(DATA / "tiny.yml"))
    handler = make_handler(pool, Limits(), tmp_path, photo=False)
    painting = Image.new("RGB", (40, 40), (90, 140, 200))
    editor = {"background": painting, "layers": [], "composite": painting}
    outputs = list(handler(editor, "tiny", 0.4, "ddim", 3, 1, 2, 5, 0, 0, progress=lambda *a, **k: None))
    gallery, _ = outputs[-1]
    assert len(gallery) == 2
    for j, (path, text) in enumerate(gallery):
        assert path.startswith(str(tmp_path)) and read_settings(path)["seed"] == 5 + j
        assert text.startswith(f"seed {5 + j} | t0 0.4 | ddim 3 steps")
    with pytest.raises(gr.Error, match="unknown model"):
        list(handler(editor, "/etc/passwd", 0.4, "ddim", 3, 1, 2, 5, 0, 0, progress=lambda *a, **k: None))


def test_t0_auto_from_the_page_and_a_translucent_mask_brush_is_a_strength_map():
    from sdedit.frontends.ui_handlers import Canvas, mask_strength

    assert validate(MODELS, Limits(), **{**GOOD, "t0": "auto"})[1].t0 == "auto"
    photo, strokes = photo_and_strokes()
    half = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    half.paste((255, 0, 255, 128), (2, 2, 20, 20))  # the 0.5-opacity brush
    canvas = Canvas(photo, strokes, half, photo)
    level = np.asarray(mask_strength(canvas))
    assert level[10, 10] == 128 and level[0, 0] == 0 and level[10, 35] == 255  # half t0; kept; strokes at full t0
    opaque = half.copy()
    opaque.paste((255, 0, 255, 255), (2, 2, 20, 20))
    assert mask_strength(Canvas(photo, strokes, opaque, photo)) is None  # an opaque mask stays a binary mask
    assert mask_strength(Canvas(photo, strokes, None, photo)) is None
    # a run with the map: pixels at 0 are the photo's own
    _, req = validate(MODELS, Limits(), **{**GOOD, "samples": 1})
    events = list(run_steps(gaussian_model(), req, photo, None, fit="stretch", original_size=True,
                            strength_map=mask_strength(canvas)))
    out = np.asarray(events[-1].images[0][0])
    keep = level == 0
    assert (out[keep] == np.asarray(photo)[keep]).all() and not (out[~keep] == np.asarray(photo)[~keep]).all()


def _paint(handler, model, **kw):
    """Run one tab's handler on a flat 40 px painting (ddim, 2 steps, 1 sample, seed 5); the gallery."""
    painting = Image.new("RGB", (40, 40), (90, 140, 200))
    editor = {"background": painting, "layers": [], "composite": painting}
    outputs = list(handler(editor, model, 0.5, "ddim", 2, 1, 1, 5, 0, 0, progress=lambda *a, **k: None, **kw))
    return outputs[-1][0]


def _guidance_slider(app):
    return next(c["props"] for c in app.get_config_file()["components"] if c["props"].get("elem_id") == "guidance")


@pytest.mark.parametrize("embeds", [False, True])
def test_the_page_sends_guidance_only_to_a_model_it_acts_on(tmp_path, embeds):
    """FLUX.1 schnell-like (no guidance embedding) and the unconditional pixel model: the slider's value is not
    sent (nor recorded) and the slider is hidden; FLUX.1 dev-like: it acts and is recorded."""
    from sdedit.frontends.ui import ModelPool, build_app, make_handler

    from .tiny_sd import make_tiny_flux

    make_tiny_flux(tmp_path / "flux", guidance_embeds=embeds)
    pool = ModelPool({"flux": str(tmp_path / "flux"), "tiny": str(DATA / "tiny.ckpt")}, device="cpu",
                     config=str(DATA / "tiny.yml"))
    handler = make_handler(pool, Limits(), tmp_path / "out", photo=False)
    (path, _), = _paint(handler, "flux", prompt="a barn", guidance=9.0)
    meta = read_settings(path)
    assert meta["prompt"] == "a barn" and meta.get("guidance") == (9.0 if embeds else None)
    assert pool.takes_guidance("flux") is embeds
    assert _guidance_slider(build_app(pool, outdir=tmp_path, default_model="flux"))["visible"] is embeds
    (path, _), = _paint(handler, "tiny", guidance=9.0)
    assert "guidance" not in read_settings(path) and not pool.takes_guidance("tiny")
    assert _guidance_slider(build_app(pool, outdir=tmp_path, default_model="tiny"))["visible"] is False


def _truncated_png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()[:-600]


@pytest.mark.parametrize("kind, message", [("bomb", "not a readable image|over the limit"),
                                           ("truncated", "corrupt or truncated image")])
def test_a_bomb_or_truncated_upload_is_refused_in_one_line_before_gradio_decodes_it(tmp_path, kind, message):
    """As a file (gradio_client's uploads) and as the bytes the browser's editor sends (its blobs)."""
    import gradio as gr
    from gradio.components.image_editor import EditorData, EditorDataBlobs
    from gradio.data_classes import FileData

    from sdedit.frontends.ui import checked_editor

    from .helpers import bomb_png

    path = bomb_png(tmp_path / "up.png", 13000, 13000) if kind == "bomb" else tmp_path / "up.png"
    if kind == "truncated":
        path.write_bytes(_truncated_png())
    editor = checked_editor(Limits(), type="filepath")
    as_file = EditorData(background=FileData(path=str(path)), layers=[], composite=FileData(path=str(path)))
    editor.blob_storage["run1"] = EditorDataBlobs(background=path.read_bytes(), layers=[], composite=None)
    for payload in (as_file, EditorData(id="run1")):
        with pytest.raises(gr.Error) as e:
            editor.preprocess(payload)
        text = str(e.value.message)
        assert re.search(message, text) and "\n" not in text and str(tmp_path) not in text, text


def test_pending_editor_images_are_held_within_a_budget(monkeypatch):
    from gradio.components.image_editor import AcceptBlobs

    from sdedit.frontends import ui

    monkeypatch.setattr(ui, "PENDING_BLOB_BYTES", 250)
    editor = ui.checked_editor(Limits(), type="filepath")
    for run in "abcd":
        editor.accept_blobs(AcceptBlobs(data={"type": "background", "index": None, "id": run, "file": b""},
                                        files=[("background.png", b"x" * 100)]))
    assert list(editor.blob_storage) == ["c", "d"]  # the oldest runs' images went first


@pytest.mark.parametrize("field, value", [
    ("scale", float("nan")), ("scale", "nan"), ("scale", -1), ("scale", 2.5), ("scale", "strong"), ("scale", True),
    ("scale", [1.0]), ("source", "webcam"), ("source", 1), ("preprocess", "sobel"), ("preprocess", ["canny"]),
    ("preprocess", "x" * 100_000), ("source", "y\n" * 100_000),
])
def test_validate_control_rejects_what_a_page_could_send(field, value):
    from sdedit.frontends.ui_handlers import validate_control

    good = dict(scale=0.7, source="painting", image=None, preprocess="canny")
    assert validate_control(Limits(), **good, active=True).scale == 0.7
    for active in (True, False):  # a hidden panel's values are checked too, then ignored
        with pytest.raises(InputError) as e:
            validate_control(Limits(), **{**good, field: value}, active=active)
        assert "\n" not in str(e.value) and len(str(e.value)) < 400


@pytest.fixture(scope="module")
def sd_cn(tmp_path_factory):
    from .tiny_sd import make_tiny_controlnet, make_tiny_sd

    folder = tmp_path_factory.mktemp("ui-sd-cn")
    pipe = make_tiny_sd(folder / "sd")
    make_tiny_controlnet(folder / "cn", pipe.unet)
    return folder / "sd", folder / "cn"


def _control_pool(sd_cn, scale="1"):
    from sdedit.frontends.ui import ModelPool

    sd, cn = sd_cn
    return ModelPool({"landscapes": "landscapes", "sd": str(sd)}, device="cpu",
                     controlnets={"sd": [f"{cn}:{scale}"]})


def _control_panel(app):
    return next(c["props"] for c in app.get_config_file()["components"] if c["props"].get("elem_id") == "control")


def _scale_slider(app):
    return next(c["props"] for c in app.get_config_file()["components"]
                if c["props"].get("elem_id") == "control-scale")


def test_the_control_panel_shows_only_for_a_model_given_a_controlnet(sd_cn, tmp_path):
    from sdedit.frontends.ui import ModelPool, build_app

    pool = _control_pool(sd_cn, "0.6")
    assert _control_panel(build_app(pool, outdir=tmp_path, default_model="landscapes"))["visible"] is False
    app = build_app(pool, outdir=tmp_path, default_model="sd")
    assert _control_panel(app)["visible"] is True
    assert _scale_slider(app)["value"] == 0.6 and _scale_slider(app)["maximum"] == 2.0
    assert ModelPool({"sd": str(sd_cn[0])}).control_scale("sd") is None  # the same model without one: no panel
    with pytest.raises(InputError, match="one ControlNet per model"):
        ModelPool({"sd": str(sd_cn[0])}, controlnets={"sd": [str(sd_cn[1])] * 2})
    with pytest.raises(InputError, match="from 0 to 2"):
        ModelPool({"sd": str(sd_cn[0])}, controlnets={"sd": [f"{sd_cn[1]}:3"]})


def _pixels(gallery):
    (path, _), = gallery
    return np.asarray(Image.open(path)).astype(int), read_settings(path)


def _structured(size=64):
    a = np.zeros((size, size, 3), np.uint8)
    a[:, : size // 2] = (250, 240, 30)
    a[size // 3:, size // 4: 3 * size // 4] = (20, 30, 200)
    return Image.fromarray(a)


def test_control_scale_zero_from_the_page_is_the_run_without_a_controlnet_bit_for_bit(sd_cn, tmp_path):
    from sdedit.frontends.ui import ModelPool, make_handler

    pool = _control_pool(sd_cn)
    handler = make_handler(pool, Limits(), tmp_path, photo=False)
    plain = make_handler(ModelPool({"sd": str(sd_cn[0])}, device="cpu"), Limits(), tmp_path, photo=False)
    without, meta = _pixels(_paint(plain, "sd", prompt="a barn"))
    zero, zero_meta = _pixels(_paint(handler, "sd", prompt="a barn", control_scale=0.0))
    one, one_meta = _pixels(_paint(handler, "sd", prompt="a barn", control_scale=1.0, control_preprocess="none"))
    assert np.array_equal(zero, without) and "controlnets" not in meta
    assert np.abs(one - without).max() > 0  # the ControlNet acts at scale 1
    assert zero_meta["controlnets"] == [f"{sd_cn[1]}:0"] and one_meta["controlnets"] == [f"{sd_cn[1]}:1"]
    assert one_meta["control_images"] == ["painting"] and one_meta["control_preprocess"] == "none"
    assert pool.get("sd").controls[0].spec.scale == 1.0  # a run's scale never reaches the cached model
    sd, cn = sd_cn
    late = ModelPool({"sd": str(sd)}, device="cpu", controlnets={"sd": [str(cn)]}, control_window=(0.3, 0.1))
    assert (late.get("sd").controls[0].start, late.get("sd").controls[0].end) == (0.3, 0.1)


def test_an_uploaded_control_image_steers_instead_of_the_painting(sd_cn, tmp_path):
    from sdedit.frontends.ui import make_handler

    _structured().save(tmp_path / "edges.png")
    handler = make_handler(_control_pool(sd_cn), Limits(), tmp_path / "out", photo=False)
    painting, _ = _pixels(_paint(handler, "sd", prompt="a barn", control_source="painting",
                                 control_image=str(tmp_path / "edges.png")))  # chosen: the painting; upload unused
    default, _ = _pixels(_paint(handler, "sd", prompt="a barn"))
    uploaded, meta = _pixels(_paint(handler, "sd", prompt="a barn", control_source="image",
                                    control_image=str(tmp_path / "edges.png")))
    assert np.array_equal(painting, default)
    assert np.abs(uploaded - painting).max() > 0
    assert meta["control_images"] == ["image"]  # no server path in the PNG
    canny, meta = _pixels(_paint(handler, "sd", prompt="a barn", control_source="image",
                                 control_image=str(tmp_path / "edges.png"), control_preprocess="canny"))
    assert meta["control_preprocess"] == "canny" and not np.array_equal(canny, uploaded)


@pytest.mark.parametrize("model", ["sd", "landscapes"])
@pytest.mark.parametrize("field, value, message", [
    ("control_scale", float("nan"), "finite"), ("control_scale", -1, "from 0 to 2"),
    ("control_scale", "strong", "must be a number"), ("control_preprocess", "sobel", "control preprocess"),
    ("control_source", "webcam", "control image source"),
])
def test_bad_control_values_from_a_page_are_one_line_page_errors(sd_cn, tmp_path, model, field, value, message):
    """Refused before any model loads or runs, whether or not the panel is shown for the model."""
    import gradio as gr

    from sdedit.frontends.ui import make_handler

    pool = _control_pool(sd_cn)
    with pytest.raises(gr.Error) as e:
        _paint(make_handler(pool, Limits(), tmp_path, photo=False), model, **{field: value})
    assert re.search(message, str(e.value.message)) and "\n" not in str(e.value.message)
    assert not pool._loaded


def test_the_hidden_panel_is_ignored_for_a_model_without_a_controlnet_and_an_upload_is_needed(sd_cn, tmp_path):
    import gradio as gr

    from sdedit.frontends.ui import make_handler

    pool = _control_pool(sd_cn)
    handler = make_handler(pool, Limits(), tmp_path, photo=False)
    (path, _), = _paint(handler, "landscapes", control_scale=1.5, control_preprocess="canny", control_source="image")
    assert "controlnets" not in read_settings(path)
    with pytest.raises(gr.Error, match="upload a control image first"):
        _paint(handler, "sd", prompt="a barn", control_source="image")


@pytest.mark.parametrize("kind, message", [("bomb", "not a readable image|over the limit"),
                                           ("truncated", "corrupt or truncated image")])
def test_a_bad_control_image_upload_is_refused_in_one_line_before_gradio_decodes_it(tmp_path, kind, message):
    import gradio as gr
    from gradio.data_classes import ImageData

    from sdedit.frontends.ui import checked_image

    from .helpers import bomb_png

    path = bomb_png(tmp_path / "up.png", 13000, 13000) if kind == "bomb" else tmp_path / "up.png"
    if kind == "truncated":
        path.write_bytes(_truncated_png())
    upload = checked_image(Limits(), type="filepath", format="png")
    with pytest.raises(gr.Error) as e:
        upload.preprocess(ImageData(path=str(path)))
    text = str(e.value.message)
    assert re.search(message, text) and "\n" not in text and str(tmp_path) not in text, text
    _structured().save(tmp_path / "good.png")
    assert Image.open(upload.preprocess(ImageData(path=str(tmp_path / "good.png")))).size == (64, 64)


@pytest.fixture(scope="module")
def landscapes_pool():
    from sdedit.frontends.ui import ModelPool

    return ModelPool({"landscapes": "landscapes"}, device="cpu")


def _outpaint(handler, image, sides=(0, 16, 0, 8), fill="edge", progress=lambda *a, **k: None, **kw):
    """Run the Outpaint tab's handler (ddim, 3 steps, 1 sample, seed 5, the seam's t0 0.4); the gallery."""
    outputs = list(handler(image, *sides, fill, "landscapes", 0.4, "ddim", 3, 1, 1, 5, 0, 0, progress=progress, **kw))
    return outputs[-1][0]


def test_the_outpaint_tab_grows_the_canvas_and_keeps_the_original_pixels(landscapes_pool, tmp_path):
    from sdedit.frontends.ui import make_outpaint_handler

    image = _structured(32)
    image.save(tmp_path / "small.png")
    handler = make_outpaint_handler(landscapes_pool, Limits(), tmp_path / "out")
    fractions: list[float] = []
    out, meta = _pixels(_outpaint(handler, str(tmp_path / "small.png"), fill="blur",
                                  progress=lambda f, desc: fractions.append(f)))
    assert fractions[-1] == 1.0 and max(fractions) == 1.0  # the strength map's extra steps are counted
    assert out.shape == (40, 48, 3)
    assert np.array_equal(out[:32, :32], np.asarray(image))  # bit for bit
    assert meta["t0"] == 1.0 and meta["steps"] == 3 and meta["tile"] == 64
    assert meta["outpaint"] == {"left": 0, "right": 16, "top": 0, "bottom": 8, "fill": "blur", "band": 16, "t0": 0.4,
                                "input_size": [32, 32]}


@pytest.mark.parametrize("sides, fill, kw, message", [
    ((-1, 16, 0, 0), "edge", {}, "left \\(px\\) must be a whole number from 0 to 1024"),
    ((0, 2000, 0, 0), "edge", {}, "right \\(px\\) must be a whole number from 0 to 1024"),
    ((0, 0, 2.5, 0), "edge", {}, "top \\(px\\) must be a whole number"),
    ((0, 0, 0, "abc"), "edge", {}, "bottom \\(px\\) must be a number"),
    ((0, 0, 0, float("nan")), "edge", {}, "bottom \\(px\\) must be finite"),
    ((0, 0, 0, 0), "edge", {}, "at least one of left, right, top, bottom"),
    ((0, 16, 0, 0), "sobel", {}, "fill must be one of edge, blur, noise, color"),
    ((0, 16, 0, 0), ["edge"] * 10_000, {}, "fill must be one of"),
    ((0, 16, 0, 0), "edge", {"auto_t0": True}, "untick 'auto t0'"),
    ((0, 16, 0, 0), "edge", {"color_match": "yes"}, "colour match must be a checkbox value"),
])
def test_bad_outpaint_values_are_one_line_page_errors_before_the_model_loads(tmp_path, sides, fill, kw, message):
    import gradio as gr

    from sdedit.frontends.ui import ModelPool, make_outpaint_handler

    pool = ModelPool({"landscapes": "landscapes"}, device="cpu")
    with pytest.raises(gr.Error) as e:
        _outpaint(make_outpaint_handler(pool, Limits(), tmp_path), _structured(32), sides, fill, **kw)
    assert re.search(message, str(e.value.message)) and "\n" not in str(e.value.message), e.value.message
    assert not pool._loaded


def test_the_outpainted_canvas_is_held_within_the_servers_limit_and_an_image_is_needed(tmp_path):
    import gradio as gr

    from sdedit.frontends.ui import ModelPool, make_outpaint_handler

    pool = ModelPool({"landscapes": "landscapes"}, device="cpu")
    handler = make_outpaint_handler(pool, Limits(max_outpaint_pixels=40 * 40), tmp_path)
    with pytest.raises(gr.Error, match="would be 48x40 pixels; this server's limit is 1,600"):
        _outpaint(handler, _structured(32))
    with pytest.raises(gr.Error, match="upload an image to outpaint first"):
        _outpaint(handler, None)
    assert not pool._loaded


def test_the_colour_match_checkbox_reaches_the_run_and_its_metadata(landscapes_pool, tmp_path):
    from sdedit.frontends.ui import make_handler

    handler = make_handler(landscapes_pool, Limits(), tmp_path, photo=False)
    (path, _), = _paint(handler, "landscapes", color_match=True)
    assert json.loads(Image.open(path).info["sdedit"])["color_match"] is True
    (path, _), = _paint(handler, "landscapes", color_match=False)
    assert "color_match" not in read_settings(path)
    with pytest.raises(InputError, match="colour match must be a checkbox value"):
        validate(MODELS, Limits(), **GOOD, color_match="true")


def _photo_editor(size):
    photo, strokes = photo_and_strokes(size)
    return photo, {"background": photo, "layers": [strokes], "composite": photo}


def test_a_tiled_photo_edit_works_at_the_photos_size_within_the_limit(landscapes_pool, tmp_path):
    import gradio as gr

    from sdedit.frontends.ui import make_handler

    photo, editor = _photo_editor((112, 72))
    handler = make_handler(landscapes_pool, Limits(), tmp_path, photo=True)
    outputs = list(handler(editor, "landscapes", 0.5, "ddim", 3, 1, 1, 5, 0, 0, tiles=True,
                           progress=lambda *a, **k: None))
    (path, _), = outputs[-1][0]
    out = Image.open(path)
    assert out.size == photo.size and read_settings(path)["tile"] == 64
    keep = np.ones((72, 112), bool)
    keep[5:20, 30:42] = False  # the strokes' box (grow and feather 0)
    assert (np.asarray(out)[keep] == np.asarray(photo)[keep]).all()
    assert np.abs(np.asarray(out)[~keep].astype(int) - (20, 120, 40)).mean() > 5  # edited there
    small = make_handler(landscapes_pool, Limits(max_tiled_pixels=112 * 72 - 1), tmp_path, photo=True)
    with pytest.raises(gr.Error) as e:
        list(small(editor, "landscapes", 0.5, "ddim", 3, 1, 1, 5, 0, 0, tiles=True, progress=lambda *a, **k: None))
    assert "8,064 pixels" in e.value.message and "untick 'tiles'" in e.value.message
    assert "\n" not in e.value.message


def test_the_page_has_the_outpaint_tab_and_the_new_checkboxes(landscapes_pool, tmp_path):
    from sdedit.frontends.ui import build_app

    app = build_app(landscapes_pool, outdir=tmp_path, limits=Limits(max_extension=256))
    props = {c["props"].get("elem_id"): c["props"] for c in app.get_config_file()["components"]}
    assert all(props[f"outpaint-{side}"]["maximum"] == 256 for side in ("left", "right", "top", "bottom"))
    assert props["outpaint-fill"]["value"] == "edge"
    assert [c[1] for c in props["outpaint-fill"]["choices"]] == ["edge", "blur", "noise", "color"]
    assert props["color-match"]["value"] is False and props["tiles"]["value"] is False


FLOW = dict(GOOD, model="tiny", method="flowedit", source_prompt="a red barn", prompt="a blue lake")


def test_flowedit_from_the_page_is_checked_and_the_sampler_does_not_act():
    from sdedit.settings import DEFAULT_SAMPLER

    _, req = validate(MODELS, Limits(), **FLOW, flow_models={"tiny"})
    assert (req.method, req.source_prompt, req.sampler) == ("flowedit", "a red barn", DEFAULT_SAMPLER)
    assert req.steps == default_steps(DEFAULT_SAMPLER, 0.5, "flowedit")
    assert req.metadata(text_conditioned=True)["sampler"] == "flowedit"
    _, plain = validate(MODELS, Limits(), **{**FLOW, "method": "sdedit"}, flow_models={"tiny"})
    assert (plain.method, plain.source_prompt, plain.sampler) == ("sdedit", "", "ddpm")  # the hidden box: ignored
    assert validate(MODELS, Limits(), **{**FLOW, "method": None}, flow_models={"tiny"})[1].method == "sdedit"


@pytest.mark.parametrize("changes, message", [
    ({"model": "landscapes"}, "FlowEdit needs a rectified-flow model .*; landscapes is not one: choose SDEdit"),
    ({"auto_t0": True}, "t0 auto is SDEdit's: untick 'auto t0' for FlowEdit"),
    ({"t0": "auto"}, "t0 auto is SDEdit's"),
    ({"source_prompt": "x" * 1001}, "source prompt must be text of at most 1000 characters"),
    ({"source_prompt": 3}, "source prompt must be text"),
    ({"method": "sdedit", "source_prompt": "x" * 1001}, "source prompt must be text of at most 1000"),
    ({"method": "inversion"}, "method must be one of sdedit, flowedit"),
    ({"method": ["flowedit"] * 10_000}, "method must be one of"),
    ({"sampler": "lms"}, "unknown sampler 'lms'"),
])
def test_bad_flowedit_values_from_a_page_are_one_line_errors(changes, message):
    with pytest.raises(InputError) as e:
        validate(MODELS, Limits(), **{**FLOW, **changes}, flow_models={"tiny"})
    assert re.search(message, str(e.value)) and "\n" not in str(e.value) and len(str(e.value)) < 400, e.value


@pytest.fixture(scope="module")
def flow_pool(tmp_path_factory):
    from sdedit.frontends.ui import ModelPool

    from .tiny_sd import make_tiny_sd3

    folder = tmp_path_factory.mktemp("ui-sd3")
    make_tiny_sd3(folder / "sd3")
    return ModelPool({"landscapes": "landscapes", "sd3": str(folder / "sd3")}, device="cpu")


def test_flowedit_from_the_page_runs_on_a_flow_model_and_its_metadata_says_so(flow_pool, tmp_path):
    from sdedit.frontends.ui import make_handler

    assert flow_pool.takes_flowedit("sd3") and not flow_pool.takes_flowedit("landscapes")  # from the files
    handler = make_handler(flow_pool, Limits(), tmp_path, photo=False)
    gallery = _paint(handler, "sd3", prompt="a red barn", method="flowedit", source_prompt="a red barn")
    (path, text), = gallery
    out, meta = _pixels(gallery)
    assert meta["method"] == "flowedit" and meta["sampler"] == "flowedit" and meta["source_prompt"] == "a red barn"
    assert meta["steps"] == 2 and text.startswith("seed 5 | t0 0.5 | flowedit 2 steps")
    painting = Image.new("RGB", (40, 40), (90, 140, 200))
    editor = {"background": painting, "layers": [], "composite": painting}
    other = list(handler(editor, "sd3", 0.5, "heun", 2, 1, 1, 5, 0, 0, prompt="a red barn", method="flowedit",
                         source_prompt="a red barn", progress=lambda *a, **k: None))[-1][0]
    assert np.array_equal(_pixels(other)[0], out)  # the sampler dropdown does not act on FlowEdit


def test_flowedit_on_a_model_it_does_not_act_on_or_in_the_outpaint_tab_is_a_one_line_refusal(tmp_path, flow_pool):
    import gradio as gr

    from sdedit.frontends.ui import ModelPool, make_handler, make_outpaint_handler

    pool = ModelPool(dict(flow_pool.sources), device="cpu")
    for handler in (make_handler(pool, Limits(), tmp_path, photo=False),
                    make_handler(pool, Limits(), tmp_path, photo=True)):
        with pytest.raises(gr.Error) as e:
            _paint(handler, "landscapes", method="flowedit", source_prompt="a lake")
        assert "landscapes is not one: choose SDEdit" in e.value.message and "\n" not in e.value.message
    outpaint = make_outpaint_handler(pool, Limits(), tmp_path)
    with pytest.raises(gr.Error) as e:
        list(outpaint(_structured(32), 0, 16, 0, 0, "edge", "sd3", 0.4, "ddim", 3, 1, 1, 5, 0, 0, prompt="a barn",
                      method="flowedit", source_prompt="a barn", progress=lambda *a, **k: None))
    assert "the Outpaint tab runs SDEdit" in e.value.message and "\n" not in e.value.message
    assert not pool._loaded  # refused before any model loads


def _props(app):
    return {c["props"].get("elem_id"): c["props"] for c in app.get_config_file()["components"]}


def test_the_method_radio_shows_for_flow_models_and_the_source_prompt_for_flowedit(flow_pool, tmp_path):
    from sdedit.frontends.ui import build_app, method_controls

    flow = _props(build_app(flow_pool, outdir=tmp_path, default_model="sd3"))
    assert flow["method"]["visible"] is True and flow["method"]["value"] == "sdedit"
    assert flow["source-prompt"]["visible"] is False and flow["source-prompt"]["max_length"] == 1000
    assert _props(build_app(flow_pool, outdir=tmp_path, default_model="landscapes"))["method"]["visible"] is False
    radio, source, sampler = method_controls(flow_pool, "sd3", "flowedit")
    assert (radio["visible"], radio["value"], source["visible"], sampler["interactive"]) == (True, "flowedit", True,
                                                                                             False)
    radio, source, sampler = method_controls(flow_pool, "landscapes", "flowedit")  # back to SDEdit, hidden
    assert (radio["visible"], radio["value"], source["visible"], sampler["interactive"]) == (False, "sdedit", False,
                                                                                             True)
