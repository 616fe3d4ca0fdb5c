"""Flow matching in the VE contract: the analytic Gaussian flow for every sampler, and SD3 against diffusers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sdedit import edit, load_model, read_settings
from sdedit.engine.denoisers import flow_input, x0_from_velocity
from sdedit.engine.editing import edit_tensors
from sdedit.engine.samplers import SAMPLERS
from sdedit.engine.schedules import FlowSchedule
from sdedit.families.stable_diffusion_3 import StableDiffusion3Model
from sdedit.settings import RunSettings

from .test_samplers import GUIDE, MU, S0, SIGMA0, TARGET
from .helpers import ddim_on_grid, flow_sigmas, random_image as photo, transformer_lora
from .tiny_sd import make_tiny_sd3


class GaussianVelocity(nn.Module):
    """The exact velocity E[n - x0 | x_t] of x_t = (1 - t) x0 + t n for data x0 ~ N(mu, s0^2) per pixel."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma2 = (t / (1 - t)) ** 2
        x0 = MU + S0**2 / (S0**2 + sigma2) * (x_t / (1 - t) - MU)
        return (x_t - (1 - t) * x0) / t - x0 + x0 * 0  # n = (x_t - (1 - t) x0) / t, so v = n - x0


def flow_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The flow adapter's conversion around the analytic velocity (as the SD3 denoiser does it)."""
    x_t, t = flow_input(x, sigma.reshape(-1, 1, 1, 1).to(x.dtype))
    return x0_from_velocity(x_t, t, GaussianVelocity()(x_t, t))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_gives_the_exact_answer_on_a_gaussian_flow(sampler):
    schedule = FlowSchedule(shift=3.0)
    t = SIGMA0 / (1 + SIGMA0)  # the flow time whose VE sigma is SIGMA0
    u0 = t / (3.0 - 2.0 * t)  # before the shift
    assert schedule.sigma(u0) == pytest.approx(SIGMA0, rel=1e-9)
    mean, var, steps = TARGET[sampler]
    x_g = torch.full((16, 3, 32, 32), GUIDE)
    out = edit_tensors(flow_denoiser, schedule, x_g, mask=None, t0=u0, steps=steps, repeats=1, sampler=sampler,
                       generator=[torch.Generator().manual_seed(i) for i in range(16)])
    assert out.mean().item() == pytest.approx(mean, abs=0.01)
    assert out.var().item() == pytest.approx(var, rel=0.04)


def test_flow_schedule_is_exact_continuous_and_capped():
    s = FlowSchedule(shift=3.0)
    assert s.flow_time(0.5) == pytest.approx(0.75) and s.sigma(0.5) == pytest.approx(3.0)
    assert s.sigma(0.5) < s.sigma(0.5 + 1e-6) and s.sigma(0.0) == 0.0
    assert s.sigma(1.0) == pytest.approx((1 - 1e-4) / 1e-4)


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3") / "tiny-sd3"
    return folder, make_tiny_sd3(folder)


def test_matches_diffusers_sd3_img2img_where_euler_on_the_flow_is_ddim(sd3_folder):
    folder, pipe = sd3_folder
    model = load_model(folder, device="cpu", precision="fp32")
    assert isinstance(model, StableDiffusion3Model) and model.schedule.shift == 3.0
    img = photo((64, 48), seed=3)
    strength, n, w, prompt = 0.6, 10, 3.0, "a red barn"

    def theirs(text: str, seed: int = 0) -> np.ndarray:
        return pipe(text, image=img, strength=strength, num_inference_steps=n, guidance_scale=w, height=48, width=64,
                    generator=torch.Generator().manual_seed(seed), output_type="np").images[0]

    ref = theirs(prompt)
    pipe.scheduler.set_timesteps(n)
    start = n - int(n * strength)
    sigmas = flow_sigmas(pipe.scheduler.sigmas[start:])  # shifted flow times, ending at 0
    ours = ddim_on_grid(model, img, sigmas, RunSettings(prompt=prompt, guidance=w))
    diff = np.abs(ours - ref).max()
    print(f"SD3 parity: {diff:.2e}")
    assert diff < 4e-5, diff  # measured 3.3e-6 (fp32, torch 2.13, AMD EPYC CPU): float32 rounding only
    assert np.abs(theirs("a snowy mountain") - ref).max() > 20 * diff
    assert np.abs(theirs(prompt, seed=1) - ref).max() > 20 * diff


