"""Inpainting UNets (9 channels, SD 1.x/2.x and SDXL): mask and masked-image latents as extra input; diffusers parity."""

from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit import edit, load_model, read_settings
from sdedit.engine.samplers import SAMPLERS
from sdedit.errors import InputError
from sdedit.images import image_to_tensor, mask_to_tensor
from sdedit.settings import RunSettings

from .helpers import decode_as_diffusers, random_image as photo
from .tiny_sd import make_tiny_sd, make_tiny_sdxl

SIZE = (64, 48)  # (w, h): not square, sides multiples of 8 so no resize on either side


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def inpaint_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param) / f"tiny-{request.param}-inpaint"
    pipe = (make_tiny_sd if request.param == "sd" else make_tiny_sdxl)(folder, in_channels=9)
    return folder, pipe


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """White (edit) inside box, black elsewhere."""
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


def ours_on_diffusers_grid(model, pipe, img: Image.Image, mask: Image.Image | None, prompt: str, *, strength: float,
                           n_steps: int, guidance: float, seed: int) -> np.ndarray:
    """Our denoiser and DDIM on diffusers' strength grid, random draws in its order, no kept-region projection."""
    sched = pipe.scheduler
    sched.set_timesteps(n_steps)
    ts = sched.timesteps[n_steps - int(n_steps * strength):].long()
    sigmas = torch.cat([model.schedule.sigmas[ts], model.schedule.sigmas[:1]]).float()
    gen = torch.Generator().manual_seed(seed)
    # diffusers' own tensor of the image: the same values as ours, in its memory layout.  The layout matters
    # without a mask only: the masked image is then all zeros, where the VAE's GroupNorms (of constant maps)
    # blow rounding up 1/sqrt(eps) times, so other kernels give masked-image latents up to 0.07 apart.
    x_g = pipe.image_processor.preprocess(img, height=img.size[1], width=img.size[0])
    assert torch.equal(x_g, image_to_tensor(img))
    z_g = model.encode(x_g, [gen])  # diffusers: the guide's posterior draw, the noise, then the masked image's
    z = z_g + sigmas[0] * torch.randn(z_g.shape, generator=gen)
    condition = model.edit_condition(x_g, None if mask is None else mask_to_tensor(mask), [gen])
    denoiser = functools.partial(model.denoiser(RunSettings(prompt=prompt, guidance=guidance)), condition=condition)
    with torch.inference_mode():
        return decode_as_diffusers(model, SAMPLERS["ddim"](denoiser, z, sigmas), sigmas[-1])


def diffusers_inpaint(pipe, img: Image.Image, mask: Image.Image, prompt: str, *, strength: float, n_steps: int,
                      guidance: float, seed: int) -> np.ndarray:
    """diffusers' 9-channel inpainting pipeline at the image's own size, DDIM eta 0."""
    return pipe(prompt, image=img, mask_image=mask, height=img.size[1], width=img.size[0], strength=strength,
                num_inference_steps=n_steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
                output_type="np", eta=0.0).images[0]


def test_loads_as_an_inpainting_model(inpaint_folder):
    folder, _ = inpaint_folder
    model = load_model(folder, device="cpu", precision="fp32")
    assert model.info["inpainting"] is True and model.unet.config.in_channels == 9
    assert "Inpaint" in model.info["pipeline"]
    cond = model.edit_condition(image_to_tensor(photo(SIZE)), None, [torch.Generator().manual_seed(0)] * 2)
    assert cond.shape == (2, 5, 6, 8) and (cond[:, 0] == 1).all()  # no mask: everything is repainted


