"""FlowEdit (Kulikov et al., ICCV 2025, Alg. 1): inversion-free editing of a rectified-flow model, in the VE contract.

No noise is added to the edited latents.  At each flow time t of the grid from t0 (the paper's n_max, here exact
and continuous) down to 0, fresh noise n gives the source's noisy point z_src = (1 - t) x_src + t n and the
edit's z_tar = z + z_src - x_src; the edit moves along the difference of the two velocity fields,

    z <- z + (t' - t) * mean over n of [v_tar(z_tar) - v_src(z_src)],   v(z) = (z - D) / t,

so v_tar - v_src = ((z - x_src) - (D_tar - D_src)) / t with D the data prediction at sigma = t / (1 - t) of the
VE inputs z / (1 - t).  The same prompt and guidance for source and target give a zero difference: z stays x_src.
A mask scales the move (0 keeps x_src exactly); a strength map starts each pixel's moves at its own t0 * g.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .editing import edit_plan
from .samplers import Callback, Denoiser, Generators, randn_like
from .schedules import Schedule


@torch.inference_mode()
def flowedit_tensors(d_source: Denoiser, d_target: Denoiser, schedule: Schedule, x_src: torch.Tensor, *,
                     t0: float, steps: int, samples: int = 1, repeats: int = 1, mask: torch.Tensor | None = None,
                     strength: torch.Tensor | None = None, generator: Generators = None,
                     callback: Callback | None = None, grid: str = "uniform",
                     between: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """FlowEdit of a batch of source latents (the sampler's space) from the source's conditioning to the target's.

    samples: noise draws averaged per step (the paper's n_avg).  repeats: the edit applied again from its result,
    the source unchanged.  mask (1 = edit) and strength (per-pixel t0 as a share of t0) as in edit_tensors.
    """
    plan = edit_plan(schedule, x_src, t0, steps, grid, mask, strength)
    if plan is None:
        return x_src
    sigmas, release, mask = plan
    levels = [float(s) for s in sigmas]
    vectors = sigmas.to(x_src.device, torch.float32)[:, None].expand(-1, x_src.shape[0]).contiguous()
    z = x_src
    for r in range(repeats):
        for i in range(len(levels) - 1):
            s, s_next = levels[i], levels[i + 1]
            t, t_next = s / (1.0 + s), s_next / (1.0 + s_next)
            delta = torch.zeros_like(x_src)
            d_tar = x_src
            for _ in range(samples):
                noise = randn_like(x_src, generator)
                z_src = (1.0 - t) * x_src + t * noise
                z_tar = z_src + (z - x_src)  # exactly z_src while z is still x_src
                d_src = d_source(z_src / (1.0 - t), vectors[i])
                d_tar = d_target(z_tar / (1.0 - t), vectors[i])
                delta = delta + ((z - x_src) - (d_tar - d_src)) / (t * samples)
            move = (t_next - t) * delta
            if release is not None:
                move = move * (release >= s * (1.0 - 1e-6)).to(move.dtype)  # only pixels released at or above s
            elif mask is not None:
                move = move * mask
            z = z + move
            if callback is not None:
                callback(i, s, z, d_tar)
        if not torch.isfinite(z).all():
            raise FloatingPointError("FlowEdit's velocity difference was NaN or inf")
        if between is not None and r < repeats - 1:
            z = between(z)
        if mask is not None:
            z = mask * z + (1.0 - mask) * x_src
    return z
