"""The sampling settings every entry point shares: defaults chosen from evidence, and their validation."""

from __future__ import annotations

import math
import secrets
from typing import Any

from .editing import check_settings
from .errors import InputError
from .samplers import SAMPLERS

DEFAULT_SAMPLER = "dpm++2m-sde"

# Steps per unit of t0 for each sampler, chosen from benchmarks/quality_per_cost.py (docs/quality-per-cost.md):
# at t0 = 0.5 on the bundled model, dpm++2m-sde with 10 steps matches the released recipe (ddpm, 500 steps):
# L2 11.63 vs 11.62, KID 0.119 vs 0.113 (+- 0.08).  The ODE samplers stop improving near 20 steps; the
# first-order stochastic ones need about 100 per unit of t0.
STEPS_PER_T0 = {"dpm++2m-sde": 20, "ddim": 40, "dpm++2m": 40, "ddpm": 100, "euler-maruyama": 100}
MIN_STEPS = {"dpm++2m-sde": 5, "ddim": 5, "dpm++2m": 5, "ddpm": 10, "euler-maruyama": 10}


def default_steps(sampler: str, t0: float) -> int:
    """Steps used when none are given: ceil(k * t0) per sampler (10 for dpm++2m-sde at t0 = 0.5), with a floor."""
    return max(MIN_STEPS.get(sampler, 10), math.ceil(STEPS_PER_T0.get(sampler, 100) * t0 - 1e-9))


def checked_run(sampler: str, t0: Any, steps: Any, repeats: Any, num_samples: Any, seed: Any,
                batch_size: Any = None) -> tuple[int, int]:
    """Validate one run's settings (InputError, one line); its steps (default filled in) and seed (random if None)."""
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if isinstance(t0, (int, float)) and steps is None and 0.0 < t0 <= 1.0:
        steps = default_steps(sampler, float(t0))
    try:
        check_settings(t0, steps, repeats)
    except ValueError as e:
        raise InputError(str(e)) from None
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise InputError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    seed = secrets.randbits(31) if seed is None else int(seed)
    if not 0 <= seed < 2**63 - num_samples:
        raise InputError(f"seed must be a non-negative integer, got {seed}")
    return int(steps), seed
