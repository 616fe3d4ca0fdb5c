"""SDEdit on tensors (the engine's one loop): perturb the guide to sigma(t0), run a reverse sampler to 0, K times, with a mask."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .samplers import Callback, Denoiser, Generators, get_sampler, randn_like
from .schedules import Schedule, sigma_grid


def keep_projection(x_g: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """SDEdit Alg. 3 / 5: after each step the kept region becomes the guide re-noised to the new level, x_g + sigma z."""
    keep = 1.0 - mask

    def project(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return mask * x + keep * (x_g + sigma * z)

    return project


@torch.inference_mode()
def edit_tensors(denoiser: Denoiser, schedule: Schedule, x_g: torch.Tensor, *, mask: torch.Tensor | None,
                 t0: float, steps: int, repeats: int, sampler: str, generator: Generators = None,
                 callback: Callback | None = None) -> torch.Tensor:
    """SDEdit (Meng et al. 2022, Alg. 1-5) on a batch of guides in the sampler's space (settings already valid).

    mask: 1 = edit, 0 = keep (the paper's Omega), soft values blend; broadcastable to x_g.
    Each of the `repeats` rounds re-noises the previous round's output to sigma(t0)
    (Alg. 2); the kept region of the result is the guide itself, exactly.
    """
    sample = get_sampler(sampler)
    sigmas = sigma_grid(schedule, float(t0), steps)
    if mask is not None:
        mask = mask.to(x_g.device, x_g.dtype).expand_as(x_g)
    x = x_g
    for _ in range(repeats):
        # Perturb: x(t0) = x + sigma(t0) z.
        z = randn_like(x_g, generator)
        project = keep_projection(x_g, mask, z) if mask is not None else None
        x = sample(denoiser, x + float(sigmas[0]) * z, sigmas, project=project, generator=generator,
                   callback=callback)
        if mask is not None:
            # Paste the exact guide back into the kept region.
            x = mask * x + (1.0 - mask) * x_g
    return x
