"""Noise schedules in variance-exploding form: sigma(t) for t in [0, 1], and its inverse.

Every schedule answers in the units of the denoiser contract (data in [-1, 1],
x = x0 + sigma * n).  No networks, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class DiscreteVPSchedule:
    """DDPM's discrete VP schedule (Ho et al. 2020) seen as VE: sigma_i = sqrt((1 - alpha_bar_i) / alpha_bar_i).

    Step i (0-based) sits at t = (i + 1) / T, so t0 = 0.5 is step 499 of 1000, as in the
    released SDEdit code.  Between steps log-sigma is interpolated linearly, which makes
    sigma(t) exact on the grid and continuous in between; below step 0 sigma^2 falls
    linearly to 0 at t = 0.
    """

    beta_start: float = 1e-4  # beta of step 0
    beta_end: float = 0.02  # beta of step T - 1
    num_steps: int = 1000  # T, the number of training steps
    beta_schedule: str = "linear"  # "linear", "scaled_linear" or "squaredcos_cap_v2"
    log_sigmas: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 2 <= self.num_steps <= 100_000:
            raise ValueError(f"num_steps (T) must be from 2 to 100000, got {self.num_steps!r}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(f"betas must satisfy 0 < beta_start <= beta_end < 1, got {self.beta_start!r}, "
                             f"{self.beta_end!r}")
        betas = _betas(self.beta_schedule, self.beta_start, self.beta_end, self.num_steps)
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1.0 - alpha_bar) / alpha_bar).sqrt()
        object.__setattr__(self, "log_sigmas", sigmas.log())

    @property
    def kind(self) -> str:
        return "vp"

    @property
    def sigmas(self) -> torch.Tensor:
        """The T discrete noise levels, float64, increasing."""
        return self.log_sigmas.exp()

    def sigma(self, t: float) -> float:
        """sigma(t) for continuous t in [0, 1]."""
        _check_time(t)
        s = t * self.num_steps - 1.0  # fractional step index
        if s <= 0.0:
            return math.exp(self.log_sigmas[0].item()) * math.sqrt(max(s + 1.0, 0.0))
        lo = min(int(math.floor(s)), self.num_steps - 2)
        w = s - lo
        return math.exp((1.0 - w) * self.log_sigmas[lo].item() + w * self.log_sigmas[lo + 1].item())

    def step(self, sigma: torch.Tensor, log_sigmas: torch.Tensor | None = None) -> torch.Tensor:
        """Fractional training step for each sigma (inverse of the grid), clamped to [0, T - 1], computed where sigma
        is; log_sigmas: a copy of the grid already there (a denoiser's buffer), else it is copied over each call."""
        dtype = torch.float32 if sigma.device.type == "mps" else torch.float64  # MPS has no float64
        grid = (self.log_sigmas if log_sigmas is None else log_sigmas).to(sigma.device, dtype)
        log_sigma = sigma.to(dtype).clamp_min(1e-30).log()
        hi = torch.searchsorted(grid, log_sigma).clamp(1, self.num_steps - 1)
        lo = hi - 1
        w = (log_sigma - grid[lo]) / (grid[hi] - grid[lo])
        return (lo.to(dtype) + w).clamp(0.0, self.num_steps - 1.0)


@dataclass(frozen=True)
class VESchedule:
    """Score SDE's VE schedule (Song et al. 2021): sigma(t) = sigma_min (sigma_max / sigma_min)^t.

    sigma_min and sigma_max are given in the network's own data units; `data_range` is the
    width of that data range (1 for [0, 1] data), so sigmas here are in [-1, 1] units.
    """

    sigma_min: float = 0.01  # in the network's data units
    sigma_max: float = 348.0  # in the network's data units
    data_range: float = 1.0  # 1.0 for networks trained on [0, 1] images, 2.0 for [-1, 1]

    def __post_init__(self) -> None:
        if not (0.0 < self.sigma_min < self.sigma_max < float("inf")) or not 0.0 < self.data_range < float("inf"):
            raise ValueError(f"need 0 < sigma_min < sigma_max and data_range > 0, got {self.sigma_min!r}, "
                             f"{self.sigma_max!r}, {self.data_range!r}")

    @property
    def kind(self) -> str:
        return "ve"

    @property
    def scale(self) -> float:
        """Factor from the network's sigma to the contract's sigma."""
        return 2.0 / self.data_range

    def sigma(self, t: float) -> float:
        """sigma(t) for continuous t in [0, 1], in [-1, 1] data units."""
        _check_time(t)
        return self.scale * self.sigma_min * (self.sigma_max / self.sigma_min) ** t


@dataclass(frozen=True)
class FlowSchedule:
    """Rectified flow x_t = (1 - t) x0 + t n (SD3, FLUX) seen as VE: sigma = t / (1 - t), x_ve = x_t / (1 - t).

    The SDEdit time u in [0, 1] maps to the flow time through the model's timestep shift,
    t = s u / (1 + (s - 1) u) (SD3's fixed s = 3; FLUX's s depends on the image size, set per model),
    so t0 is the flow time the user asks for, exact and continuous.  t is capped at 1 - 1e-4
    (sigma 1e4): at u = 1 the start is pure noise up to 1e-4 of the guide.
    """

    shift: float = 1.0  # s; 1 = no shift

    def __post_init__(self) -> None:
        if not 0.0 < self.shift < float("inf"):
            raise ValueError(f"shift must be a positive number, got {self.shift!r}")

    @property
    def kind(self) -> str:
        return "flow"

    def flow_time(self, u: float) -> float:
        """The shifted flow time t of SDEdit time u."""
        _check_time(u)
        return min(self.shift * u / (1.0 + (self.shift - 1.0) * u), 1.0 - FLOW_T_CAP)

    def sigma(self, u: float) -> float:
        """sigma(u) = t / (1 - t) for the shifted flow time t."""
        t = self.flow_time(u)
        return t / (1.0 - t)


FLOW_T_CAP = 1e-4  # flow times stop this short of 1, where the VE sigma is infinite

Schedule = DiscreteVPSchedule | VESchedule | FlowSchedule


def _check_time(t: float) -> None:
    """The schedules' domain: SDE time in [0, 1]."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")


def _betas(kind: str, start: float, end: float, n: int) -> torch.Tensor:
    """Per-step betas in float64 for the schedules diffusers and DDPM name."""
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    raise ValueError(f"unsupported beta schedule {kind!r} (linear, scaled_linear, squaredcos_cap_v2)")


GRIDS = ("uniform", "karras")  # how the N steps from t0 are spaced
KARRAS_RHO = 7.0  # Karras et al. 2022's rho
KARRAS_T_MIN = 1e-3  # the karras grid's smallest nonzero level is sigma(min(t0, this))


def sigma_levels(schedule: Schedule, t0: float, steps: int, grid: str = "uniform") -> list[float]:
    """The N decreasing nonzero sigmas of a grid that starts at exactly sigma(t0) (never snapped).

    uniform: sigma(t0 n / N) for n = N..1.  karras: rho-spaced in sigma (Karras et al. 2022, eq. 5,
    rho = 7) from sigma(t0) down to sigma(min(t0, KARRAS_T_MIN)), its first level sigma(t0) itself.
    """
    if grid == "uniform":
        return [schedule.sigma(t0 * (n / steps)) for n in range(steps, 0, -1)]  # n / steps: t0 itself is exact
    if grid != "karras":
        raise ValueError(f"unknown grid {grid!r}; choose one of: {', '.join(GRIDS)}")
    top, bottom = schedule.sigma(t0), schedule.sigma(min(t0, KARRAS_T_MIN))
    if steps == 1 or bottom <= 0.0 or bottom >= top:
        return [top] + [schedule.sigma(t0 * (n / steps)) for n in range(steps - 1, 0, -1)]
    a, b = top ** (1.0 / KARRAS_RHO), bottom ** (1.0 / KARRAS_RHO)
    return [top] + [(a + i / (steps - 1) * (b - a)) ** KARRAS_RHO for i in range(1, steps)]


def sigma_grid(schedule: Schedule, t0: float, steps: int, grid: str = "uniform") -> torch.Tensor:
    """Decreasing sigmas for N steps from exactly sigma(t0) (sigma_levels), then 0."""
    return torch.tensor(sigma_levels(schedule, t0, steps, grid) + [0.0], dtype=torch.float64)
