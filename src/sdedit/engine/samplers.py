"""Reverse-time samplers over a decreasing list of sigmas: one driver, one step function per method.

    sample_x(denoiser, x, sigmas, *, project=None, generator=None, callback=None) -> x

`denoiser(x, sigma)` follows the VE contract; `sigmas` ends at 0.  The driver (k-diffusion's and
EDM's shape) owns the loop: it evaluates D once per step, calls `callback(i, sigma, x, denoised)`,
hands the step function what it needs, then applies `project(x, sigma_next)` (masked editing).
Scalars (sigmas, step sizes, coefficients) are Python floats, i.e. float64, as in EDM; the only
host read of a device value is the divergence check, once per pass.  `generator` is one
torch.Generator or a list with one per batch row, so a row's noise does not depend on what else
is in the batch; noise is drawn on each generator's own device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Project = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]
Generators = torch.Generator | Sequence[torch.Generator] | None


def randn_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn row by row when given one generator per row, on each
    generator's device (the CPU when none), then moved to x's."""
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    rows = [torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device) for g in generator]
    return torch.stack(rows).to(x.device)


@dataclass
class Step:
    """What a step function sees: the state at sigma s, D there, the target sigma, and the driver's services."""

    x: torch.Tensor  # the sample at sigma s
    d: torch.Tensor  # D(x, s)
    s: float  # this step's sigma
    s_next: float  # the next sigma (0 at the last step)
    history: list[tuple[torch.Tensor, float]]  # (D, h = log(s / s_next)) of earlier steps, latest first
    denoise_next: Callable[[torch.Tensor], torch.Tensor]  # D(y, s_next) (Heun's corrector)
    noise: Callable[[], torch.Tensor]  # fresh standard normal noise shaped like x, from the run's generators


StepFunction = Callable[[Step], torch.Tensor]


class Divergence:
    """The divergence check without a host sync per step: the first step whose D is not finite, read once."""

    def __init__(self, device: torch.device):
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def watch(self, i: int, d: torch.Tensor) -> None:
        bad = ~torch.isfinite(d).all()
        self.first = torch.where(bad & (self.first < 0), torch.full_like(self.first, i), self.first)

    def check(self, sigmas: list[float]) -> None:
        first = int(self.first)  # the one host read of the pass
        if first >= 0:
            raise FloatingPointError(f"the denoiser returned NaN or inf at sigma={sigmas[first]:.4g} (step {first + 1})")


@torch.no_grad()
def drive(step: StepFunction, denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
          project: Project | None = None, generator: Generators = None, callback: Callback | None = None) -> torch.Tensor:
    """The one sampling loop: D at each sigma, the method's step to the next, the projection, the divergence check."""
    levels = [float(s) for s in sigmas]  # float64 scalars, read once
    # every step's sigma vector, made on the device once (no host-to-device copy per step)
    vectors = sigmas.to(x.device, torch.float32)[:, None].expand(-1, x.shape[0]).contiguous()
    watch = Divergence(x.device)
    history: list[tuple[torch.Tensor, float]] = []

    def denoise_at(i: int, y: torch.Tensor) -> torch.Tensor:
        d = denoiser(y, vectors[i])
        watch.watch(i, d)
        return d

    for i in range(len(levels) - 1):
        s, s_next = levels[i], levels[i + 1]
        d = denoise_at(i, x)
        if callback is not None:
            callback(i, s, x, d)
        x = step(Step(x, d, s, s_next, history, partial(denoise_at, i + 1), partial(randn_like, x, generator)))
        if s_next > 0.0:
            history.insert(0, (d, math.log(s / s_next)))
            del history[2:]  # third-order methods look two steps back
        if project is not None:
            x = project(x, s_next)
    watch.check(levels)
    return x


