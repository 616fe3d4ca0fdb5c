"""Reverse-time samplers over a decreasing list of sigmas, all with one signature.

    sample_x(denoiser, x, sigmas, *, project=None, generator=None, callback=None) -> x

`denoiser(x, sigma)` follows the VE contract; `sigmas` ends at 0.  After every step,
`project(x, sigma_next)` may overwrite part of x (masked editing); `callback(i, sigma,
x, denoised)` sees each step.  `generator` is one torch.Generator or a list with one per
batch row, so a row's noise does not depend on what else is in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Project = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None]
Generators = torch.Generator | Sequence[torch.Generator] | None


def randn_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn row by row when given one generator per row."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    rows = [torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device="cpu") for g in generator]
    return torch.stack(rows).to(x.device)


def _denoise(denoiser: Denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    d = denoiser(x, torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device))
    if not torch.isfinite(d).all():
        raise FloatingPointError(f"the denoiser returned NaN or inf at sigma={sigma:.4g}")
    return d


def _project(x: torch.Tensor, s_next: float, project: Project | None) -> torch.Tensor:
    return project(x, s_next) if project is not None else x


@torch.no_grad()
def sample_ddpm(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, project: Project | None = None,
                generator: Generators = None, callback: Callback | None = None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2, "fixedsmall" variance) in VE form.

    Each step draws x' from the exact Gaussian posterior q(x' | x, x0 = D(x)), which in VE
    form is mean x0 + (s'^2 / s^2)(x - x0), variance s'^2 (s^2 - s'^2) / s^2; on DDPM's own
    step grid this is the released SDEdit update step for step.  No noise at sigma' = 0.
    """
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = _denoise(denoiser, x, s)
        if callback is not None:
            callback(i, s, x, d)
        if s_next == 0.0:
            x = d
        else:
            # Posterior mean, then posterior noise.
            x = d + (s_next / s) ** 2 * (x - d)
            x = x + (s_next / s) * math.sqrt(s**2 - s_next**2) * randn_like(x, generator)
        x = _project(x, s_next, project)
    return x


@torch.no_grad()
def sample_euler_maruyama(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                          project: Project | None = None, generator: Generators = None,
                          callback: Callback | None = None) -> torch.Tensor:
    """Reverse-diffusion Euler-Maruyama predictor (SDEdit paper, Alg. 1).

    x <- x + (s^2 - s'^2) score(x, s) + sqrt(s^2 - s'^2) z, with score = (D(x, s) - x) / s^2;
    the last step to sigma 0 takes the mean only (score_sde's final denoising step).
    """
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = _denoise(denoiser, x, s)
        if callback is not None:
            callback(i, s, x, d)
        eps2 = s**2 - s_next**2
        # Drift step along the score.
        x = x + eps2 * (d - x) / s**2
        if s_next > 0.0:
            # Diffusion step.
            x = x + math.sqrt(eps2) * randn_like(x, generator)
        x = _project(x, s_next, project)
    return x


