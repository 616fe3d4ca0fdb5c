"""The denoiser contract D(x, sigma) -> x0_hat and the conversions every family adapter shares.

Contract (Karras et al. 2022, EDM): x = x0 + sigma * n with x0 in the data scale of the
sampler's space ([-1, 1] for pixels); sigma is a tensor of shape (B,).  A VP network sees
x_vp = x / sqrt(1 + sigma^2) (alpha_bar = 1 / (1 + sigma^2)).  Each family's own input
scaling and time conditioning live in its module under `sdedit.families`.
"""

from __future__ import annotations

import torch


def expand(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a (B,) sigma against an image batch."""
    return sigma.to(dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))


def vp_input(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """VE -> VP: x_vp = sqrt(alpha_bar) x with alpha_bar = 1 / (1 + sigma^2) (s already broadcast)."""
    return x / (1.0 + s**2).sqrt()


def eps_from_v(v: torch.Tensor, x_vp: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """v-prediction (Salimans & Ho 2022) to epsilon: v = alpha eps - sigma_vp x0, so eps = sigma_vp x_vp + alpha v."""
    alpha = 1.0 / (1.0 + s**2).sqrt()
    return s * alpha * x_vp + alpha * v


def x0_from_eps(x: torch.Tensor, s: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Tweedie in VE form for an epsilon prediction: D = x - sigma eps."""
    return x - s * eps.to(x.dtype)


def flow_input(x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VE -> rectified flow: t = sigma / (1 + sigma) and x_t = x / (1 + sigma) = (1 - t) x (s already broadcast)."""
    return x / (1.0 + s), s / (1.0 + s)


def x0_from_velocity(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Flow matching's data prediction from a velocity v = n - x0: x0 = x_t - t v."""
    return x_t - t * v.to(x_t.dtype)
