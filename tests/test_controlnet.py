"""ControlNet with SDEdit on Stable Diffusion: tiny random ControlNets made from a tiny UNet, diffusers' ControlNet
img2img pipeline as reference; scale 0, composition, the window in t, masks and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit import edit, load_model
from sdedit.engine.schedules import DiscreteVPSchedule
from sdedit.errors import InputError
from sdedit.families.control import AttachedControl, check_window
from sdedit.loading.controlnets import ControlSpec
from sdedit.settings import RunSettings

from .helpers import blocks_picture, ddim_on_grid
from .tiny_sd import make_tiny_controlnet, make_tiny_sd


@pytest.fixture(scope="module")
def sd_cn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd-cn")
    pipe = make_tiny_sd(folder / "sd")
    make_tiny_controlnet(folder / "cn", pipe.unet)
    return folder / "sd", folder / "cn", pipe


def picture(size=(64, 64), seed=0) -> Image.Image:
    return blocks_picture(size, seed)


def run(model, img, **kw):
    kw = {"t0": 0.6, "steps": 6, "sampler": "ddim", "seed": 3, "prompt": "a barn", "progress": False, **kw}
    return np.asarray(edit(model, img, **kw)[0]).astype(int)


def parity(model, ref_pipe, img, control, other, **pipe_kw) -> tuple[float, float]:
    """Max |ours - diffusers| on [0, 1] images (strength 0.6, 10 DDIM steps of diffusers' grid, guidance 3, scale 1,
    generator 0), and ours with another control image against the same reference."""
    strength, n_steps, w, prompt = 0.6, 10, 3.0, "a red barn"
    ref = ref_pipe(prompt, image=img, strength=strength, num_inference_steps=n_steps, guidance_scale=w,
                   generator=torch.Generator().manual_seed(0), output_type="np", eta=0.0,
                   controlnet_conditioning_scale=1.0, **pipe_kw).images[0]  # diffusers' img2img default: 0.8
    sched = ref_pipe.scheduler
    sched.set_timesteps(n_steps)
    ts = sched.timesteps[n_steps - int(n_steps * strength):].long()
    sigmas = torch.cat([model.schedule.sigmas[ts], model.schedule.sigmas[:1]]).float()
    settings = RunSettings(prompt=prompt, guidance=w)
    diff = float(np.abs(ddim_on_grid(model, img, sigmas, settings, [control]) - ref).max())
    return diff, float(np.abs(ddim_on_grid(model, img, sigmas, settings, [other]) - ref).max())


def test_matches_diffusers_controlnet_img2img_on_its_own_step_grid(sd_cn):
    """Same components, control image, strength, DDIM, guidance and generator: our engine gives diffusers' images;
    another control image gives clearly other images."""
    from diffusers import DDIMScheduler, StableDiffusionControlNetImg2ImgPipeline

    sd, cn, pipe = sd_cn
    model = load_model(sd, device="cpu", precision="fp32", controlnets=[str(cn)])
    cnet = model.controls[0].net
    ref_pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet, controlnet=cnet,
        scheduler=DDIMScheduler.from_config(pipe.scheduler.config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    img, control = picture(seed=1), picture(seed=2)
    other = control.transpose(Image.Transpose.ROTATE_90)  # another layout (the networks normalise colours away)
    diff, apart = parity(model, ref_pipe, img, control, other, control_image=control, negative_prompt="")
    print(f"SD ControlNet parity: {diff:.2e}; another control image: {apart:.2e}")
    assert diff < 1e-3 and apart > 50 * max(diff, 1e-6), (diff, apart)


def test_scale_zero_is_no_controlnet_and_two_halves_make_one(sd_cn):
    sd, cn, _ = sd_cn
    img, control = picture(seed=1), picture(seed=2)
    plain = run(load_model(sd, device="cpu", precision="fp32"), img)
    zero = run(load_model(sd, device="cpu", precision="fp32", controlnets=[f"{cn}:0"]), img, control_images=[control])
    one = run(load_model(sd, device="cpu", precision="fp32", controlnets=[str(cn)]), img, control_images=[control])
    halves = run(load_model(sd, device="cpu", precision="fp32", controlnets=[f"{cn}:0.5", f"{cn}:0.5"]), img,
                 control_images=[control, control])
    assert np.array_equal(zero, plain)
    assert np.abs(one - plain).max() > 10
    assert np.array_equal(halves, one)  # r/2 + r/2 = r exactly: the residuals of two ControlNets add


def test_without_a_control_image_the_input_steers(sd_cn):
    sd, cn, _ = sd_cn
    img = picture(seed=1)
    model = load_model(sd, device="cpu", precision="fp32", controlnets=[str(cn)])
    itself = run(model, img)
    assert np.array_equal(itself, run(model, img, control_images=[img]))
    assert not np.array_equal(itself, run(model, img, control_images=[picture(seed=2)]))


def test_the_window_is_exact_in_t(sd_cn):
    sd, cn, _ = sd_cn
    img, control = picture(seed=1), picture(seed=2)
    full = run(load_model(sd, device="cpu", precision="fp32", controlnets=[str(cn)]), img, control_images=[control])
    # starting at t0 exactly includes the first evaluation (at sigma(t0)): the same as the full window
    at_t0 = run(load_model(sd, device="cpu", precision="fp32", controlnets=[str(cn)], control_window=(0.6, 0.0)), img,
                control_images=[control])
    late = run(load_model(sd, device="cpu", precision="fp32", controlnets=[str(cn)], control_window=(0.59, 0.0)),
               img, control_images=[control])
    assert np.array_equal(at_t0, full)
    assert not np.array_equal(late, full)
    schedule = DiscreteVPSchedule(0.00085, 0.012, 1000, "scaled_linear")
    c = AttachedControl(torch.nn.Identity(), ControlSpec("x", 0.5), "unet", 0.6, 0.2)
    sig = torch.tensor([schedule.sigma(0.61), schedule.sigma(0.6), schedule.sigma(0.4), schedule.sigma(0.2),
                        schedule.sigma(0.19)], dtype=torch.float32)
    assert c.row_scale(sig, schedule).tolist() == [0.0, 0.5, 0.5, 0.5, 0.0]
    assert AttachedControl(torch.nn.Identity(), ControlSpec("x", 0.0), "unet").row_scale(sig, schedule) is None


def test_masked_controlnet_edit_keeps_unmasked_pixels_exact(sd_cn):
    sd, cn, _ = sd_cn
    img = picture((64, 48), seed=1)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:50] = 255
    model = load_model(sd, device="cpu", precision="fp32", controlnets=[str(cn)])
    out = run(model, img, mask=Image.fromarray(mask), control_preprocess="canny")
    keep = mask == 0
    assert np.array_equal(out[keep], np.asarray(img).astype(int)[keep])
    assert np.abs(out[~keep] - np.asarray(img).astype(int)[~keep]).max() > 0


def test_refusals(sd_cn, tmp_path):
    sd, cn, pipe = sd_cn
    with pytest.raises(InputError, match="window|--control-end"):
        check_window(0.2, 0.5)
    with pytest.raises(InputError, match="control image"):
        model = load_model(sd, device="cpu", precision="fp32", controlnets=[str(cn)])
        edit(model, picture(), control_images=[picture(), picture()], progress=False)
    with pytest.raises(InputError, match="ControlNets run with"):
        load_model("landscapes", device="cpu", controlnets=[str(cn)])
    with pytest.raises(InputError, match="give --controlnet"):
        edit(load_model(sd, device="cpu"), picture(), control_preprocess="canny", prompt="x", progress=False)
    # a ControlNet made for another UNet (another text width) is one line
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                 layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
                                 attention_head_dim=8, norm_num_groups=32)
    make_tiny_controlnet(tmp_path / "other", other)
    with pytest.raises(InputError, match="another Stable Diffusion model"):
        load_model(sd, device="cpu", controlnets=[str(tmp_path / "other")])
    (tmp_path / "notcn").mkdir()
    (tmp_path / "notcn" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(InputError, match="not a ControlNet"):
        load_model(sd, device="cpu", controlnets=[str(tmp_path / "notcn")])


def test_command_line(sd_cn, tmp_path):
    """The issue's check: --controlnet changes the output, :0 equals none bit for bit, the input steers without
    --control-image, a masked run keeps the unmasked pixels; a bad control image is one line and exit 2."""
    sd, cn, _ = sd_cn
    picture(seed=1).save(tmp_path / "in.png")
    picture(seed=2).save(tmp_path / "c.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")

    def cli(out, *extra):
        r = subprocess.run([sys.executable, "-m", "sdedit", "edit", str(tmp_path / "in.png"), "--model", str(sd),
                            "--prompt", "a barn", "--steps", "4", "--seed", "1", "-o", str(tmp_path / out), "-q",
                            "--precision", "fp32", *extra], capture_output=True, text=True)
        return r

    assert cli("plain").returncode == 0
    r = cli("cn", "--controlnet", str(cn), "--control-image", str(tmp_path / "c.png"))
    assert r.returncode == 0, r.stderr
    assert cli("zero", "--controlnet", f"{cn}:0", "--control-image", str(tmp_path / "c.png")).returncode == 0
    assert cli("self", "--controlnet", str(cn), "--control-preprocess", "scribble").returncode == 0

    def pixels(out):
        (f,) = sorted((tmp_path / out).glob("*.png"))
        return np.asarray(Image.open(f)).astype(int), json.loads(Image.open(f).info["sdedit"])

    plain, cn_out, zero = pixels("plain")[0], pixels("cn"), pixels("zero")[0]
    assert np.abs(cn_out[0] - plain).max() > 0
    assert np.array_equal(zero, plain)
    assert cn_out[1]["controlnets"] == [f"{cn}:1"] and cn_out[1]["control_images"] == ["c.png"]
    meta = pixels("self")[1]
    assert meta["control_images"] == ["painting"] and meta["control_preprocess"] == "scribble"
    r = cli("bad", "--controlnet", str(cn), "--control-image", str(tmp_path / "bad.png"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = cli("bad2", "--controlnet", str(tmp_path / "missing"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.fixture(scope="module")
def sdxl_cn(tmp_path_factory):
    from .tiny_sd import make_tiny_sdxl

    folder = tmp_path_factory.mktemp("tiny-sdxl-cn")
    pipe = make_tiny_sdxl(folder / "sdxl")
    make_tiny_controlnet(folder / "cn", pipe.unet)
    make_tiny_controlnet(folder / "union", pipe.unet, union=True)
    return folder, pipe


@pytest.mark.parametrize("union", [False, True])
def test_matches_diffusers_sdxl_controlnet_img2img(sdxl_cn, union):
    """SDXL with a ControlNet, and with a union ControlNet in one control mode: diffusers' images on its own grid."""
    from diffusers import DDIMScheduler, StableDiffusionXLControlNetImg2ImgPipeline, \
        StableDiffusionXLControlNetUnionImg2ImgPipeline

    folder, pipe = sdxl_cn
    spec = ControlSpec(str(folder / ("union" if union else "cn")), 1.0, 2 if union else None)
    model = load_model(folder / "sdxl", device="cpu", precision="fp32", controlnets=[spec])
    kind = StableDiffusionXLControlNetUnionImg2ImgPipeline if union else StableDiffusionXLControlNetImg2ImgPipeline
    ref_pipe = kind(vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2,
                    tokenizer=pipe.tokenizer, tokenizer_2=pipe.tokenizer_2, unet=pipe.unet,
                    controlnet=model.controls[0].net, scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
    img, control = picture((64, 48), seed=1), picture((64, 48), seed=2)
    other = control.transpose(Image.Transpose.ROTATE_180)
    extra = {"control_mode": 2} if union else {}
    diff, apart = parity(model, ref_pipe, img, control, other, control_image=[control] if union else control, **extra)
    print(f"SDXL {'union ' if union else ''}ControlNet parity: {diff:.2e}; another control image: {apart:.2e}")
    assert diff < 1e-3 and apart > 50 * max(diff, 1e-6), (diff, apart)


def test_a_union_controlnet_needs_its_mode(sdxl_cn):
    folder, _ = sdxl_cn
    with pytest.raises(InputError, match="--control-mode"):
        load_model(folder / "sdxl", device="cpu", controlnets=[str(folder / "union")])
    with pytest.raises(InputError, match="leave --control-mode out"):
        load_model(folder / "sdxl", device="cpu", controlnets=[ControlSpec(str(folder / "cn"), 1.0, 1)])


def test_other_scales_make_another_model_and_change_nothing_in_place(sd_cn):
    sd, cn, _ = sd_cn
    img, control = picture(seed=1), picture(seed=2)
    model = load_model(sd, device="cpu", precision="fp32", controlnets=[str(cn)])
    zero = model.with_control_scales([0.0])
    assert zero.controls[0].net is model.controls[0].net and model.controls[0].spec.scale == 1.0
    plain = run(load_model(sd, device="cpu", precision="fp32"), img)
    assert np.array_equal(run(zero, img, control_images=[control]), plain)
    out = run(model, img, control_images=[control])
    assert not np.array_equal(out, plain)
    assert json.loads(edit(zero, img, t0=0.3, steps=2, prompt="x", progress=False,
                           control_images=[control])[0].info["sdedit"])["controlnets"] == [f"{cn}:0"]
    with pytest.raises(InputError, match="scale"):
        model.with_control_scales([1.0, 2.0])


def test_batch_with_a_controlnet(sd_cn, tmp_path):
    """Batch: each painting steers its own ControlNet, or one control image steers all; a rerun rewrites nothing."""
    sd, cn, _ = sd_cn
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        picture(seed=10 + i).save(src / f"p{i}.png")
    picture(seed=2).save(tmp_path / "c.png")

    def batch(out, *extra):
        r = subprocess.run([sys.executable, "-m", "sdedit", "batch", str(src), "-o", str(tmp_path / out),
                            "--model", str(sd), "--prompt", "a barn", "--steps", "3", "-q", *extra],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return {f.name: np.asarray(Image.open(f)) for f in sorted((tmp_path / out).glob("*.png"))}

    plain = batch("plain")
    steered = batch("cn", "--controlnet", str(cn))
    fixed = batch("fixed", "--controlnet", str(cn), "--control-image", str(tmp_path / "c.png"))
    assert plain.keys() == steered.keys() == fixed.keys() and len(plain) == 2
    assert all(not np.array_equal(plain[k], steered[k]) and not np.array_equal(steered[k], fixed[k]) for k in plain)
    before = {f: f.stat().st_mtime_ns for f in (tmp_path / "cn").glob("*.png")}
    batch("cn", "--controlnet", str(cn))  # a rerun rewrites nothing
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "cn").glob("*.png")} == before


