"""Samplers and SDEdit against a model with known answers (Gaussian data), and against the released algorithm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdedit import edit
from sdedit.engine.editing import edit_tensors
from sdedit.engine.samplers import SAMPLERS, randn_like
from sdedit.engine.schedules import DiscreteVPSchedule, VESchedule, sigma_grid

from .conftest import gaussian_model, t_for_sigma

MU, S0, GUIDE, SIGMA0 = 0.1, 0.5, 0.9, 0.8
K = S0**2 / (S0**2 + SIGMA0**2)
# Exact answers: the reverse SDE samples the posterior p(x0 | x_t0); the ODE maps x_t0 deterministically.
SDE_MEAN, SDE_VAR = MU + K * (GUIDE - MU), K * SIGMA0**2 * (1 + K)
ODE_MEAN, ODE_VAR = MU + math.sqrt(K) * (GUIDE - MU), K * SIGMA0**2
TARGET = {"ddpm": (SDE_MEAN, SDE_VAR, 400), "euler-maruyama": (SDE_MEAN, SDE_VAR, 400),
          "ddim": (ODE_MEAN, ODE_VAR, 200), "dpm++2m": (ODE_MEAN, ODE_VAR, 25),
          "dpm++2m-sde": (SDE_MEAN, SDE_VAR, 60), "dpm++3m-sde": (SDE_MEAN, SDE_VAR, 60),
          "heun": (ODE_MEAN, ODE_VAR, 12)}


def run_gaussian(sampler: str, steps: int, mask: torch.Tensor | None = None, n: int = 16) -> torch.Tensor:
    model = gaussian_model(MU, S0)
    t0 = t_for_sigma(model.schedule, SIGMA0)
    x_g = torch.full((n, 3, 32, 32), GUIDE)
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    return edit_tensors(model.denoise, model.schedule, x_g, mask=mask, t0=t0, steps=steps, repeats=1,
                        sampler=sampler, generator=gens)


def test_targets_are_distinct():
    assert abs(SDE_MEAN - ODE_MEAN) > 0.15 and abs(SDE_VAR - ODE_VAR) > 0.04


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sdedit_output_has_the_posterior_mean_and_variance(sampler):
    mean, var, steps = TARGET[sampler]
    out = run_gaussian(sampler, steps)
    assert out.mean().item() == pytest.approx(mean, abs=0.01)
    assert out.var().item() == pytest.approx(var, rel=0.04)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_masked_editing_keeps_the_guide_and_edits_the_rest(sampler):
    mean, var, steps = TARGET[sampler]
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :, :16] = 1.0  # edit the left half
    out = run_gaussian(sampler, steps if sampler.startswith("dpm++") or sampler == "heun" else steps // 4, mask=mask)
    assert torch.equal(out[..., 16:], torch.full_like(out[..., 16:], GUIDE))
    edited = out[..., :16]
    assert edited.mean().item() == pytest.approx(mean, abs=0.02)
    assert edited.var().item() == pytest.approx(var, rel=0.08)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("t0", [1e-3, 1e-6])
def test_small_t0_returns_the_input(sampler, t0):
    model = gaussian_model(MU, S0)
    vp = DiscreteVPSchedule()
    img = (torch.rand(1, 3, 32, 32) * 255).round() / 127.5 - 1
    out = edit_tensors(model.denoise, vp, img, mask=None, t0=t0, steps=3, repeats=1, sampler=sampler,
                       generator=torch.Generator().manual_seed(0))
    # The output differs from the input by at most a few sigma(t0): 0.01 at t0 = 1e-3, 3e-4 at 1e-6.
    assert (out - img).abs().max().item() < 6 * vp.sigma(t0)
    assert (out - img).abs().max().item() > 0.0


def test_keep_everything_mask_returns_input_exactly():
    model = gaussian_model(MU, S0)
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    black = np.zeros((40, 56), np.uint8)
    for sampler in SAMPLERS:
        outs = edit(model, img, mask=black, t0=0.9, steps=5, sampler=sampler, num_samples=2, seed=3,
                    progress=False, fit="stretch", original_size=True)
        for o in outs:
            assert np.array_equal(np.asarray(o), img)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_seed_fixes_each_output_whatever_the_batching(sampler):
    model = gaussian_model(MU, S0)
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    kw = dict(t0=0.6, steps=6, sampler=sampler, seed=11, progress=False, repeats=2)
    together = edit(model, img, num_samples=3, batch_size=3, **kw)
    alone = edit(model, img, num_samples=3, batch_size=1, **kw)
    third = edit(model, img, num_samples=1, **{**kw, "seed": 13})
    other = edit(model, img, num_samples=1, **{**kw, "seed": 12})
    for a, b in zip(together, alone):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(together[2]), np.asarray(third[0]))
    if sampler in ("ddpm", "euler-maruyama"):
        assert not np.array_equal(np.asarray(together[0]), np.asarray(other[0]))


def test_t0_is_exact_not_snapped():
    vp = DiscreteVPSchedule()
    sig = sigma_grid(vp, 0.4567, 7)
    assert len(sig) == 8 and sig[-1] == 0.0 and torch.all(sig[:-1] > sig[1:])
    assert sig[0].item() == vp.sigma(0.4567)
    assert vp.sigmas[455] < sig[0] < vp.sigmas[456]
    assert vp.step(sig[:1].float()).item() == pytest.approx(455.7, abs=1e-3)
    ve = VESchedule(0.01, 380.0, data_range=1.0)
    assert sigma_grid(ve, 0.45, 3)[0].item() == pytest.approx(2 * 0.01 * 38000**0.45)


@pytest.mark.parametrize("t0, steps, repeats, message", [
    (0.0, 10, 1, "t0 must be in"), (1.5, 10, 1, "t0 must be in"), (-0.1, 10, 1, "t0 must be in"),
    (0.5, 0, 1, "steps must be"), (0.5, 10, 0, "repeats must be"),
])
def test_bad_settings_raise(t0, steps, repeats, message):
    model = gaussian_model()
    with pytest.raises(ValueError, match=message):
        edit(model, np.zeros((8, 8, 3), np.uint8), t0=t0, steps=steps, repeats=repeats, progress=False)


def released_sdedit(eps_net, x0: torch.Tensor, t: int, gens: list[torch.Generator]) -> torch.Tensor:
    """The released SDEdit loop (one repeat, no mask), written from its description: VP form, integer steps."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas = 1 - betas
    a = alphas.cumprod(0)
    a_prev = torch.cat([torch.ones(1, dtype=torch.float64), a[:-1]])
    logvar = (betas * (1 - a_prev) / (1 - a)).clamp_min(1e-20).log()  # fixedsmall
    e = randn_like(x0, gens).double()
    x = x0.double() * a[t - 1].sqrt() + e * (1 - a[t - 1]).sqrt()
    for i in reversed(range(t)):
        eps = eps_net(x.float(), torch.full((x.shape[0],), float(i))).double()
        mean = (x - betas[i] / (1 - a[i]).sqrt() * eps) / alphas[i].sqrt()
        x = mean + (torch.exp(0.5 * logvar[i]) * randn_like(x0, gens).double() if i > 0 else 0.0)
    return x.float()


