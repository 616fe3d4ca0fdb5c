"""Network precision as a scope of one run: D under autocast, and a bounded side-by-side timing of precisions.

Nothing here keeps state: a run wraps its denoiser with `under_precision`, and `time_precisions`
times candidate precisions on proxies of the run's input, smallest first, within a time budget.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from .samplers import Denoiser

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

PROBE_BUDGET_S = 2.0  # the most a precision measurement may cost (the bound; 5% of a run where smaller)
CLEAR_RATIO = 1.3  # a speed ratio beyond this decides at a small proxy; a closer one is measured at a larger one
MAX_ROUNDS = 3  # timed calls per precision and proxy size (after one untimed warm-up call each)
GROWTH = 4.0  # cost of the next proxy size against this one (its sides are twice as long)


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[None]:
    """bf16/fp16 autocast on the device, or nothing (dtype None: the network's own precision)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def under_precision(denoiser: Denoiser, device: torch.device, precision: str) -> Denoiser:
    """D evaluated under the precision's autocast (fp32: D itself); outputs come back in float32."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return denoiser

    def d(x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        with autocast(device, dtype):
            out = denoiser(x, sigma, **kwargs)
        return out.float()

    return d


@dataclass(frozen=True)
class Timing:
    """What `time_precisions` measured: median seconds per call at the largest proxy it timed, and the guard."""

    seconds: dict[str, float]  # precision -> median seconds of one call
    side: tuple[int, int]  # the proxy's (height, width) in the sampler's space
    difference: float  # largest rms difference of any candidate's output from the first candidate's, per (1 + sigma)
    spent: float  # seconds the measurement took, warm-up calls included

    def fastest(self) -> str:
        return min(self.seconds, key=lambda p: self.seconds[p])

    def ratio(self) -> float:
        """The slowest candidate's time over the fastest's (>= 1)."""
        return max(self.seconds.values()) / min(self.seconds.values())


def time_precisions(run: Callable[[str, tuple[int, int]], torch.Tensor], candidates: Sequence[str],
                    sizes: Sequence[tuple[int, int]], *, sigma: float, budget: float = PROBE_BUDGET_S,
                    clock: Callable[[], float]) -> Timing:
    """Time `run(precision, size)` for each candidate, alternating, on proxy sizes from the smallest up.

    At each size every candidate runs once untimed (warm-up; the smallest size's outputs feed the
    quality guard), then timed rounds alternate until MAX_ROUNDS or the budget.  A ratio beyond
    CLEAR_RATIO decides; a closer one moves to the next size if its estimated cost fits the budget.
    """
    start = clock()
    difference = 0.0
    seconds: dict[str, float] = {}
    side = sizes[0]
    for level, side in enumerate(sizes):
        level_start = clock()
        outs = [run(p, side) for p in candidates]  # warm-up calls
        if level == 0:
            difference = max((_rms(o - outs[0]) for o in outs[1:]), default=0.0) / (1.0 + sigma)
        times: dict[str, list[float]] = {p: [] for p in candidates}
        while True:
            round_start = clock()
            for p in candidates:
                t = clock()
                run(p, side)
                times[p].append(clock() - t)
            round_cost = clock() - round_start
            if len(times[candidates[0]]) >= MAX_ROUNDS or clock() - start + round_cost > budget:
                break
        seconds = {p: statistics.median(ts) for p, ts in times.items()}
        ratio = max(seconds.values()) / min(seconds.values())
        next_cost = GROWTH * (clock() - level_start)
        if ratio > CLEAR_RATIO or level == len(sizes) - 1 or clock() - start + next_cost > budget:
            break
    return Timing(seconds, side, difference, clock() - start)


def proxy_sizes(height: int, width: int, multiple: int, *, min_positions: int) -> list[tuple[int, int]]:
    """Sizes of the measurement's proxies, smallest first: the input's own and its halvings that the network
    takes (sides multiples of `multiple`), from the smallest with at least min_positions cells."""
    sizes = [(height, width)]
    h, w = height, width
    while h % (2 * multiple) == 0 and w % (2 * multiple) == 0 and (h // 2) * (w // 2) >= min_positions:
        h, w = h // 2, w // 2
        sizes.append((h, w))
    return sizes[::-1]


def _rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt()) if t.isfinite().all() else float("inf")