def test_cli_edit_masked_and_unmasked_on_sd3(sd3_folder, tmp_path):
    folder, _ = sd3_folder
    img = photo((70, 50))  # snapped to 64x48 (multiples of VAE 8 x patch 2), returned at 70x50
    img.save(tmp_path / "in.png")
    mask = Image.new("L", img.size, 0)
    mask.paste(255, (10, 10, 40, 30))
    mask.save(tmp_path / "mask.png")
    for extra, out in (([], "plain"), (["--mask", str(tmp_path / "mask.png")], "masked")):
        r = subprocess.run([sys.executable, "-m", "sdedit", "edit", str(tmp_path / "in.png"), "--model", str(folder),
                            "--prompt", "a lighthouse", "--t0", "0.7", "--steps", "4", "-n", "2", "--seed", "3",
                            "-q", "-o", str(tmp_path / out), *extra], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    keep = np.asarray(mask) == 0
    for p in sorted((tmp_path / "masked").glob("*.png")):
        out = np.asarray(Image.open(p).convert("RGB"))
        assert out.shape[:2] == (50, 70) and (out[keep] == np.asarray(img)[keep]).all()
        assert read_settings(p)["size"] == [64, 48]
    model = load_model(folder, device="cpu")
    a = edit(model, img, prompt="a lighthouse", t0=0.7, steps=4, seed=3, num_samples=2, progress=False)
    first = Image.open(sorted((tmp_path / "plain").glob("*.png"))[0]).convert("RGB")
    assert np.array_equal(np.asarray(a[0]), np.asarray(first))  # reproducible by seed


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    from .tiny_sd import make_tiny_flux

    folder = tmp_path_factory.mktemp("flux") / "tiny-flux"
    return folder, make_tiny_flux(folder)


def test_matches_diffusers_flux_img2img_with_packed_latents_and_its_shift(flux_folder):
    from sdedit.families.flux import FluxModel

    folder, pipe = flux_folder
    model = load_model(folder, device="cpu", precision="fp32")
    assert isinstance(model, FluxModel)
    model.t5_tokens = 16  # the tiny tokenizer's length, as max_sequence_length below
    img = photo((64, 48), seed=3)
    strength, n, w, prompt = 0.6, 10, 3.5, "a red barn"

    def theirs(text: str, seed: int = 0) -> np.ndarray:
        return pipe(text, image=img, strength=strength, num_inference_steps=n, guidance_scale=w, height=48, width=64,
                    max_sequence_length=16, generator=torch.Generator().manual_seed(seed), output_type="np").images[0]

    ref = theirs(prompt)
    start = n - int(n * strength)
    sigmas = flow_sigmas(pipe.scheduler.sigmas[start:])  # the last call's grid: shifted for this image's 12 tokens
    ours = ddim_on_grid(model, img, sigmas, RunSettings(prompt=prompt, guidance=w))
    diff = np.abs(ours - ref).max()
    print(f"FLUX parity: {diff:.2e}")
    assert diff < 4e-5, diff  # measured 3.1e-6 (fp32, torch 2.13, AMD EPYC CPU): float32 rounding only
    assert np.abs(theirs("a snowy mountain") - ref).max() > 20 * diff
    assert np.abs(theirs(prompt, seed=1) - ref).max() > 20 * diff
    # the resolution-dependent shift: the same step grid as diffusers' for this size
    u = torch.linspace(1, 1 / n, n).double()
    s = model.schedule_for((64, 48)).shift
    assert torch.allclose(s * u / (1 + (s - 1) * u), pipe.scheduler.sigmas[:n].double(), atol=1e-6)


def test_flux_masked_cli_edit_keeps_pixels(flux_folder, tmp_path):
    folder, _ = flux_folder
    img = photo((66, 50))
    img.save(tmp_path / "in.png")
    mask = Image.new("L", img.size, 0)
    mask.paste(255, (10, 10, 40, 30))
    mask.save(tmp_path / "mask.png")
    r = subprocess.run([sys.executable, "-m", "sdedit", "edit", str(tmp_path / "in.png"), "--model", str(folder),
                        "--prompt", "a lighthouse", "--guidance", "3.5", "--steps", "3", "-q", "--mask",
                        str(tmp_path / "mask.png"), "-o", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    out = np.asarray(Image.open(next((tmp_path / "o").glob("*.png"))).convert("RGB"))
    keep = np.asarray(mask) == 0
    assert out.shape[:2] == (50, 66) and (out[keep] == np.asarray(img)[keep]).all()
    r = subprocess.run([sys.executable, "-m", "sdedit", "edit", str(tmp_path / "in.png"), "--model", str(folder),
                        "--prompt", "x", "--negative-prompt", "fog", "-q", "-o", str(tmp_path / "o2")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no negative prompt" in r.stderr


def test_a_flux_lora_made_here_changes_the_output_and_scale_zero_does_not(flux_folder, tmp_path):
    folder, pipe = flux_folder
    transformer_lora(pipe, tmp_path / "flux-lora.safetensors")
    img = photo((64, 48), seed=1)

    def run(loras: list[str]) -> np.ndarray:
        model = load_model(folder, device="cpu", precision="fp32", loras=loras)
        return np.asarray(edit(model, img, prompt="x", guidance=3.5, steps=3, seed=0, progress=False)[0], float)

    base = run([])
    assert np.abs(run([str(tmp_path / "flux-lora.safetensors")]) - base).mean() > 0.5
    assert np.array_equal(run([f"{tmp_path / 'flux-lora.safetensors'}:0"]), base)


def test_guidance_acts_and_is_recorded_or_is_refused_for_every_kind_of_model(tmp_path):
    """FLUX.1 dev takes embedded guidance (3.5 by default); schnell (no guidance embedding) and pixel models take
    none: --guidance is refused in one line and the PNG records no guidance for them."""
    from sdedit.frontends.cli import main
    from sdedit.settings import RunSettings

    from .tiny_sd import make_tiny_flux

    make_tiny_flux(tmp_path / "dev")
    make_tiny_flux(tmp_path / "schnell", guidance_embeds=False)
    dev, schnell = load_model(tmp_path / "dev", device="cpu"), load_model(tmp_path / "schnell", device="cpu")
    assert dev.run_settings(RunSettings(prompt="x")).guidance == 3.5
    assert dev.run_settings(RunSettings(prompt="x", guidance=2.0)).guidance == 2.0  # a given value stays
    assert schnell.run_settings(RunSettings(prompt="x")).guidance == 1.0  # none
    img = photo((32, 32), seed=1)
    outs = {w: np.asarray(edit(dev, img, prompt="x", guidance=w, steps=2, seed=0, progress=False)[0], float)
            for w in (1.0, 9.0)}
    assert np.abs(outs[1.0] - outs[9.0]).max() > 0  # it acts on dev
    meta = lambda out: json.loads(out.info["sdedit"])  # noqa: E731
    assert meta(edit(dev, img, prompt="x", steps=2, seed=0, progress=False)[0])["guidance"] == 3.5
    assert "guidance" not in meta(edit(schnell, img, prompt="x", steps=2, seed=0, progress=False)[0])
    with pytest.raises(ValueError, match="takes no guidance"):
        edit(schnell, img, prompt="x", guidance=9.0, steps=2, seed=0, progress=False)
    img.save(tmp_path / "in.png")
    for model, extra in ((str(tmp_path / "schnell"), ["--prompt", "x"]), ("landscapes", [])):
        r = subprocess.run([sys.executable, "-m", "sdedit", "edit", str(tmp_path / "in.png"), "--model", model,
                            *extra, "--guidance", "9", "--steps", "2", "-q", "-o", str(tmp_path / "o")],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "takes no guidance" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "o").exists()
    landscapes = load_model("landscapes")
    assert landscapes.run_settings(RunSettings()).guidance == 1.0 and not landscapes.takes_guidance
    assert main(["edit", str(tmp_path / "in.png"), "--steps", "2", "-q", "-o", str(tmp_path / "p")]) == 0
    assert "guidance" not in read_settings(next((tmp_path / "p").glob("*.png")))


def test_quiet_prints_no_library_noise_on_a_successful_edit_of_a_diffusers_folder(tmp_path):
    """-q prints nothing: no saved paths, no transformers 'Loading weights' bars, no torch bf16 rms_norm note (auto, bf16)."""
    from .tiny_sd import make_tiny_flux

    folder = tmp_path / "flux"
    make_tiny_flux(folder)
    Image.new("RGB", (64, 64), (100, 120, 90)).save(tmp_path / "in.png")
    env = {k: v for k, v in os.environ.items() if k != "SDEDIT_PRECISION"}
    for precision in ("auto", "bf16"):
        r = subprocess.run([sys.executable, "-m", "sdedit", "edit", str(tmp_path / "in.png"), "--model", str(folder),
                            "--prompt", "a barn", "--steps", "2", "-q", "--precision", precision, "-o",
                            str(tmp_path / precision)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0 and r.stderr == "" and r.stdout == "", (r.stdout + r.stderr)[-500:]
        assert len(list((tmp_path / precision).glob("*.png"))) == 1