@pytest.mark.parametrize("t", [1, 60])
def test_ddpm_sampler_is_the_released_algorithm_step_for_step(tiny_model, t):
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = released_sdedit(tiny_model.denoiser_net.eps, x0, t, [torch.Generator().manual_seed(s) for s in (5, 6)])
        ours = edit_tensors(tiny_model.denoise, tiny_model.schedule, x0, mask=None, t0=t / 1000, steps=t, repeats=1,
                            sampler="ddpm", generator=[torch.Generator().manual_seed(s) for s in (5, 6)])
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("schedule", [DiscreteVPSchedule(), VESchedule(0.01, 380.0, data_range=1.0)])
def test_the_karras_grid_starts_at_exactly_sigma_t0_and_is_rho_spaced(schedule):
    from sdedit.engine.schedules import KARRAS_RHO, KARRAS_T_MIN

    sig = sigma_grid(schedule, 0.4567, 8, "karras")
    assert len(sig) == 9 and sig[-1] == 0.0 and torch.all(sig[:-1] > sig[1:])
    assert sig[0].item() == schedule.sigma(0.4567)  # t0 exact, not snapped
    assert sig[-2].item() == pytest.approx(schedule.sigma(KARRAS_T_MIN), rel=1e-9)
    roots = sig[:-1] ** (1.0 / KARRAS_RHO)
    assert torch.allclose(roots[1:] - roots[:-1], (roots[1:] - roots[:-1]).mean().expand(7), rtol=1e-6)
    assert not torch.allclose(sig, sigma_grid(schedule, 0.4567, 8, "uniform"))
    assert sigma_grid(schedule, 0.4567, 1, "karras").tolist() == [schedule.sigma(0.4567), 0.0]


@pytest.mark.parametrize("sampler", ["dpm++2m-sde", "dpm++2m", "heun"])
def test_the_karras_grid_keeps_the_analytic_answers(sampler):
    mean, var, steps = TARGET[sampler]
    model = gaussian_model(MU, S0)
    t0 = t_for_sigma(model.schedule, SIGMA0)
    gens = [torch.Generator().manual_seed(i) for i in range(16)]
    out = edit_tensors(model.denoise, model.schedule, torch.full((16, 3, 32, 32), GUIDE), mask=None, t0=t0,
                       steps=steps, repeats=1, sampler=sampler, generator=gens, grid="karras")
    assert out.mean().item() == pytest.approx(mean, abs=0.01)
    assert out.var().item() == pytest.approx(var, rel=0.05)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_divergence_is_reported_once_with_the_first_bad_step(sampler):
    calls = []

    def breaks_at_third(x, sigma):
        calls.append(1)
        return x * float("nan") if len(calls) == 3 else x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)

    sigmas = sigma_grid(VESchedule(0.01, 50.0, data_range=2.0), 0.5, 6)
    with pytest.raises(FloatingPointError, match="NaN or inf at sigma=") as e:
        SAMPLERS[sampler](breaks_at_third, torch.zeros(2, 3, 8, 8), sigmas,
                          generator=[torch.Generator().manual_seed(i) for i in range(2)])
    first = 3 if sampler != "heun" else 2  # heun's third evaluation is step 2's first
    assert f"(step {first})" in str(e.value)


def test_the_driver_reads_the_device_once_per_pass(monkeypatch):
    """No per-step host synchronisation: besides reading the sigma grid once, the only read of a tensor's value is
    the divergence check after the loop, however many steps."""
    reads: dict[str, int] = {}
    for name in ("__int__", "__float__", "__bool__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original):
            reads[_name] = reads.get(_name, 0) + 1
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counting)
    sigmas = sigma_grid(VESchedule(0.01, 50.0, data_range=2.0), 0.5, 20)
    SAMPLERS["dpm++2m-sde"](lambda x, s: x / (1 + s.reshape(-1, 1, 1, 1) ** 2), torch.zeros(2, 3, 8, 8), sigmas,
                            generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert reads == {"__float__": len(sigmas), "__int__": 1}
