"""FlowEdit on tiny SD3 and FLUX: the same prompt gives the VAE round trip, another prompt edits, masks keep pixels,
the paper's loop written out here gives the same latents, and non-flow models are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit import InputError, edit, load_model
from sdedit.frontends.cli import main
from sdedit.images import image_to_tensor, tensor_to_images

from .helpers import random_image
from .tiny_sd import make_tiny_flux, make_tiny_sd, make_tiny_sd3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowedit")
    make_tiny_sd3(root / "sd3")
    make_tiny_flux(root / "flux")
    return root


def round_trip(model, img, seed):
    """The guide's latents (the run's first posterior draw) decoded: what FlowEdit returns when nothing moves."""
    z = model.encode(image_to_tensor(img), [torch.Generator().manual_seed(seed)])
    return np.asarray(tensor_to_images(model.decode(z))[0])


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_same_prompt_returns_the_vae_round_trip_and_another_prompt_edits(folders, family):
    model = load_model(folders / family, device="cpu", precision="fp32")
    img = random_image((64, 48), seed=1)
    kw = dict(method="flowedit", t0=0.8, steps=4, seed=3, progress=False)
    same = edit(model, img, prompt="a red barn", source_prompt="a red barn", **kw)[0]
    assert np.array_equal(np.asarray(same), round_trip(model, img, 3))
    other = edit(model, img, prompt="a blue lake at night", source_prompt="a red barn", **kw)[0]
    assert np.abs(np.asarray(other, int) - np.asarray(same, int)).max() > 5
    meta = json.loads(other.info["sdedit"])
    assert meta["method"] == "flowedit" and meta["source_prompt"] == "a red barn" and meta["sampler"] == "flowedit"
    mask = np.zeros((48, 64), np.uint8)
    mask[10:40, 20:60] = 255
    masked = edit(model, img, mask=Image.fromarray(mask), prompt="a blue lake at night", source_prompt="a red barn",
                  **kw)[0]
    assert np.array_equal(np.asarray(masked)[mask == 0], np.asarray(img)[mask == 0])


def paper_loop(model, settings, img, seed):
    """FlowEdit's Algorithm 1 as its authors' code runs it, in flow space with velocities v = (x_t - x0) / t from the
    model's own data prediction, on the same grid and the same noise draws (n_avg = 1, n_min = 0)."""
    from sdedit.engine.schedules import sigma_grid

    gen = torch.Generator().manual_seed(seed)
    x_src = model.encode(image_to_tensor(img), [gen])
    src = model.denoiser(settings.with_(prompt=settings.source_prompt))
    tar = model.denoiser(settings)
    schedule = model.schedule_for(img.size)
    ts = [s / (1 + s) for s in sigma_grid(schedule, settings.t0, settings.steps).tolist()]

    def velocity(d, x_t, t):
        x0 = d(x_t / (1 - t), torch.full((x_t.shape[0],), t / (1 - t)))
        return (x_t - x0) / t

    z = x_src.clone()
    for t_i, t_im1 in zip(ts[:-1], ts[1:]):
        noise = torch.randn(x_src.shape, generator=gen)
        zt_src = (1 - t_i) * x_src + t_i * noise
        zt_tar = z + zt_src - x_src
        z = z + (t_im1 - t_i) * (velocity(tar, zt_tar, t_i) - velocity(src, zt_src, t_i))
    return z


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flowedit_is_the_papers_loop_on_the_same_components(folders, family, monkeypatch):
    from sdedit.settings import RunSettings

    model = load_model(folders / family, device="cpu", precision="fp32")
    img = random_image((64, 64), seed=2)
    settings = model.run_settings(RunSettings(method="flowedit", t0=0.7, steps=5, seed=4, prompt="a snowy hill",
                                              source_prompt="a green hill", guidance=2.0))
    got = {}
    real = model.decode
    monkeypatch.setattr(model, "decode", lambda z: got.setdefault("z", z.clone()) is not None and real(z))
    edit(model, img, settings=settings, progress=False)
    want = paper_loop(model, settings, img, 4)
    assert (got["z"] - want).abs().max().item() <= 1e-4


def test_flowedit_on_a_diffusion_model_and_its_settings_without_it_are_refused(tmp_path, capsys):
    make_tiny_sd(tmp_path / "sd")
    model = load_model(tmp_path / "sd", device="cpu")
    with pytest.raises(InputError, match="rectified-flow"):
        edit(model, random_image((32, 32)), method="flowedit", source_prompt="a", prompt="b", progress=False)
    random_image((32, 32)).save(tmp_path / "in.png")
    capsys.readouterr()
    for args, needle in ((["--source-prompt", "a cat"], "--source-prompt is FlowEdit's"),
                         (["--method", "flowedit", "--sampler", "ddim"], "--sampler does not act"),
                         (["--method", "flowedit", "--t0", "auto"], "FlowEdit needs a number"),
                         (["--method", "flowedit", "--flowedit-samples", "0"], "--flowedit-samples")):
        assert main(["edit", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "-q", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err


def test_tiled_flowedit_is_the_untiled_one_on_a_canvas_of_one_tile(folders):
    model = load_model(folders / "sd3", device="cpu", precision="fp32")
    kw = dict(method="flowedit", source_prompt="a hill", prompt="a lake", t0=0.8, steps=3, seed=1, progress=False)
    img = random_image((32, 32), seed=1)
    assert np.array_equal(np.asarray(edit(model, img, **kw)[0]), np.asarray(edit(model, img, tile=32, **kw)[0]))
    assert edit(model, random_image((96, 32), seed=2), tile=32, tile_overlap=16, **kw)[0].size == (96, 32)


def test_batch_runs_flowedit_on_every_image(folders, tmp_path):
    from sdedit.images import read_settings

    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(2):
        random_image((32, 32), seed=i).save(inp / f"{i}.png")
    assert main(["batch", str(inp), "-o", str(tmp_path / "out"), "-q", "--model", str(folders / "sd3"),
                 "--method", "flowedit", "--source-prompt", "a hill", "--prompt", "a lake", "--t0", "0.7",
                 "--steps", "2"]) == 0
    metas = [read_settings(p) for p in sorted((tmp_path / "out").glob("*.png"))]
    assert len(metas) == 2 and all(m["method"] == "flowedit" and m["source_prompt"] == "a hill" for m in metas)
