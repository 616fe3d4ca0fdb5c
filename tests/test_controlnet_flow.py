"""ControlNets on the flow-matching families (FLUX.1, SD3): tiny random ControlNets made for tiny transformers,
diffusers' FluxControlNetImg2ImgPipeline and StableDiffusion3ControlNetPipeline as references; scale 0, masks, the
window in t, union modes and refusals."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit import edit, load_model
from sdedit.errors import InputError
from sdedit.loading.controlnets import ControlSpec
from sdedit.settings import RunSettings

from .helpers import blocks_picture, ddim_on_grid, decode_as_diffusers, flow_sigmas, random_image as photo
from .tiny_sd import make_tiny_controlnet, make_tiny_flux, make_tiny_flux_controlnet, make_tiny_sd3, \
    make_tiny_sd3_controlnet


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux-cn")
    pipe = make_tiny_flux(folder / "flux")
    make_tiny_flux_controlnet(folder / "cn", pipe.transformer)
    make_tiny_flux_controlnet(folder / "union", pipe.transformer, seed=2, num_mode=3)
    return {"model": folder / "flux", "cn": folder / "cn", "union": folder / "union", "pipe": pipe}


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3-cn")
    pipe = make_tiny_sd3(folder / "sd3")
    for style in ("instantx", "sd35"):
        make_tiny_sd3_controlnet(folder / style, pipe.transformer, style=style)
    return {"model": folder / "sd3", "instantx": folder / "instantx", "sd35": folder / "sd35", "pipe": pipe}


def picture(size=(64, 48), seed=0) -> Image.Image:
    return blocks_picture(size, seed)


def rotated(img: Image.Image) -> Image.Image:
    """Another layout of the same colours (the networks' normalisation makes flat colours barely differ)."""
    return img.transpose(Image.Transpose.ROTATE_180)


def loaded(folder, **kw):
    """load_model on the CPU in fp32; a FLUX model's T5 at the tiny tokenizer's length (16 text tokens, not 512)."""
    model = load_model(folder, device="cpu", precision="fp32", **kw)
    if hasattr(model, "t5_tokens"):
        model.t5_tokens = 16
    return model


def run(model, img, **kw) -> np.ndarray:
    kw = {"t0": 0.6, "steps": 3, "sampler": "ddim", "seed": 3, "prompt": "a barn", "progress": False, **kw}
    return np.asarray(edit(model, img, **kw)[0]).astype(int)


@pytest.mark.parametrize("mode", [None, 1])
def test_flux_matches_diffusers_controlnet_img2img_on_its_own_step_grid(flux, mode):
    """Same components, control image (and union mode), strength, guidance, max_sequence_length and generator: our
    engine gives diffusers' images (control latents drawn from the generator first, as it draws them); another
    control image gives clearly other images."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlNetImg2ImgPipeline

    cn = ControlSpec(str(flux["union"]), 1.0, mode) if mode is not None else str(flux["cn"])
    model = loaded(flux["model"], controlnets=[cn])  # T5 at 16 tokens, as max_sequence_length below
    ref_pipe = FluxControlNetImg2ImgPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(flux["pipe"].scheduler.config), vae=model.vae,
        text_encoder=model.clip[1], tokenizer=model.clip[0], text_encoder_2=model.t5[1], tokenizer_2=model.t5[0],
        transformer=model.transformer, controlnet=model.controls[0].net)
    img, control = photo((64, 48), seed=3), picture(seed=2)
    strength, n, w, prompt = 0.6, 10, 3.5, "a red barn"
    ref = ref_pipe(prompt, image=img, control_image=control, control_mode=mode, strength=strength,
                   num_inference_steps=n, guidance_scale=w, height=48, width=64, max_sequence_length=16,
                   generator=torch.Generator().manual_seed(0), output_type="np",
                   controlnet_conditioning_scale=1.0).images[0]
    sched = ref_pipe.scheduler
    assert sched.begin_index == n - int(n * strength)
    sigmas = flow_sigmas(sched.sigmas[sched.begin_index:])  # its grid, shifted for this image's 12 tokens
    settings = RunSettings(prompt=prompt, guidance=w)
    diff = float(np.abs(ddim_on_grid(model, img, sigmas, settings, [control]) - ref).max())
    apart = float(np.abs(ddim_on_grid(model, img, sigmas, settings, [rotated(control)]) - ref).max())
    print(f"FLUX ControlNet{'' if mode is None else f' (union, mode {mode})'} parity: {diff:.2e}; "
          f"another control image: {apart:.2e}")
    assert diff <= 1e-3 and apart > 50 * max(diff, 1e-6), (diff, apart)


@pytest.mark.parametrize("style,guidance", [("instantx", 1.0), ("sd35", 3.0), ("instantx", 3.0)])
def test_sd3_matches_diffusers_controlnet_pipeline_from_given_latents(sd3, style, guidance):
    """diffusers' SD3 ControlNet pipeline (text-to-image) from given latents on a grid starting below t = 1 is the
    end of an SDEdit run: ours gives its images.  It draws the control latents without a generator (the global
    stream, seeded here as our row's generator) and, under guidance, once per branch (we draw once per row and
    both branches share it): with guidance the VAE's posterior is made (almost) point-like on both sides."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3ControlNetPipeline

    from sdedit.engine.samplers import SAMPLERS
    from sdedit.families.control import control_to_tensor

    model = loaded(sd3["model"], controlnets=[str(sd3[style])])
    if guidance != 1.0:
        with torch.no_grad():  # the encoder's log-variance channels at diffusers' floor (-30): std 3e-7
            model.vae.encoder.conv_out.bias[model.vae.config.latent_channels:] = -30.0
    (tok, enc), (tok_2, enc_2) = model.encoders
    ref_pipe = StableDiffusion3ControlNetPipeline(
        transformer=model.transformer, vae=model.vae, text_encoder=enc, tokenizer=tok, text_encoder_2=enc_2,
        tokenizer_2=tok_2, text_encoder_3=None, tokenizer_3=None, controlnet=model.controls[0].net,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(sd3["pipe"].scheduler.config))
    control, prompt = picture(seed=2), "a red barn"
    x_t = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(7)  # the pipeline's control latents: the global stream
    ref = ref_pipe(prompt, control_image=control, height=48, width=64, num_inference_steps=6, guidance_scale=guidance,
                   latents=x_t, sigmas=list(np.linspace(0.8, 0.1, 6)), output_type="np",
                   controlnet_conditioning_scale=1.0).images[0]
    sigmas = flow_sigmas(ref_pipe.scheduler.sigmas)  # shifted by 3, then 0

    def ours(image: Image.Image) -> np.ndarray:
        cond = model.control_condition([control_to_tensor(image)], [torch.Generator().manual_seed(7)])
        denoiser = functools.partial(model.denoiser(RunSettings(prompt=prompt, guidance=guidance)), condition=cond)
        with torch.inference_mode():
            z = SAMPLERS["ddim"](denoiser, x_t * (1 + sigmas[0]), sigmas)  # x = x_t (1 + sigma) at the start
        return decode_as_diffusers(model, z, sigmas[-1])

    diff = float(np.abs(ours(control) - ref).max())
    apart = float(np.abs(ours(rotated(control)) - ref).max())
    print(f"SD3 ControlNet ({style}, guidance {guidance:g}) parity: {diff:.2e}; another control image: {apart:.2e}")
    assert diff <= 1e-3 and apart > 50 * max(diff, 1e-6), (diff, apart)


@pytest.mark.parametrize("family,cn", [("flux", "cn"), ("sd3", "instantx"), ("sd3", "sd35")])
def test_scale_zero_is_no_controlnet_and_a_controlnet_acts(flux, sd3, family, cn):
    """Scale 0 is the run without the ControlNet bit for bit (its control latents draw nothing from the rows'
    generators); at scale 1 it changes the output; a batch of two gives each sample as alone (per-row draws)."""
    where = {"flux": flux, "sd3": sd3}[family]
    img, control = photo((64, 48), seed=1), picture(seed=2)
    guidance = {"guidance": 3.0}
    plain = run(loaded(where["model"]), img, **guidance)
    zero = run(loaded(where["model"], controlnets=[f"{where[cn]}:0"]), img, control_images=[control], **guidance)
    model = loaded(where["model"], controlnets=[str(where[cn])])
    one = run(model, img, control_images=[control], **guidance)
    assert np.array_equal(zero, plain)
    assert np.abs(one - plain).max() > 10
    assert model.info["controlnets"] == [f"{where[cn]}:1"]
    pair = edit(model, img, t0=0.6, steps=3, sampler="ddim", seed=2, num_samples=2, prompt="a barn",
                control_images=[control], progress=False, **guidance)
    # sample 1 of seed 2 is seed 3's sample 0 (its control latents drawn from its own generator), up to the float
    # rounding of a batch of two (the transformer alone differs by 4e-7 between batch sizes)
    assert np.abs(np.asarray(pair[1]).astype(int) - one).max() <= 1


def test_flux_window_is_exact_in_the_time_of_the_images_own_schedule(flux):
    """FLUX's shift depends on the image size: a window starting at t0 includes the first evaluation (the same as
    the full window), one starting just below it does not."""
    img, control = photo((64, 48), seed=1), picture(seed=2)

    def with_window(window):
        model = loaded(flux["model"], controlnets=[str(flux["cn"])], control_window=window)
        return run(model, img, control_images=[control])

    full = with_window((1.0, 0.0))
    assert np.array_equal(with_window((0.6, 0.0)), full)
    assert not np.array_equal(with_window((0.59, 0.0)), full)


@pytest.mark.parametrize("family,cn", [("flux", "cn"), ("sd3", "instantx")])
def test_masked_controlnet_edit_keeps_unmasked_pixels_exact(flux, sd3, family, cn):
    where = {"flux": flux, "sd3": sd3}[family]
    img = photo((64, 48), seed=1)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:50] = 255
    model = loaded(where["model"], controlnets=[str(where[cn])])
    out = run(model, img, mask=Image.fromarray(mask), control_images=[picture(seed=2)])
    keep = mask == 0
    assert np.array_equal(out[keep], np.asarray(img).astype(int)[keep])
    assert np.abs(out[~keep] - np.asarray(img).astype(int)[~keep]).max() > 0