def step_ddpm(st: Step) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2, "fixedsmall" variance) in VE form.

    Each step draws x' from the exact Gaussian posterior q(x' | x, x0 = D(x)), which in VE
    form is mean x0 + (s'^2 / s^2)(x - x0), variance s'^2 (s^2 - s'^2) / s^2; on DDPM's own
    step grid this is the released SDEdit update step for step.  No noise at sigma' = 0.
    """
    x, d, s, s_next = st.x, st.d, st.s, st.s_next
    if s_next == 0.0:
        return d
    # Posterior mean, then posterior noise.
    x = d + (s_next / s) ** 2 * (x - d)
    return x + (s_next / s) * math.sqrt(s**2 - s_next**2) * st.noise()


def step_euler_maruyama(st: Step) -> torch.Tensor:
    """Reverse-diffusion Euler-Maruyama predictor (SDEdit paper, Alg. 1).

    x <- x + (s^2 - s'^2) score(x, s) + sqrt(s^2 - s'^2) z, with score = (D(x, s) - x) / s^2;
    the last step to sigma 0 takes the mean only (score_sde's final denoising step).
    """
    x, d, s, s_next = st.x, st.d, st.s, st.s_next
    eps2 = s**2 - s_next**2
    # Drift step along the score.
    x = x + eps2 * (d - x) / s**2
    if s_next > 0.0:
        # Diffusion step.
        x = x + math.sqrt(eps2) * st.noise()
    return x


def step_ddim(st: Step) -> torch.Tensor:
    """DDIM with eta = 0 (Song et al. 2021): x' = D + (s' / s)(x - D), the probability-flow ODE's Euler step in VE form."""
    return st.d + (st.s_next / st.s) * (st.x - st.d)


MIN_STEP_RATIO = 0.1  # a multistep correction uses an earlier step only if it was at least this share of this one


def recent(history: list[tuple[torch.Tensor, float]], h: float) -> list[tuple[torch.Tensor, float]]:
    """The earlier (D, h) a multistep method may use for a step of size h: up to the first step under MIN_STEP_RATIO
    of h.  A much shorter step (a strength map's level next to a grid point) holds D's fresh noise over almost no
    distance; its divided difference would blow up, so the method drops to a lower order instead."""
    usable = []
    for entry in history:
        if entry[1] < MIN_STEP_RATIO * h:
            break
        usable.append(entry)
    return usable


def step_dpmpp_2m(st: Step) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): multistep second order in lambda = -log sigma."""
    x, d, s, s_next = st.x, st.d, st.s, st.s_next
    if s_next == 0.0:
        return d
    h = math.log(s / s_next)
    d_hat = d
    history = recent(st.history, h)
    if history:
        # Second-order correction from the previous denoised value.
        d_prev, h_prev = history[0]
        r = h_prev / h
        d_hat = (1.0 + 1.0 / (2.0 * r)) * d - (1.0 / (2.0 * r)) * d_prev
    return (s_next / s) * x + (1.0 - math.exp(-h)) * d_hat


def step_dpmpp_2m_sde(st: Step) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, midpoint form): the DDPM posterior step plus a second-order correction.

    With h = log(s / s'), the first-order part x' = (s'/s)^2 x + (1 - (s'/s)^2) D + s' sqrt(1 - (s'/s)^2) z
    is exactly the ancestral step; the previous denoised value adds 0.5 (1 - (s'/s)^2) (D - D_prev) / r.
    """
    x, d, s, s_next = st.x, st.d, st.s, st.s_next
    if s_next == 0.0:
        return d
    h = math.log(s / s_next)
    keep = (s_next / s) ** 2  # e^{-2h}
    x = keep * x + (1.0 - keep) * d
    history = recent(st.history, h)
    if history:
        # Second-order correction from the previous denoised value.
        d_prev, h_prev = history[0]
        x = x + 0.5 * (1.0 - keep) * (h / h_prev) * (d - d_prev)
    return x + s_next * math.sqrt(1.0 - keep) * st.noise()


def step_dpmpp_3m_sde(st: Step) -> torch.Tensor:
    """DPM-Solver++(3M) SDE (Lu et al. 2022; third-order multistep of the data-prediction SDE in lambda = -log sigma).

    The first-order part is the ancestral step of dpm++2m-sde; with h = log(s / s') and H = 2h,
    the last two denoised values add phi2 D1 - phi3 D2, phi2 = 1 - (1 - e^-H) / H, phi3 = phi2 / H - 1/2,
    where D1 and D2 are the first and second divided differences of D over lambda.
    """
    x, d, s, s_next = st.x, st.d, st.s, st.s_next
    if s_next == 0.0:
        return d
    h = math.log(s / s_next)
    big_h = 2.0 * h  # the SDE's effective step (eta = 1)
    keep = math.exp(-big_h)  # (s'/s)^2
    x = keep * x + (1.0 - keep) * d
    phi2 = 1.0 - (1.0 - keep) / big_h
    history = recent(st.history, h)
    if len(history) >= 2:
        # Third order: divided differences over the last three denoised values.
        (d1, h1), (d2, h2) = history[0], history[1]
        r0, r1 = h1 / h, h2 / h
        diff0 = (d - d1) / r0
        diff1 = (d1 - d2) / r1
        first = diff0 + (diff0 - diff1) * r0 / (r0 + r1)
        second = (diff0 - diff1) / (r0 + r1)
        phi3 = phi2 / big_h - 0.5
        x = x + phi2 * first - phi3 * second
    elif history:
        # Second order from the previous denoised value.
        d1, h1 = history[0]
        x = x + phi2 * (d - d1) / (h1 / h)
    return x + s_next * math.sqrt(1.0 - keep) * st.noise()


def step_heun(st: Step) -> torch.Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1): two evaluations per
    step, the last step to sigma 0 a plain Euler (DDIM) step."""
    x, d, s, s_next = st.x, st.d, st.s, st.s_next
    slope = (x - d) / s  # dx/dsigma of the probability-flow ODE
    x_euler = x + (s_next - s) * slope
    if s_next == 0.0:
        return x_euler
    # Trapezoid correction with the slope at the Euler point.
    slope_next = (x_euler - st.denoise_next(x_euler)) / s_next
    return x + (s_next - s) * 0.5 * (slope + slope_next)


STEPS: dict[str, StepFunction] = {
    "ddpm": step_ddpm,
    "euler-maruyama": step_euler_maruyama,
    "ddim": step_ddim,
    "dpm++2m": step_dpmpp_2m,
    "dpm++2m-sde": step_dpmpp_2m_sde,
    "dpm++3m-sde": step_dpmpp_3m_sde,
    "heun": step_heun,
}


def evaluations(sampler: str, steps: int) -> int:
    """Network evaluations of one pass: one per step, two per step for heun except its last."""
    return 2 * steps - 1 if sampler == "heun" else steps


def _sampler(step: StepFunction) -> Callable[..., torch.Tensor]:
    """sample_x(denoiser, x, sigmas, *, project, generator, callback) for a step function."""
    def sample(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return drive(step, denoiser, x, sigmas, **kwargs)  # type: ignore[arg-type]

    sample.__doc__ = step.__doc__
    return sample


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {name: _sampler(step) for name, step in STEPS.items()}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function for a name in SAMPLERS."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}") from None
