"""SDEdit on tensors (the engine's one loop): perturb the guide to sigma(t0), run a reverse sampler to 0, K times, with a mask."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .samplers import Callback, Denoiser, Generators, get_sampler, randn_like
from .schedules import Schedule, sigma_grid, sigma_levels


def release_grid(schedule: Schedule, t0: float, steps: int, strength: torch.Tensor,
                 grid: str = "uniform") -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmas for a strength map: the N-step grid from t0 * max(g), with every level sigma(t0 * g) inserted.

    Pixel p is released at exactly t0 * g_p: it is a grid point, so it is clamped to x_g + sigma z
    down to its own level and free from there on, never snapped to a neighbouring step.  Returns
    the decreasing sigmas (ending at 0) and each pixel's release sigma.
    """
    levels = sorted({round(float(v), 12) for v in (strength.flatten() * t0).unique().tolist()}, reverse=True)
    base = sigma_levels(schedule, levels[0], steps, grid)
    inserted = [schedule.sigma(t) for t in levels if t > 0.0]
    sigmas = torch.tensor(sorted(merge_levels(base, inserted), reverse=True) + [0.0], dtype=torch.float64)
    release = torch.zeros_like(strength, dtype=torch.float64)
    for t in levels:
        release[(strength * t0 - t).abs() < 1e-9] = schedule.sigma(t) if t > 0.0 else 0.0
    return sigmas, release


MERGE_SHARE = 0.25  # a level this close to a grid point (as a share of the log-sigma gap there) replaces it


def merge_levels(base: list[float], levels: list[float]) -> list[float]:
    """The grid with every level in it: a level within MERGE_SHARE of the log gap from a grid point (the first
    excepted) takes that point's place, the others are inserted; a near-duplicate would be a step of almost no
    length, one more evaluation for nothing."""
    out = list(base)
    moved: set[int] = set()
    for s in levels:
        if any(abs(s - u) <= 1e-12 * max(1.0, s) for u in out):
            continue
        near = min(range(1, len(out)), key=lambda k: abs(math.log(out[k] / s)), default=None)
        if near is not None and near not in moved:
            side = near - 1 if s > out[near] or near + 1 == len(out) else near + 1
            if abs(math.log(out[near] / s)) < MERGE_SHARE * abs(math.log(out[near] / out[side])):
                out[near] = s
                moved.add(near)
                continue
        out.append(s)
    return out


def release_projection(x_g: torch.Tensor, release: torch.Tensor, z: torch.Tensor
                       ) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """Per-pixel t0: after each step landing at sigma', pixels released at or below sigma' become x_g + sigma' z."""

    def project(x: torch.Tensor, sigma: float) -> torch.Tensor:
        free = (release > sigma).to(x.dtype)  # released above this level: the sampler moves them
        return free * x + (1.0 - free) * (x_g + sigma * z)

    return project


def keep_projection(x_g: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """SDEdit Alg. 3 / 5: after each step the kept region becomes the guide re-noised to the new level, x_g + sigma z."""
    keep = 1.0 - mask

    def project(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return mask * x + keep * (x_g + sigma * z)

    return project


def edit_plan(schedule: Schedule, x_g: torch.Tensor, t0: float, steps: int, grid: str, mask: torch.Tensor | None,
              strength: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None:
    """An edit's step grid, each pixel's release sigma (strength maps) and the mask the paste-back keeps (a strength
    map's g = 0), on x_g's device and shape; None when a strength map keeps every pixel (nothing to do)."""
    release = None
    if strength is not None:
        strength = strength.to(x_g.device, torch.float64).expand_as(x_g)
        if float(strength.max()) <= 0.0:
            return None
        sigmas, release = release_grid(schedule, float(t0), steps, strength, grid)
        release = release.to(x_g.dtype)
        mask = (release > 0).to(x_g.dtype)
    else:
        sigmas = sigma_grid(schedule, float(t0), steps, grid)
    if mask is not None:
        mask = mask.to(x_g.device, x_g.dtype).expand_as(x_g)
    return sigmas, release, mask


@torch.inference_mode()
def edit_tensors(denoiser: Denoiser, schedule: Schedule, x_g: torch.Tensor, *, mask: torch.Tensor | None,
                 t0: float, steps: int, repeats: int, sampler: str, generator: Generators = None,
                 callback: Callback | None = None, strength: torch.Tensor | None = None,
                 grid: str = "uniform", between: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> torch.Tensor:
    """SDEdit (Meng et al. 2022, Alg. 1-5) on a batch of guides in the sampler's space (settings already valid).

    mask: 1 = edit, 0 = keep (the paper's Omega), soft values blend; broadcastable to x_g.
    strength: instead of a mask, a per-pixel map g in [0, 1]: pixel p starts at t0 * g_p exactly
    (release_grid); g = 0 keeps the guide.  Each of the `repeats` rounds re-noises the previous
    round's output (Alg. 2); the kept region of the result is the guide itself, exactly.
    between: applied to each round's output but the last's, before the paste-back (colour matching).
    """
    sample = get_sampler(sampler)
    plan = edit_plan(schedule, x_g, t0, steps, grid, mask, strength)
    if plan is None:
        return x_g
    sigmas, release, mask = plan
    x = x_g
    for r in range(repeats):
        # Perturb: x(t0) = x + sigma(t0) z.
        z = randn_like(x_g, generator)
        if release is not None:
            project = release_projection(x_g, release, z)
        else:
            project = keep_projection(x_g, mask, z) if mask is not None else None
        x = sample(denoiser, x + float(sigmas[0]) * z, sigmas, project=project, generator=generator,
                   callback=callback)
        if between is not None and r < repeats - 1:
            x = between(x)
        if mask is not None:
            # Paste the exact guide back into the kept region.
            x = mask * x + (1.0 - mask) * x_g
    return x
