"""FLUX.1 Kontext: the input image's latents as reference tokens beside the noisy latents (offline, tiny components)."""

from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit import edit, load_model, read_settings
from sdedit.engine.samplers import SAMPLERS
from sdedit.engine.schedules import FLOW_T_CAP
from sdedit.errors import InputError
from sdedit.frontends.cli import main
from sdedit.images import image_to_tensor
from sdedit.loading.presets import PIPELINE_PRESETS
from sdedit.settings import RunSettings

from .helpers import decode_as_diffusers, flow_sigmas, random_image as photo
from .tiny_sd import make_tiny_flux_kontext


@pytest.fixture(scope="module")
def kontext_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kontext") / "tiny-kontext"
    return folder, make_tiny_flux_kontext(folder)


def ours_on_grid(model, img: Image.Image, sigmas: torch.Tensor, settings: RunSettings
                 ) -> tuple[np.ndarray, torch.Tensor]:
    """Our side at t0 = 1 on a pipeline's grid: the reference from the guide, noise from a generator seeded 0 (the
    pipeline draws only its latents from it; the reference is the posterior's mode), `ddim`, decoded as diffusers;
    and the packed flow latents we start from."""
    from sdedit.families.flux import pack

    x_g = image_to_tensor(img)
    reference = model.edit_condition(x_g, None, [torch.Generator().manual_seed(0)])
    z_g = model.encode(x_g, [torch.Generator().manual_seed(1)])  # at t0 = 1 it weighs FLOW_T_CAP of the start
    z = z_g + sigmas[0] * torch.randn(z_g.shape, generator=torch.Generator().manual_seed(0))
    denoiser = functools.partial(model.denoiser(settings), condition=reference)
    with torch.inference_mode():
        out = decode_as_diffusers(model, SAMPLERS["ddim"](denoiser, z, sigmas), sigmas[-1])
    return out, pack(z / (1 + sigmas[0]))


def unshifted(model, times: torch.Tensor, size: tuple[int, int]) -> list[float]:
    """The times u whose resolution-dependent shift (diffusers' and ours: s u / (1 + (s - 1) u)) gives `times`."""
    s = model.schedule_for(size).shift
    t = times.double()
    return (t / (s - (s - 1) * t)).tolist()


def test_matches_diffusers_flux_kontext_at_t0_1_on_its_grid(kontext_folder):
    from sdedit.families.flux_kontext import FluxKontextModel

    folder, pipe = kontext_folder
    model = load_model(folder, device="cpu", precision="fp32")
    assert isinstance(model, FluxKontextModel)
    model.t5_tokens = 16  # the tiny tokenizer's length, as max_sequence_length below
    img, other = photo((64, 48), seed=3), photo((64, 48), seed=4)
    n, w, prompt = 8, 2.5, "a red barn"
    settings = RunSettings(prompt=prompt, guidance=w)

    def theirs(image: Image.Image, text: str = prompt, **grid: object) -> np.ndarray:
        # max_area = the frame's area and no auto-resize: the pipeline works at the input's own size, as SDEdit does
        return pipe(image=image, prompt=text, num_inference_steps=n, guidance_scale=w, height=48, width=64,
                    max_area=64 * 48, _auto_resize=False, max_sequence_length=16,
                    generator=torch.Generator().manual_seed(0), output_type="np", **grid).images[0]

    ref = theirs(img)
    times = pipe.scheduler.sigmas[:n].clone()  # the last call's grid, shifted for this image's 12 noisy tokens
    assert float(times[0]) == 1.0
    times[0] = 1.0 - FLOW_T_CAP  # our t0 = 1: pure noise up to FLOW_T_CAP of the guide
    ours, start = ours_on_grid(model, img, flow_sigmas(torch.cat([times, torch.zeros(1)])), settings)
    diff = np.abs(ours - ref).max()
    print(f"FLUX.1 Kontext parity at t0 = 1 on its grid: {diff:.2e}")
    assert diff <= 1e-3, diff  # measured 6.8e-4: the pipeline starts at t = 1, ours at 1 - FLOW_T_CAP
    # given our start and our first time, the pipeline agrees to float32 rounding: the cap is the only difference
    same = theirs(img, latents=start, sigmas=unshifted(model, times, (64, 48)))
    exact = np.abs(ours - same).max()
    print(f"FLUX.1 Kontext parity from the same start: {exact:.2e}")
    assert exact < 4e-5, exact
    assert np.abs(theirs(other, latents=start, sigmas=unshifted(model, times, (64, 48))) - same).max() > 100 * exact
    assert np.abs(theirs(img, "a snowy mountain") - ref).max() > 20 * diff


