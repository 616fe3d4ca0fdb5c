"""Text-guided SDEdit on latent models: a tiny Stable Diffusion built offline, diffusers' img2img as reference."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit import edit, load_model
from sdedit.errors import InputError
from sdedit.images import read_settings
from sdedit.settings import RunSettings
from sdedit.families.stable_diffusion import GuidedDenoiser, StableDiffusionModel, TextCondition, latent_mask, snap8
from sdedit.engine.schedules import DiscreteVPSchedule

from .helpers import ddim_on_grid
from .tiny_sd import make_tiny_sd


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd")
    pipe = make_tiny_sd(folder)
    return folder, pipe


def photo(size=(64, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0])[None, :, None] * np.ones((size[1], 1, 3))
    return Image.fromarray((0.7 * base + 0.3 * rng.integers(0, 256, (size[1], size[0], 3))).astype(np.uint8))


class Oracle(torch.nn.Module):
    """A 'UNet' that knows x0 and the noise: returns the exact eps or v of its input (cond and uncond differ)."""

    def __init__(self, x0, noise, schedule, kind, shift=0.0):
        super().__init__()
        self.x0, self.noise, self.schedule, self.kind, self.shift = x0, noise, schedule, kind, shift

    def forward(self, x_vp, t, encoder_hidden_states):
        sigma = self.schedule.sigmas[t.round().long()].float().reshape(-1, 1, 1, 1)
        a = 1 / (1 + sigma**2).sqrt()
        out = a * self.noise - sigma * a * self.x0 if self.kind == "v_prediction" else self.noise
        out = out.expand(x_vp.shape[0], -1, -1, -1)
        # the conditional half (second when guided, all when not) is offset by `shift` per unit of context
        out = out + self.shift * encoder_hidden_states.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        return type("Out", (), {"sample": out})()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_guided_denoiser_recovers_x0_from_exact_eps_or_v(kind):
    schedule = DiscreteVPSchedule(0.00085, 0.012, 1000, "scaled_linear")
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    sigma = schedule.sigmas[400].float().reshape(1)
    cond = TextCondition(torch.zeros(1, 3, 5))
    d = GuidedDenoiser(Oracle(x0, noise, schedule, kind), schedule, kind, cond, None, 1.0)
    assert torch.allclose(d(x0 + sigma * noise, sigma), x0, atol=1e-4)


def test_classifier_free_guidance_extrapolates_from_the_negative_prompt():
    schedule = DiscreteVPSchedule(0.00085, 0.012, 1000, "scaled_linear")
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    sigma = schedule.sigmas[300].float().reshape(1)
    cond, uncond = TextCondition(torch.ones(1, 3, 5)), TextCondition(torch.zeros(1, 3, 5))  # eps_c = eps + 0.1
    w = 4.0
    d = GuidedDenoiser(Oracle(x0, noise, schedule, "epsilon", shift=0.1), schedule, "epsilon", cond, uncond, w)
    # D = x - sigma (eps_u + w (eps_c - eps_u)) = x0 - sigma * w * 0.1
    assert torch.allclose(d(x0 + sigma * noise, sigma), x0 - sigma * w * 0.1, atol=1e-4)


def test_latent_mask_and_sizes():
    m = torch.zeros(1, 1, 16, 24)
    m[..., 3, 9] = 1.0  # one edited pixel makes its whole latent cell edited
    lat = latent_mask(m, (2, 3))
    assert lat.shape == (1, 1, 2, 3) and lat[0, 0, 0, 1] == 1 and lat.sum() == 1
    assert snap8((70, 45)) == (64, 40) and snap8((5, 5)) == (8, 8)


def test_python_edit_with_prompt_unmasked_and_masked(sd_folder):
    folder, _ = sd_folder
    # fp32: bf16 kernels may round a batch of 2 differently from a batch of 1 (the noise is the same either way)
    model = load_model(folder, device="cpu", precision="fp32")
    assert isinstance(model, StableDiffusionModel) and model.resolution == 64
    img = photo((70, 45))  # not multiples of 8: worked at 64x40, returned at 70x45
    outs = edit(model, img, prompt="a red barn", negative_prompt="blurry", guidance=3.0, t0=0.6, steps=4,
                num_samples=2, seed=5, progress=False)
    assert [o.size for o in outs] == [(70, 45)] * 2
    meta = json.loads(outs[1].info["sdedit"])
    assert meta["prompt"] == "a red barn" and meta["guidance"] == 3.0 and meta["seed"] == 6 and meta["size"] == [64, 40]
    again = edit(model, img, prompt="a red barn", negative_prompt="blurry", guidance=3.0, t0=0.6, steps=4,
                 num_samples=1, seed=6, progress=False)
    assert np.array_equal(np.asarray(again[0]), np.asarray(outs[1]))  # seeds do not depend on the batch
    assert not np.array_equal(np.asarray(outs[0]), np.asarray(outs[1]))

    mask = Image.new("L", img.size, 0)
    mask.paste(255, (20, 10, 50, 30))
    masked = edit(model, img, mask=mask, prompt="a red barn", t0=0.8, steps=4, seed=0, progress=False)[0]
    keep = np.asarray(mask) == 0
    assert (np.asarray(masked)[keep] == np.asarray(img)[keep]).all()  # kept pixels exactly the input's
    assert np.abs(np.asarray(masked, float)[~keep] - np.asarray(img, float)[~keep]).mean() > 1


def test_prompt_on_a_pixel_model_is_a_clear_error():
    from .conftest import gaussian_model

    with pytest.raises(InputError, match="not text-conditioned"):
        edit(gaussian_model(), Image.new("RGB", (32, 32)), prompt="a cat", progress=False)


def test_cli_edit_with_prompt_and_mask(sd_folder, tmp_path):
    folder, _ = sd_folder
    img = photo((64, 64))
    img.save(tmp_path / "in.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    mask.save(tmp_path / "mask.png")
    r = subprocess.run([sys.executable, "-m", "sdedit", "edit", str(tmp_path / "in.png"), "--model", str(folder),
                        "--prompt", "snowy mountains", "--mask", str(tmp_path / "mask.png"), "--sampler", "dpm++2m",
                        "--steps", "3", "-n", "2", "--seed", "1", "-q", "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    paths = sorted((tmp_path / "out").glob("*.png"))
    assert len(paths) == 2
    settings = read_settings(paths[0])
    assert settings["prompt"] == "snowy mountains" and settings["masked"] and settings["sampler"] == "dpm++2m"
    out = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert (out[32:, :] == np.asarray(img)[32:, :]).all()


def test_matches_diffusers_img2img_on_its_own_step_grid(sd_folder):
    """Same components, strength, DDIM (eta 0), guidance and generator: our engine gives diffusers' images."""
    folder, pipe = sd_folder
    model = load_model(folder, device="cpu", precision="fp32")
    img = photo((64, 64), seed=3)
    strength, n_steps, w, prompt = 0.6, 10, 3.0, "a red barn"
    ref = pipe(prompt, image=img, strength=strength, num_inference_steps=n_steps, guidance_scale=w,
               negative_prompt="", generator=torch.Generator().manual_seed(0), output_type="np", eta=0.0).images[0]

    # diffusers' grid: `strength` snapped to whole steps of its spacing, ending at alphas_cumprod[0]
    sched = pipe.scheduler
    sched.set_timesteps(n_steps)
    start = n_steps - int(n_steps * strength)
    ts = sched.timesteps[start:].long()
    sigmas = torch.cat([model.schedule.sigmas[ts], model.schedule.sigmas[:1]]).float()

    ours = ddim_on_grid(model, img, sigmas, RunSettings(prompt=prompt, guidance=w))  # posterior draw, then noise
    diff = np.abs(ours - ref).max()
    print(f"SD parity: {diff:.2e}")
    assert diff < 2.5e-5, diff  # measured 2.4e-6 (fp32, torch 2.13, AMD EPYC CPU): float32 rounding only