@torch.no_grad()
def sample_ddim(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, project: Project | None = None,
                generator: Generators = None, callback: Callback | None = None) -> torch.Tensor:
    """DDIM with eta = 0 (Song et al. 2021): x' = D + (s' / s)(x - D), the probability-flow ODE's Euler step in VE form."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = _denoise(denoiser, x, s)
        if callback is not None:
            callback(i, s, x, d)
        x = d + (s_next / s) * (x - d)
        x = _project(x, s_next, project)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, project: Project | None = None,
                    generator: Generators = None, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): multistep second order in lambda = -log sigma."""
    d_prev: torch.Tensor | None = None
    h_prev = 0.0
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = _denoise(denoiser, x, s)
        if callback is not None:
            callback(i, s, x, d)
        if s_next == 0.0:
            x = d
        else:
            h = math.log(s / s_next)
            d_hat = d
            if d_prev is not None:
                # Second-order correction from the previous denoised value.
                r = h_prev / h
                d_hat = (1.0 + 1.0 / (2.0 * r)) * d - (1.0 / (2.0 * r)) * d_prev
            x = (s_next / s) * x + (1.0 - math.exp(-h)) * d_hat
            h_prev = h
        d_prev = d
        x = _project(x, s_next, project)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, project: Project | None = None,
                        generator: Generators = None, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, midpoint form): the DDPM posterior step plus a second-order correction.

    With h = log(s / s'), the first-order part x' = (s'/s)^2 x + (1 - (s'/s)^2) D + s' sqrt(1 - (s'/s)^2) z
    is exactly the ancestral step; the previous denoised value adds 0.5 (1 - (s'/s)^2) (D - D_prev) / r.
    """
    d_prev: torch.Tensor | None = None
    h_prev = 0.0
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = _denoise(denoiser, x, s)
        if callback is not None:
            callback(i, s, x, d)
        if s_next == 0.0:
            x = d
        else:
            h = math.log(s / s_next)
            keep = (s_next / s) ** 2  # e^{-2h}
            x = keep * x + (1.0 - keep) * d
            if d_prev is not None:
                # Second-order correction from the previous denoised value.
                x = x + 0.5 * (1.0 - keep) * (h / h_prev) * (d - d_prev)
            x = x + s_next * math.sqrt(1.0 - keep) * randn_like(x, generator)
            h_prev = h
        d_prev = d
        x = _project(x, s_next, project)
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, project: Project | None = None,
                        generator: Generators = None, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(3M) SDE (Lu et al. 2022; third-order multistep of the data-prediction SDE in lambda = -log sigma).

    The first-order part is the ancestral step of dpm++2m-sde; with h = log(s / s') and H = 2h,
    the last two denoised values add phi2 D1 - phi3 D2, phi2 = 1 - (1 - e^-H) / H, phi3 = phi2 / H - 1/2,
    where D1 and D2 are the first and second divided differences of D over lambda.
    """
    d1: torch.Tensor | None = None  # D at the previous step
    d2: torch.Tensor | None = None  # D two steps back
    h1 = h2 = 0.0
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = _denoise(denoiser, x, s)
        if callback is not None:
            callback(i, s, x, d)
        if s_next == 0.0:
            x = d
        else:
            h = math.log(s / s_next)
            big_h = 2.0 * h  # the SDE's effective step (eta = 1)
            keep = math.exp(-big_h)  # (s'/s)^2
            x = keep * x + (1.0 - keep) * d
            phi2 = 1.0 - (1.0 - keep) / big_h
            if d2 is not None and d1 is not None:
                # Third order: divided differences over the last three denoised values.
                r0, r1 = h1 / h, h2 / h
                diff0 = (d - d1) / r0
                diff1 = (d1 - d2) / r1
                first = diff0 + (diff0 - diff1) * r0 / (r0 + r1)
                second = (diff0 - diff1) / (r0 + r1)
                phi3 = phi2 / big_h - 0.5
                x = x + phi2 * first - phi3 * second
            elif d1 is not None:
                # Second order from the previous denoised value.
                x = x + phi2 * (d - d1) / (h1 / h)
            x = x + s_next * math.sqrt(1.0 - keep) * randn_like(x, generator)
            d2, h2 = d1, h1
            d1, h1 = d, h
        x = _project(x, s_next, project)
    return x


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, project: Project | None = None,
                generator: Generators = None, callback: Callback | None = None) -> torch.Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1): two evaluations per
    step, the last step to sigma 0 a plain Euler (DDIM) step."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = _denoise(denoiser, x, s)
        if callback is not None:
            callback(i, s, x, d)
        slope = (x - d) / s  # dx/dsigma of the probability-flow ODE
        x_euler = x + (s_next - s) * slope
        if s_next == 0.0:
            x = x_euler
        else:
            # Trapezoid correction with the slope at the Euler point.
            slope_next = (x_euler - _denoise(denoiser, x_euler, s_next)) / s_next
            x = x + (s_next - s) * 0.5 * (slope + slope_next)
        x = _project(x, s_next, project)
    return x


def evaluations(sampler: str, steps: int) -> int:
    """Network evaluations of one pass: one per step, two per step for heun except its last."""
    return 2 * steps - 1 if sampler == "heun" else steps


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "euler-maruyama": sample_euler_maruyama,
    "ddim": sample_ddim,
    "dpm++2m": sample_dpmpp_2m,
    "dpm++2m-sde": sample_dpmpp_2m_sde,
    "dpm++3m-sde": sample_dpmpp_3m_sde,
    "heun": sample_heun,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function for a name in SAMPLERS."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}") from None
