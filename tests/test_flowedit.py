"""FlowEdit on tensors: nothing moves when source and target agree, the exact ODE on Gaussian data, masks, per-pixel
t0 and repeats."""

from __future__ import annotations

import math

import pytest
import torch

from sdedit.engine.flowedit import flowedit_tensors
from sdedit.engine.schedules import FlowSchedule

from .conftest import GaussianDenoiser

S0, MU_SRC, MU_TAR = 0.5, 0.1, -0.3


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def exact_edit(x: float, t0: float, mu_src: float = MU_SRC, mu_tar: float = MU_TAR, n: int = 20000) -> float:
    """FlowEdit's ODE on Gaussian data, where the noise cancels: de/dt = (e - (1 - k) dmu - k e (1 + sigma)) / t for
    e = z - x_src, sigma = t / (1 - t), k = s0^2 / (s0^2 + sigma^2); RK4 from t0 to 0, e(t0) = 0."""
    def f(t: float, e: float) -> float:
        if t <= 0.0:
            return -e  # the limit at t = 0
        sigma = t / (1 - t)
        k = S0**2 / (S0**2 + sigma**2)
        return (e - (1 - k) * (mu_tar - mu_src) - k * e * (1 + sigma)) / t

    e, h = 0.0, -t0 / n
    t = t0
    for _ in range(n):
        a = f(t, e)
        b = f(t + h / 2, e + h / 2 * a)
        c = f(t + h / 2, e + h / 2 * b)
        d = f(t + h, e + h * c)
        e, t = e + h / 6 * (a + 2 * b + 2 * c + d), t + h
    return x + e


def test_the_same_source_and_target_leave_the_input_exactly():
    d = GaussianDenoiser(MU_SRC, S0)
    x = torch.randn(2, 3, 8, 8)
    out = flowedit_tensors(d, d, FlowSchedule(), x, t0=0.9, steps=7, samples=2, generator=gens(2))
    assert torch.equal(out, x)


@pytest.mark.parametrize("t0", [0.5, 0.9])
def test_gaussian_data_follow_flowedits_exact_ode(t0):
    src, tar = GaussianDenoiser(MU_SRC, S0), GaussianDenoiser(MU_TAR, S0)
    x = torch.tensor([-0.8, 0.0, 0.7]).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    out = flowedit_tensors(src, tar, FlowSchedule(), x, t0=t0, steps=1500, generator=gens(1))
    want = torch.tensor([exact_edit(v, t0) for v in (-0.8, 0.0, 0.7)]).view(1, 3, 1, 1)
    assert torch.allclose(out, want.expand_as(out), atol=2e-3), (out[0, :, 0, 0], want.flatten())
    assert (out - x).abs().min() > 0.05  # it did edit


def test_a_mask_keeps_its_pixels_and_a_strength_map_starts_each_at_its_own_t0():
    src, tar = GaussianDenoiser(MU_SRC, S0), GaussianDenoiser(MU_TAR, S0)
    x = torch.full((1, 3, 4, 4), 0.2)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:] = 1
    out = flowedit_tensors(src, tar, FlowSchedule(), x, t0=0.8, steps=40, mask=mask, generator=gens(1))
    assert torch.equal(out[..., :2], x[..., :2]) and (out[..., 2:] - 0.2).abs().min() > 0.05
    g = torch.zeros(1, 1, 4, 4)
    g[..., 1] = 0.5
    g[..., 2:] = 1.0
    mapped = flowedit_tensors(src, tar, FlowSchedule(), x, t0=0.8, steps=400, strength=g, generator=gens(1))
    assert torch.equal(mapped[..., 0], x[..., 0])
    assert mapped[0, 0, 0, 1].item() == pytest.approx(exact_edit(0.2, 0.4), abs=3e-3)
    assert mapped[0, 0, 0, 3].item() == pytest.approx(exact_edit(0.2, 0.8), abs=3e-3)


def test_repeats_apply_the_edit_again_from_its_result_with_the_same_source():
    src, tar = GaussianDenoiser(MU_SRC, S0), GaussianDenoiser(MU_TAR, S0)
    x = torch.zeros(1, 3, 2, 2)
    once = flowedit_tensors(src, tar, FlowSchedule(), x, t0=0.6, steps=30, generator=gens(1))
    twice = flowedit_tensors(src, tar, FlowSchedule(), x, t0=0.6, steps=30, repeats=2, generator=gens(1))
    assert (twice - x).abs().mean() > (once - x).abs().mean() > 0
    assert math.isfinite(float(twice.sum()))