def test_eval_reports_control_adherence_at_each_scale(sd_cn, tmp_path):
    """`sdedit eval` with a ControlNet: a row per scale and t0, each with its edge F1 to the painting's edges; at
    scale 0 the row is the run without the ControlNet (the same outputs)."""
    sd, cn, _ = sd_cn
    r = subprocess.run([sys.executable, "-m", "sdedit", "eval", "--model", str(sd), "--controlnet", str(cn),
                        "--control-scale", "0", "1", "--control-preprocess", "canny", "--t0", "0.4", "0.8", "--n",
                        "3", "--steps", "3", "--prompt", "a hill", "-o", str(tmp_path / "ev"), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "ev" / "eval.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    runs = [row for row in rows if row["nfe"]]
    assert [row["what"].split(", ")[-1] for row in runs] == ["control x0", "control x1"] * 2
    assert all(0.0 <= row["edge_f1"] <= 1.0 for row in rows)
    assert runs[0]["l2_mean"] != runs[1]["l2_mean"]
    plain = subprocess.run([sys.executable, "-m", "sdedit", "eval", "--model", str(sd), "--t0", "0.4", "--n", "3",
                            "--steps", "3", "--prompt", "a hill", "-o", str(tmp_path / "ev0"), "-q"],
                           capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    base = json.loads((tmp_path / "ev0" / "eval.json").read_text())
    base = base["rows"] if isinstance(base, dict) else base
    assert [row for row in base if row["nfe"]][0]["l2_mean"] == runs[0]["l2_mean"]


def test_repeats_auto_precision_and_crop_to_mask_keep_the_control_image_aligned(sd_cn):
    """K repeats and 'auto' precision run with a ControlNet; with crop-to-mask a given control image is cut as the
    input is, so the input given as its own control image equals the input steering itself."""
    sd, cn, _ = sd_cn
    model = load_model(sd, device="cpu", controlnets=[str(cn)])
    big = picture((160, 128), seed=4)
    mask = np.zeros((128, 160), np.uint8)
    mask[40:80, 60:110] = 255
    kw = {"mask": Image.fromarray(mask), "crop_to_mask": True, "repeats": 2, "precision": "auto"}
    itself = run(model, big, **kw)
    given = run(model, big, control_images=[big], **kw)
    assert itself.shape == (128, 160, 3) and np.array_equal(itself, given)
    keep = mask == 0
    assert np.array_equal(itself[keep], np.asarray(big).astype(int)[keep])
    assert not np.array_equal(itself, run(model, big, control_images=[picture((160, 128), seed=9)], **kw))


def test_the_unconditional_denoiser_encodes_the_empty_prompt_once(sd_cn, monkeypatch):
    """Conditioning is a value made once: denoise() (no prompt, no guidance, no control) encodes "" on first use only,
    and its output is the conditional denoiser's for the empty prompt."""
    sd, cn, _ = sd_cn
    model = load_model(sd, device="cpu", precision="fp32", controlnets=[str(cn)])
    calls = []
    encode = model.encode_prompt
    monkeypatch.setattr(model, "encode_prompt", lambda p: calls.append(p) or encode(p))
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([2.0])
    first, second = model.denoise(x, sigma), model.denoise(x, sigma)
    assert calls == [""] and torch.equal(first, second)
    plain = load_model(sd, device="cpu", precision="fp32")
    assert torch.equal(first, plain.denoiser(RunSettings(prompt="", guidance=1.0))(x, sigma))


def test_review_findings_are_refused_or_kept(sd_cn, tmp_path):
    """Found by a hostile review: each case is one line (InputError) or keeps its state."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from sdedit.loading.controlnets import control_mode

    sd, cn, pipe = sd_cn
    model = load_model(sd, device="cpu", precision="fp32", controlnets=[str(cn)])
    # a window that ends above t0 would never act
    late = load_model(sd, device="cpu", precision="fp32", controlnets=[str(cn)], control_window=(1.0, 0.8))
    with pytest.raises(InputError, match="never act"):
        edit(late, picture(), t0=0.5, prompt="x", progress=False)
    # a copy at another scale keeps the offload state (where the networks run)
    model.execution_device, model.offloader = torch.device("meta"), object()
    twin = model.with_control_scales([0.5])
    assert twin.device == torch.device("meta") and twin.offloader is model.offloader
    model.execution_device = model.offloader = None
    # the measured precision's key includes the ControlNets
    assert model.network_signature() != load_model(sd, device="cpu").network_signature()
    for text, match in (("x:-1", "0 or more"), ("x:nan", "finite")):
        with pytest.raises(InputError, match=match):
            ControlSpec.parse(text)
    with pytest.raises(InputError, match="index"):
        control_mode(ControlSpec("x"), "\u00b2")  # a digit to str.isdigit, not to int()
    four = ControlNetModel.from_unet(pipe.unet, conditioning_channels=4, conditioning_embedding_out_channels=(8, 8, 8, 16))
    four.save_pretrained(tmp_path / "four")
    with pytest.raises(InputError, match="4-channel"):
        load_model(sd, device="cpu", controlnets=[str(tmp_path / "four")])
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(tmp_path / "unet.SAFETENSORS"))
    with pytest.raises(InputError, match="not a ControlNet"):
        load_model(sd, device="cpu", controlnets=[str(tmp_path / "unet.SAFETENSORS")])
    # batch refuses control options it cannot pair before any model loads (no output folder made)
    for extra in (["--control-preprocess", "canny"], ["--controlnet", str(cn), "--control-image", str(cn / "x.png"),
                                                      "--control-image", str(cn / "y.png")]):
        r = subprocess.run([sys.executable, "-m", "sdedit", "batch", str(tmp_path), "-o", str(tmp_path / "out"),
                            "--model", str(sd), *extra], capture_output=True, text=True)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "out").exists()