@pytest.mark.parametrize("masked", [True, False])
def test_matches_diffusers_inpaint_pipeline_on_its_own_step_grid(inpaint_folder, masked):
    """Same components, strength, DDIM (eta 0), guidance and generator: our denoiser gives diffusers' inpainting images.

    diffusers' 9-channel pipelines never blend the kept region back into the latents, so this runs our sampler
    without SDEdit's per-step projection; with a mask, the difference comes only from the conditioning's inputs.
    """
    folder, pipe = inpaint_folder
    model = load_model(folder, device="cpu", precision="fp32")
    img = photo(SIZE, seed=3)
    mask = box_mask(SIZE, (8, 8, 40, 32)) if masked else Image.new("L", SIZE, 255)
    kw = dict(strength=0.6, n_steps=10, guidance=3.0)
    ref = diffusers_inpaint(pipe, img, mask, "a red barn", seed=0, **kw)
    ours = ours_on_diffusers_grid(model, pipe, img, mask if masked else None, "a red barn", seed=0, **kw)
    diff = float(np.abs(ours - ref).max())
    other_prompt = float(np.abs(diffusers_inpaint(pipe, img, mask, "a snowy mountain", seed=0, **kw) - ref).max())
    other_seed = float(np.abs(diffusers_inpaint(pipe, img, mask, "a red barn", seed=1, **kw) - ref).max())
    print(f"{pipe.__class__.__name__} masked={masked}: ours {diff:.2e}, other prompt {other_prompt:.3f}, "
          f"other seed {other_seed:.3f}")
    assert diff <= 4e-5, diff  # measured 1.9e-6 to 2.9e-6 (fp32, torch 2.13, AMD EPYC CPU): float32 rounding only
    assert other_prompt > 20 * diff and other_seed > 20 * diff  # the prompt and the seed matter: not a coincidence


def test_the_mask_channel_changes_the_prediction(inpaint_folder):
    """The extra channels reach the UNet: another mask gives another x0 estimate; a missing condition is refused."""
    folder, _ = inpaint_folder
    model = load_model(folder, device="cpu", precision="fp32")
    x_g = image_to_tensor(photo(SIZE, seed=1))
    gen = [torch.Generator().manual_seed(0)]
    z = model.encode(x_g, gen)
    den = model.denoiser(RunSettings(prompt="a red barn", guidance=3.0))
    sigma = torch.tensor([2.0])
    with torch.inference_mode():
        a = den(z, sigma, condition=model.edit_condition(x_g, None, [torch.Generator().manual_seed(0)]))
        m = mask_to_tensor(box_mask(SIZE, (0, 0, 32, 48)))
        b = den(z, sigma, condition=model.edit_condition(x_g, m, [torch.Generator().manual_seed(0)]))
        assert (a - b).abs().max() > 1e-3
        with pytest.raises(InputError, match="5 extra input channels"):
            den(z, sigma)


def test_masked_edit_keeps_every_unmasked_pixel_at_a_non_square_size(inpaint_folder):
    folder, _ = inpaint_folder
    model = load_model(folder, device="cpu", precision="fp32")
    img = photo((72, 40), seed=5)
    mask = box_mask(img.size, (16, 8, 48, 32))
    outs = edit(model, img, mask=mask, prompt="a lighthouse", t0=0.7, steps=4, seed=2, num_samples=2,
                progress=False)
    keep = np.asarray(mask) == 0
    for out in outs:
        arr = np.asarray(out)
        assert arr.shape == (40, 72, 3) and (arr[keep] == np.asarray(img)[keep]).all()
        assert (arr[~keep] != np.asarray(img)[~keep]).any()


def test_each_row_of_a_batch_gets_its_own_guide_and_mask(inpaint_folder):
    """Two guides with different masks in one network batch give (up to batched rounding) what each gives alone."""
    from sdedit.api import iter_edits, prepare_guide

    folder, _ = inpaint_folder
    model = load_model(folder, device="cpu", precision="fp32")
    guides = [prepare_guide(model, photo(SIZE, seed=7), box_mask(SIZE, (0, 0, 32, 48))),
              prepare_guide(model, photo(SIZE, seed=8), box_mask(SIZE, (24, 8, 64, 40)))]
    settings = RunSettings(prompt="a red barn", t0=0.8, steps=3, batch_size=2, seed=0, precision="fp32")
    together = [np.asarray(o, dtype=int) for o in iter_edits(model, guides, [0, 10], settings, progress=False)]
    alone = [np.asarray(next(iter_edits(model, [g], [s], settings.with_(batch_size=1), progress=False)), dtype=int)
             for g, s in zip(guides, [0, 10])]
    for a, b in zip(together, alone):
        assert np.abs(a - b).max() <= 2
    assert np.abs(together[0] - together[1]).max() > 50


