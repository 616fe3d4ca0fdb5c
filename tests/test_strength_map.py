"""Per-pixel t0 (strength maps): exact release times, the posterior at each pixel's own t0, and the two limits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit import edit
from sdedit.engine.editing import edit_tensors, release_grid
from sdedit.engine.samplers import SAMPLERS

from .conftest import gaussian_model, t_for_sigma
from .test_samplers import GUIDE, MU, S0

STOCHASTIC = ["ddpm", "euler-maruyama", "dpm++2m-sde", "dpm++3m-sde"]
STEPS = {"ddpm": 400, "euler-maruyama": 400, "dpm++2m-sde": 60, "dpm++3m-sde": 60}


def test_release_times_are_grid_points_never_snapped():
    model = gaussian_model(MU, S0)
    g = torch.tensor([0.0, 0.33, 0.5, 1.0], dtype=torch.float64).reshape(1, 1, 1, 4)
    sigmas, release = release_grid(model.schedule, 0.8, 5, g)
    for level in (0.33 * 0.8, 0.5 * 0.8, 0.8):  # 0.264 lies between the uniform grid's 0.32 and 0.16
        assert any(abs(float(s) - model.schedule.sigma(level)) < 1e-9 for s in sigmas)
    assert torch.allclose(release.flatten(), torch.tensor([0.0, model.schedule.sigma(0.264),
                                                           model.schedule.sigma(0.4), model.schedule.sigma(0.8)],
                                                          dtype=torch.float64))
    assert len(sigmas) == 5 + 2 + 1  # the uniform steps, two inserted levels, and 0


@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_each_pixel_follows_the_posterior_at_its_own_t0(sampler):
    """Gaussian data: a pixel released at t0 * g has the exact posterior of x_g + sigma(t0 * g) z."""
    model = gaussian_model(MU, S0)
    sigmas_wanted = [0.3, 0.55, 0.8]  # 0.55 is between two points of the uniform grid
    t0 = t_for_sigma(model.schedule, 0.8)
    g = torch.zeros(1, 1, 24, 24)
    for i, s in enumerate(sigmas_wanted):
        g[..., 8 * i:8 * i + 8] = t_for_sigma(model.schedule, s) / t0
    n = 24
    x_g = torch.full((n, 3, 24, 24), GUIDE)
    out = edit_tensors(model.denoise, model.schedule, x_g, mask=None, t0=t0, steps=STEPS[sampler], repeats=1,
                       sampler=sampler, generator=[torch.Generator().manual_seed(i) for i in range(n)], strength=g)
    for i, s in enumerate(sigmas_wanted):
        k = S0**2 / (S0**2 + s**2)
        mean, var = MU + k * (GUIDE - MU), k * s**2 * (1 + k)
        band = out[..., 8 * i:8 * i + 8]
        assert band.mean().item() == pytest.approx(mean, abs=0.015), (s, band.mean().item(), mean)
        assert band.var().item() == pytest.approx(var, rel=0.06), (s, band.var().item(), var)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_a_binary_map_is_the_masked_edit_bit_for_bit(sampler):
    model = gaussian_model(MU, S0)
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    binary = np.zeros((32, 32), np.uint8)
    binary[4:20, 6:30] = 255
    kw = dict(t0=0.7, steps=6, sampler=sampler, seed=5, num_samples=2, progress=False, repeats=2)
    masked = edit(model, img, mask=binary, **kw)
    mapped = edit(model, img, strength_map=binary, **kw)
    for a, b in zip(masked, mapped):
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert np.array_equal(np.asarray(b)[binary == 0], img[binary == 0])


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m-sde", "ddpm"])
def test_a_constant_map_is_an_unmasked_edit_at_t0_times_g(sampler):
    model = gaussian_model(MU, S0)
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    grey = np.full((32, 32), 102, np.uint8)  # g = 0.4
    kw = dict(steps=7, sampler=sampler, seed=2, progress=False)
    mapped = edit(model, img, strength_map=grey, t0=0.9, **kw)[0]
    plain = edit(model, img, t0=0.9 * 102 / 255, **kw)[0]
    assert np.array_equal(np.asarray(mapped), np.asarray(plain))


def test_zero_pixels_are_exact_and_grey_levels_edit_less():
    model = gaussian_model(MU, S0)
    img = np.full((32, 32, 3), 230, np.uint8)
    ramp = np.zeros((32, 32), np.uint8)
    ramp[:, 8:16], ramp[:, 16:24], ramp[:, 24:] = 60, 150, 255
    outs = edit(model, img, strength_map=ramp, t0=1.0, steps=8, num_samples=6, seed=0, progress=False)
    change = [np.mean([np.abs(np.asarray(o, float)[:, a:b] - 230).mean() for o in outs])
              for a, b in ((0, 8), (8, 16), (16, 24), (24, 32))]
    assert change[0] == 0.0 and change[1] < change[2] < change[3]


def test_mask_grow_and_feather_blend_a_band_and_keep_everything_outside_exact():
    from sdedit.images import grow_and_feather

    model = gaussian_model(MU, S0)
    img = np.full((32, 32, 3), 200, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[12:20, 12:20] = 255
    soft = np.asarray(grow_and_feather(Image.fromarray(mask), 2, 3))
    assert (soft[10:22, 10:22] == 255).all() and 0 < soft[8, 16] < 255 and soft[0, 0] == 0
    outs = edit(model, img, mask=mask, mask_grow=2, mask_feather=3, t0=1.0, steps=6, num_samples=4, seed=1,
                progress=False)
    for o in outs:
        o = np.asarray(o, float)
        assert (o[soft == 0] == 200).all()  # outside mask and band: the photo, bit for bit
        inside = np.abs(o[soft == 255] - 200).mean()
        band = np.abs(o[(soft > 0) & (soft < 128)] - 200).mean()
        assert 0 < band < inside  # the band moves less: blended, no seam
        meta = json.loads(outs[0].info["sdedit"])
        assert (meta["mask_grow"], meta["mask_feather"]) == (2, 3)  # what acted is recorded
    with pytest.raises(Exception, match="mask grow"):
        edit(model, img, mask=mask, mask_grow=-1, progress=False)


def test_a_map_with_many_levels_is_posterized_and_the_progress_total_counts_its_levels():
    """Each grey level is one more step: a smooth map is posterized to strength_levels (8 by default), black
    stays exactly kept, what acted is recorded, and the step count the progress bar shows is the one run."""
    import json

    from sdedit import InputError
    from sdedit.api import batch_steps, iter_edits, prepare_guide
    from sdedit.api import Row as ApiRow
    from sdedit.settings import RunSettings

    model = gaussian_model(MU, S0)
    img = np.zeros((32, 32, 3), np.uint8)
    smooth = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) % 255 + 1).astype(np.uint8)
    smooth[:4] = 0
    for levels, steps in ((None, 8), (3, 3), (64, 64)):
        kw = {} if levels is None else {"strength_levels": levels}
        guide = prepare_guide(model, img, strength_map=smooth, **kw)
        assert guide.strength_levels == steps and guide.posterized == (levels or 8)
        assert (np.asarray(guide.strength)[:4] == 0).all() and (np.asarray(guide.strength)[4:] > 0).all()
        settings = RunSettings(t0=0.5, steps=5, seed=0)
        counted = []
        out = next(iter_edits(model, [guide], [0], settings, progress=False,
                              callback=lambda *a: counted.append(1)))
        meta = json.loads(out.info["sdedit"])
        assert (meta["strength_levels"], meta["strength_posterized"]) == (steps, levels or 8)
        total = batch_steps(model, ApiRow(guide, 0, 0, model.run_settings(settings)))
        assert len(counted) == total and 5 < total <= 5 + steps  # the grid's steps plus the levels off the grid
    few = np.where(smooth > 128, 255, np.where(smooth > 0, 100, 0)).astype(np.uint8)  # 2 levels: exact, as given
    guide = prepare_guide(model, img, strength_map=few)
    assert guide.posterized is None and set(np.unique(np.asarray(guide.strength))) == {0, 100, 255}
    for bad in (0, 65, 2.5):
        with pytest.raises(InputError, match="strength levels"):
            prepare_guide(model, img, strength_map=smooth, strength_levels=bad)


def test_a_grow_without_a_mask_or_a_map_of_another_size_is_refused():
    from sdedit import InputError

    model = gaussian_model(MU, S0)
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(InputError, match="apply to a mask"):
        edit(model, img, mask_grow=3, progress=False)
    with pytest.raises(InputError, match="strength map is 16x16"):
        edit(model, img, strength_map=np.zeros((16, 16), np.uint8), progress=False)


def test_batch_takes_a_folder_of_strength_maps_matched_by_stem(tmp_path):
    from sdedit.frontends.cli import main

    from .conftest import DATA

    inp, maps, masks = tmp_path / "in", tmp_path / "maps", tmp_path / "masks"
    for d in (inp, maps, masks):
        d.mkdir()
    rng = np.random.default_rng(0)
    level = np.zeros((20, 20), np.uint8)
    level[:10] = 255
    level[10:15] = 128
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(inp / f"{name}.png")
        Image.fromarray(level).save(maps / f"{name}.png")
    model = ["--model", str(DATA / "tiny.ckpt"), "--config", str(DATA / "tiny.yml"), "--steps", "3", "-q",
             "--fit", "stretch", "--original-size", "--seed", "1"]
    assert main(["batch", str(inp), "-o", str(tmp_path / "out"), "--strength-maps", str(maps), *model]) == 0
    for name in ("a", "b"):
        out = next((tmp_path / "out").glob(f"{name}*.png"))
        meta = json.loads(Image.open(out).info["sdedit"])
        assert meta["strength_map"] is True
        got, src = np.asarray(Image.open(out)), np.asarray(Image.open(inp / f"{name}.png"))
        assert (got[15:] == src[15:]).all() and not (got[:10] == src[:10]).all()
    assert main(["batch", str(inp), "-o", str(tmp_path / "o2"), "--strength-maps", str(maps), "--masks", str(masks),
                 *model]) == 2


def test_a_level_next_to_a_grid_point_takes_its_place_and_far_ones_are_inserted():
    from sdedit.engine.editing import merge_levels

    base = [10.0, 5.0, 2.5, 1.25]
    merged = merge_levels(base, [10.0, 2.45, 4.0])
    assert sorted(merged, reverse=True) == [10.0, 5.0, 4.0, 2.45, 1.25]  # 2.45 replaced 2.5; 4.0 inserted
    assert merge_levels(base, [10.0]) == base


def test_multistep_samplers_skip_a_much_shorter_earlier_step():
    from sdedit.engine.samplers import MIN_STEP_RATIO, recent

    d = torch.zeros(1)
    assert recent([(d, 0.5), (d, 0.4)], 1.0) == [(d, 0.5), (d, 0.4)]
    assert recent([(d, 0.5), (d, 0.01)], 1.0) == [(d, 0.5)]
    assert recent([(d, MIN_STEP_RATIO / 2)], 1.0) == []


@pytest.mark.parametrize("sampler", ["dpm++2m-sde", "dpm++3m-sde"])
def test_eight_bit_levels_beside_the_grid_keep_the_posterior(sampler):
    """Outpainting's map: levels of 8-bit greys (76/255 of t0 = 1 is not the grid's 0.3) beside the uniform grid's
    points; each band still has the posterior of its own t0 (before, a step of almost no length between a level
    and a grid point blew up the multistep correction)."""
    model = gaussian_model(MU, S0)
    greys = [76, 128, 204, 255]
    g = torch.zeros(1, 1, 8, 8 * len(greys))
    for i, v in enumerate(greys):
        g[..., 8 * i:8 * i + 8] = v / 255
    n = 16
    out = edit_tensors(model.denoise, model.schedule, torch.full((n, 3, 8, 8 * len(greys)), GUIDE), mask=None,
                       t0=0.999, steps=20, repeats=1, sampler=sampler,
                       generator=[torch.Generator().manual_seed(i) for i in range(n)], strength=g)
    assert torch.isfinite(out).all()
    for i, v in enumerate(greys):
        s = model.schedule.sigma(0.999 * v / 255)
        k = S0**2 / (S0**2 + s**2)
        band = out[..., 8 * i:8 * i + 8]
        assert band.mean().item() == pytest.approx(MU + k * (GUIDE - MU), abs=0.05), (v, band.mean().item())
        assert band.std().item() < 2 * S0