def test_from_pure_noise_the_output_depends_on_the_input(kontext_folder, tmp_path):
    """At t0 = 1 plain FLUX sees the input only as FLOW_T_CAP of its start; Kontext sees it whole, as its reference
    (the tiny random transformer gives the reference tokens little weight: a few levels in 255, far above FLUX's)."""
    from .tiny_sd import make_tiny_flux

    folder, _ = kontext_folder
    make_tiny_flux(tmp_path / "flux")  # the same weights, as plain FLUX

    def change(source) -> float:
        model = load_model(source, device="cpu", precision="fp32")
        run = lambda image: np.asarray(edit(model, image, prompt="x", t0=1.0, steps=3, seed=0,  # noqa: E731
                                            progress=False)[0], float)
        black, white = run(Image.new("RGB", (48, 32))), run(Image.new("RGB", (48, 32), (255, 255, 255)))
        assert np.array_equal(run(Image.new("RGB", (48, 32))), black)  # reproducible by seed
        return float(np.abs(black - white).mean())

    kontext, flux = change(folder), change(tmp_path / "flux")
    assert kontext > 0.05 and flux < 0.01, (kontext, flux)  # measured 0.14 and 0.0015


def test_masked_edits_keep_unmasked_pixels_exact(kontext_folder, tmp_path):
    folder, _ = kontext_folder
    img = photo((66, 50), seed=5)
    img.save(tmp_path / "in.png")
    mask = Image.new("L", img.size, 0)
    mask.paste(255, (10, 10, 40, 30))
    mask.save(tmp_path / "mask.png")
    for t0 in ("0.6", "1"):
        out_dir = tmp_path / f"o{t0}"
        assert main(["edit", str(tmp_path / "in.png"), "--model", str(folder), "--prompt", "a lighthouse", "--t0",
                     t0, "--steps", "3", "-q", "--mask", str(tmp_path / "mask.png"), "-o", str(out_dir)]) == 0
        out = np.asarray(Image.open(next(out_dir.glob("*.png"))).convert("RGB"))
        keep = np.asarray(mask) == 0
        assert out.shape[:2] == (50, 66) and (out[keep] == np.asarray(img)[keep]).all()
        assert (out[~keep] != np.asarray(img)[~keep]).any()


def test_a_tiled_edit_cuts_the_reference_per_tile(kontext_folder):
    from sdedit.tiling import min_tile

    folder, _ = kontext_folder
    model = load_model(folder, device="cpu", precision="fp32")
    side = min_tile(model)  # 512 px
    kw = dict(t0=0.7, steps=2, seed=9, progress=False, prompt="a hill")
    img = photo((side, side), seed=5)
    # one tile is the whole canvas, its reference the whole guide: the untiled edit, bit for bit
    assert np.array_equal(np.asarray(edit(model, img, **kw)[0]), np.asarray(edit(model, img, tile=side, **kw)[0]))


def test_the_folder_is_kontext_not_plain_flux(kontext_folder, tmp_path):
    folder, _ = kontext_folder
    model = load_model(folder, device="cpu")
    assert model.info["family"] == "flux-kontext" and not model.takes_controlnets
    assert model.run_settings(RunSettings(prompt="x")).guidance == 2.5  # Kontext dev's default
    photo((32, 32), seed=1).save(tmp_path / "in.png")
    assert main(["edit", str(tmp_path / "in.png"), "--model", str(folder), "--prompt", "x", "--steps", "2", "-q",
                 "-o", str(tmp_path / "o")]) == 0
    assert read_settings(next((tmp_path / "o").glob("*.png")))["guidance"] == 2.5
    preset = PIPELINE_PRESETS["kontext-dev"]
    assert (preset.repo_id, preset.family, preset.gated) == ("black-forest-labs/FLUX.1-Kontext-dev", "flux-kontext",
                                                             True)


@pytest.mark.parametrize("kind", ["FluxControlPipeline", "Flux2Pipeline", "FluxPriorFooPipeline"])
def test_an_unsupported_flux_pipeline_class_is_refused_in_one_line(kontext_folder, tmp_path, capsys, kind):
    folder, _ = kontext_folder
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": kind}))
    with pytest.raises(InputError, match=kind) as info:
        load_model(other, device="cpu")
    assert "\n" not in str(info.value) and "FluxKontextPipeline" in str(info.value)
    if kind == "FluxControlPipeline":  # a class another loader runs: named, not loaded as something else
        from sdedit.families.flux import load_flux

        with pytest.raises(InputError, match="FluxKontextPipeline folder, which another loader runs"):
            load_flux(folder, device="cpu")
    photo((32, 32), seed=1).save(tmp_path / "in.png")
    assert main(["edit", str(tmp_path / "in.png"), "--model", str(other), "--prompt", "x", "-q",
                 "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert kind in err and len(err.strip().splitlines()) == 1, err