def test_cli_edit_with_mask_on_an_inpainting_folder(inpaint_folder, tmp_path):
    folder, _ = inpaint_folder
    img = photo((72, 40), seed=6)
    img.save(tmp_path / "in.png")
    mask = box_mask(img.size, (8, 8, 40, 32))
    mask.save(tmp_path / "mask.png")
    r = subprocess.run([sys.executable, "-m", "sdedit", "edit", str(tmp_path / "in.png"), "--mask",
                        str(tmp_path / "mask.png"), "--model", str(folder), "--prompt", "a lighthouse", "--steps", "3",
                        "--seed", "4", "-q", "--precision", "fp32", "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    [path] = sorted((tmp_path / "out").glob("*.png"))
    out = np.asarray(Image.open(path).convert("RGB"))
    keep = np.asarray(mask) == 0
    assert (out[keep] == np.asarray(img)[keep]).all() and read_settings(path)["masked"]



@pytest.fixture(scope="module")
def fill_folder(tmp_path_factory):
    from .tiny_sd import make_tiny_flux

    folder = tmp_path_factory.mktemp("flux-fill") / "tiny-flux-fill"
    return folder, make_tiny_flux(folder, fill=True)


@pytest.mark.parametrize("masked", [True, False])
def test_matches_diffusers_flux_fill_on_its_own_step_grid(fill_folder, masked):
    """FLUX.1 Fill: packed latents + packed masked-image latents + packed 8x8 mask per token, as FluxFillPipeline."""
    folder, pipe = fill_folder
    model = load_model(folder, device="cpu", precision="fp32")
    assert model.info["inpainting"] is True and model.transformer.config.in_channels == 288
    model.t5_tokens = 16  # the tiny tokenizer's length, as max_sequence_length below
    img = photo(SIZE, seed=3)
    mask = box_mask(SIZE, (16, 8, 48, 40)) if masked else Image.new("L", SIZE, 255)
    strength, n, w = 0.6, 10, 3.5

    def theirs(text: str, seed: int = 0) -> np.ndarray:
        return pipe(text, image=img, mask_image=mask, strength=strength, num_inference_steps=n, guidance_scale=w,
                    height=SIZE[1], width=SIZE[0], max_sequence_length=16,
                    generator=torch.Generator().manual_seed(seed), output_type="np").images[0]

    ref = theirs("a red barn")
    flow = pipe.scheduler.sigmas[pipe.scheduler.begin_index:].double()  # the last call's shifted grid
    sigmas = (flow / (1 - flow)).float()
    gen = torch.Generator().manual_seed(0)
    x_g = pipe.image_processor.preprocess(img, height=SIZE[1], width=SIZE[0])  # its layout (see ours_on_diffusers_grid)
    assert torch.equal(x_g, image_to_tensor(img))
    z_g = model.encode(x_g, [gen])
    z = z_g + sigmas[0] * torch.randn(z_g.shape, generator=gen)
    condition = model.edit_condition(x_g, mask_to_tensor(mask) if masked else None, [gen])
    denoiser = functools.partial(model.denoiser(RunSettings(prompt="a red barn", guidance=w)), condition=condition)
    with torch.inference_mode():
        ours = decode_as_diffusers(model, SAMPLERS["ddim"](denoiser, z, sigmas), sigmas[-1])
    diff = float(np.abs(ours - ref).max())
    other_prompt = float(np.abs(theirs("a snowy mountain") - ref).max())
    other_seed = float(np.abs(theirs("a red barn", seed=1) - ref).max())
    print(f"FluxFillPipeline masked={masked}: ours {diff:.2e}, other prompt {other_prompt:.3f}, "
          f"other seed {other_seed:.3f}")
    assert diff <= 4e-5, diff  # measured 2.9e-6 and 3.7e-6 (fp32, torch 2.13, AMD EPYC CPU): float32 rounding only
    assert other_prompt > 20 * diff and other_seed > 20 * diff


def test_flux_fill_masked_edit_keeps_unmasked_pixels(fill_folder):
    folder, _ = fill_folder
    model = load_model(folder, device="cpu", precision="fp32")
    img = photo((80, 48), seed=5)
    mask = box_mask(img.size, (16, 8, 48, 32))
    out = np.asarray(edit(model, img, mask=mask, prompt="a lighthouse", guidance=3.5, t0=0.7, steps=3, seed=2,
                          progress=False)[0])
    keep = np.asarray(mask) == 0
    assert out.shape == (48, 80, 3) and (out[keep] == np.asarray(img)[keep]).all()
    assert (out[~keep] != np.asarray(img)[~keep]).any()