def test_exact_t0_where_diffusers_snaps_strength(sd_folder):
    """Strength 0.5 with 30 steps starts diffusers at timestep 463 (t = 0.464); we start at t0 = 0.5 exactly."""
    _, pipe = sd_folder
    sched = pipe.scheduler
    sched.set_timesteps(30)
    first = int(sched.timesteps[30 - int(30 * 0.5)])
    assert first == 463
    schedule = DiscreteVPSchedule(0.00085, 0.012, 1000, "scaled_linear")
    assert schedule.sigma(0.5) == pytest.approx(float(schedule.sigmas[499]), rel=1e-6)
    assert float(schedule.sigmas[first]) < 0.9 * schedule.sigma(0.5)


def test_unsupported_folders_are_named(sd_folder, tmp_path):
    import shutil

    folder, _ = sd_folder
    xl = tmp_path / "xl"
    shutil.copytree(folder, xl)
    idx = json.loads((xl / "model_index.json").read_text())
    (xl / "model_index.json").write_text(json.dumps({**idx, "_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(InputError, match="SDXL|XL"):
        load_model(xl, device="cpu")
    inpaint = tmp_path / "inpaint"
    shutil.copytree(folder, inpaint)
    cfg = json.loads((inpaint / "unet" / "config.json").read_text())
    (inpaint / "unet" / "config.json").write_text(json.dumps({**cfg, "in_channels": 8}))  # 4 or 9 (inpainting)
    with pytest.raises(InputError, match="8-channel UNet"):
        load_model(inpaint, device="cpu")


def test_web_ui_offers_a_prompt_for_text_models_and_passes_it(sd_folder, tmp_path):
    from sdedit.frontends.ui import ModelPool, make_handler
    from sdedit.frontends.ui_handlers import Limits

    folder, _ = sd_folder
    pool = ModelPool({"sd": str(folder), "landscapes": "landscapes"}, device="cpu")
    assert pool.text == {"sd"}  # known from the folder, before loading
    handler = make_handler(pool, Limits(), tmp_path, photo=True)
    img = photo((64, 64))
    strokes = Image.new("RGBA", img.size, (0, 0, 0, 0))
    strokes.paste((200, 30, 30, 255), (10, 10, 30, 30))
    editor = {"background": img, "layers": [strokes], "composite": img}
    outs = list(handler(editor, "sd", 0.6, "ddim", 3, 1, 1, 4, 0, 0, "a red barn", "fog", 3.0,
                        progress=lambda *a, **k: None))
    gallery, _ = outs[-1]
    (path, caption), = gallery
    settings = read_settings(path)
    assert (settings["prompt"], settings["negative_prompt"], settings["guidance"]) == ("a red barn", "fog", 3.0)
    out = np.asarray(Image.open(path).convert("RGB"))
    keep = np.ones((64, 64), bool)
    keep[10:30, 10:30] = False
    assert (out[keep] == np.asarray(img)[keep]).all() and caption.startswith("seed 4 | t0 0.6 | ddim 3 steps")


def test_tiled_vae_for_large_images_keeps_size_and_kept_pixels(sd_folder):
    folder, _ = sd_folder
    model = load_model(folder, device="cpu")
    model.tile_vae = True
    img = photo((136, 96))  # larger than the tiny VAE's 64 px tile: encoded and decoded in overlapping tiles
    mask = Image.new("L", img.size, 0)
    mask.paste(255, (40, 20, 100, 70))
    out = edit(model, img, mask=mask, prompt="x", t0=0.5, steps=2, seed=0, progress=False)[0]
    keep = np.asarray(mask) == 0
    assert out.size == img.size and (np.asarray(out)[keep] == np.asarray(img)[keep]).all()
    assert not model.vae.use_tiling  # tiling is decided per VAE call and not left set on the model


def test_a_wide_image_gives_the_same_output_alone_and_beside_a_small_one(sd_folder):
    """Tiling used to be switched by frame() as model state, so the last guide prepared decided it for all."""
    from sdedit.api import iter_edits, prepare_guide
    from sdedit.settings import RunSettings

    folder, _ = sd_folder
    model = load_model(folder, device="cpu")
    wide, small = photo((1100, 64), seed=1), photo((64, 64), seed=2)
    settings = RunSettings(prompt="x", t0=0.5, steps=2, seed=0, precision="fp32")

    def run(images):
        guides = [prepare_guide(model, im, full_size=True) for im in images]  # all prepared before any is decoded
        return [np.asarray(o) for o in iter_edits(model, guides, [5] * len(guides), settings, progress=False)]

    alone = run([wide])[0]
    together = run([wide, small])[0]  # the small one is prepared last
    assert np.array_equal(alone, together)
    model.tile_vae = False
    untiled = run([wide])[0]
    assert not np.array_equal(alone, untiled)  # the wide image really is tiled (> 1024 px)


def test_latent_models_work_within_their_area_unless_asked_and_come_back_at_the_input_size(sd_folder, tmp_path,
                                                                                             capsys):
    """A plain edit of an input over 4x the trained area (64 px here) works at that area, keeping the aspect, and
    comes back at the input's size; full_size works at the input's own size; --fit is refused (it does not act)."""
    from sdedit.frontends.cli import main

    folder, _ = sd_folder
    model = load_model(folder, device="cpu")
    img = photo((256, 192))

    def run(**kw):
        out = edit(model, img, prompt="x", t0=0.5, steps=2, seed=0, progress=False, **kw)[0]
        return out.size, json.loads(out.info["sdedit"])["size"]

    assert run() == ((256, 192), [144, 104])  # 148x111 keeps 4 x 64^2 px; sides multiples of 8
    assert run(full_size=True) == ((256, 192), [256, 192])
    assert run(original_size=False) == ((144, 104), [144, 104])
    from sdedit.api import prepare_guide

    for sliver in ((100000, 1), (1, 30000)):  # the short side is raised to 8: the long one gives way
        w, h = prepare_guide(model, Image.new("RGB", sliver)).frame.size
        assert w * h <= 4 * 64 * 64 and min(w, h) == 8
    with pytest.raises(InputError, match="negative prompt acts through guidance"):
        edit(model, img, prompt="x", negative_prompt="fog", guidance=1.0, steps=2, progress=False)
    assert "fit" not in json.loads(edit(model, photo((64, 48)), prompt="x", steps=2, seed=0,
                                        progress=False)[0].info["sdedit"])  # fit does not act on latent models
    img.save(tmp_path / "in.png")
    assert main(["edit", str(tmp_path / "in.png"), "--model", str(folder), "--prompt", "x", "--fit", "stretch",
                 "-q", "-o", str(tmp_path / "o")]) == 2
    assert "--fit applies to square (pixel) models" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_reduced_precision_runs_the_unet_under_autocast_and_keeps_the_vae_fp32(sd_folder):
    folder, _ = sd_folder
    model = load_model(folder, device="cpu", precision="bf16")  # on a GPU: fp16 or bf16, same path
    img = photo((64, 64))
    low = edit(model, img, prompt="a red barn", t0=0.5, steps=3, seed=0, progress=False)[0]
    full = edit(load_model(folder, device="cpu", precision="fp32"), img, prompt="a red barn", t0=0.5, steps=3, seed=0,
                progress=False)[0]
    assert all(p.dtype == torch.float32 for p in model.vae.parameters())
    assert json.loads(low.info["sdedit"])["precision"] == "bf16"
    diff = np.abs(np.asarray(low, float) - np.asarray(full, float))
    assert 0 < diff.mean() < 8  # autocast changed the arithmetic, not the picture


def test_eval_and_sweep_run_on_a_stable_diffusion_folder(sd_folder, tmp_path):
    """The research commands take any family through the model interface (they used to need a pixel model)."""
    from sdedit.frontends.cli import main

    folder, _ = sd_folder
    assert main(["eval", "--model", str(folder), "--prompt", "a landscape", "--n", "4", "--t0", "0.3", "0.6",
                 "--sampler", "ddim", "--steps", "2", "--features", "random-cnn", "-o", str(tmp_path / "ev")]) == 0
    rows = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert [(r["t0"], r["nfe"]) for r in rows[2:]] == [(0.3, 2), (0.6, 2)]
    assert all(np.isfinite(r["l2_mean"]) and r["l2_mean"] > 0 for r in rows[2:])
    photo((64, 48)).save(tmp_path / "in.png")
    assert main(["sweep", str(tmp_path / "in.png"), "--model", str(folder), "--prompt", "a landscape",
                 "--t0", "0.3", "0.7", "--steps", "2", "-n", "2", "-q", "-o", str(tmp_path / "sw")]) == 0
    grid = Image.open(tmp_path / "sw" / "in-sweep-grid.png")
    assert grid.width > 2 * 128 and (tmp_path / "sw" / "in-sweep-plot.png").is_file()