def test_flux_union_mode_reaches_the_controlnet_and_is_required(flux):
    img, control = photo((64, 48), seed=1), picture(seed=2)
    union = str(flux["union"])
    models = {m: loaded(flux["model"], controlnets=[ControlSpec(union, 1.0, m)]) for m in (0, 2)}
    outs = {m: run(model, img, control_images=[control]) for m, model in models.items()}
    assert np.abs(outs[0] - outs[2]).max() > 0  # the mode's embedding reaches the ControlNet
    assert models[2].info["controlnets"] == [f"{union}:1#2"]
    with pytest.raises(InputError, match="union ControlNet: say which control type"):
        load_model(flux["model"], device="cpu", controlnets=[union])
    with pytest.raises(InputError, match="has 3 control types"):
        load_model(flux["model"], device="cpu", controlnets=[ControlSpec(union, 1.0, 3)])
    with pytest.raises(InputError, match="one control type"):
        load_model(flux["model"], device="cpu", controlnets=[ControlSpec(str(flux["cn"]), 1.0, 1)])


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


def test_controlnets_made_for_another_model_are_refused_in_one_line(flux, sd3, tmp_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    make_tiny_controlnet(tmp_path / "sd-cn", unet)
    transformer = flux["pipe"].transformer
    make_tiny_flux_controlnet(tmp_path / "xlabs", transformer, pixel_hints=True)
    make_tiny_flux_controlnet(tmp_path / "wide-text", transformer, joint_attention_dim=24)
    make_tiny_flux_controlnet(tmp_path / "deeper", transformer, num_layers=2)
    make_tiny_sd3_controlnet(tmp_path / "sd3-inpaint", sd3["pipe"].transformer, extra_conditioning_channels=1)
    make_tiny_sd3_controlnet(tmp_path / "sd3-wide", sd3["pipe"].transformer, pooled_projection_dim=48)
    cases = [
        (flux["model"], [tmp_path / "sd-cn"], "is a unet ControlNet; FLUX.1 takes flux ControlNets"),
        (flux["model"], [sd3["instantx"]], "is a sd3 ControlNet; FLUX.1 takes flux"),
        (sd3["model"], [flux["cn"]], "is a flux ControlNet; Stable Diffusion 3 takes sd3"),
        (sd3["model"], [tmp_path / "sd-cn"], "is a unet ControlNet; Stable Diffusion 3 takes sd3"),
        (flux["model"], [tmp_path / "xlabs"], "pixel hints"),
        (flux["model"], [tmp_path / "wide-text"], "made for another FLUX transformer"),
        (flux["model"], [flux["cn"], tmp_path / "deeper"], "the same number of blocks"),
        (sd3["model"], [tmp_path / "sd3-inpaint"], "an inpainting ControlNet"),
        (sd3["model"], [tmp_path / "sd3-wide"], "made for another SD3 transformer"),
    ]
    for model, cns, message in cases:
        with pytest.raises(InputError, match=message) as excinfo:
            load_model(model, device="cpu", controlnets=[str(c) for c in cns])
        one_line(excinfo)
    make_tiny_flux(tmp_path / "schnell", guidance_embeds=False)
    with pytest.raises(InputError, match="guidance embedding") as excinfo:
        load_model(tmp_path / "schnell", device="cpu", controlnets=[str(flux["cn"])])
    one_line(excinfo)


def test_command_line_on_flux(flux, tmp_path):
    """--controlnet with --control-mode on a FLUX model is recorded; a union ControlNet without a mode is one line
    and exit 2."""
    photo((32, 32), seed=1).save(tmp_path / "in.png")
    picture((32, 32), seed=2).save(tmp_path / "c.png")

    def cli(out, *extra):
        return subprocess.run([sys.executable, "-m", "sdedit", "edit", str(tmp_path / "in.png"), "--model",
                               str(flux["model"]), "--prompt", "a barn", "--steps", "2", "--seed", "1", "-q",
                               "--precision", "fp32", "-o", str(tmp_path / out), *extra], capture_output=True,
                              text=True, timeout=300)

    r = cli("cn", "--controlnet", f"{flux['union']}:0.7", "--control-mode", "1", "--control-image",
            str(tmp_path / "c.png"))
    assert r.returncode == 0, r.stderr
    (out,) = sorted((tmp_path / "cn").glob("*.png"))
    meta = json.loads(Image.open(out).info["sdedit"])
    assert meta["controlnets"] == [f"{flux['union']}:0.7#1"] and meta["control_images"] == ["c.png"]
    r = cli("bad", "--controlnet", str(flux["union"]))
    # diffusers' FutureWarning on building any FluxControlNetModel (its FluxPosEmbed import) aside
    lines = [line for line in r.stderr.strip().splitlines() if "FluxPosEmbed" not in line and "deprecate(" not in line]
    assert r.returncode == 2 and len(lines) == 1 and "--control-mode" in lines[0], r.stderr
    assert not (tmp_path / "bad").exists()


def test_flux_fill_takes_a_controlnet_beside_its_masked_image(flux, tmp_path):
    """FLUX.1 Fill's condition is its masked image and mask, then the control latents: a masked edit keeps the
    unmasked pixels, the ControlNet acts, and at scale 0 it is the run without it."""
    make_tiny_flux(tmp_path / "fill", fill=True)
    img, control = photo((64, 48), seed=1), picture(seed=2)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:50] = 255
    kw = {"mask": Image.fromarray(mask), "control_images": [control]}
    plain = run(loaded(tmp_path / "fill"), img, mask=kw["mask"])
    zero = run(loaded(tmp_path / "fill", controlnets=[f"{flux['cn']}:0"]), img, **kw)
    out = run(loaded(tmp_path / "fill", controlnets=[str(flux["cn"])]), img, **kw)
    keep = mask == 0
    assert np.array_equal(out[keep], np.asarray(img).astype(int)[keep])
    assert np.array_equal(zero, plain) and np.abs(out - plain).max() > 10
