"""Adapters that turn a network into the denoiser contract D(x, sigma) -> x0_hat.

Contract (Karras et al. 2022, EDM): x = x0 + sigma * n with x0 in [-1, 1]; sigma is a
tensor of shape (B,).  Each adapter is the only place that knows its family's input
scaling and time conditioning.
"""

from __future__ import annotations

import torch
from torch import nn

from .schedules import DiscreteVPSchedule, VESchedule


def _expand(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a (B,) sigma against an image batch."""
    return sigma.to(dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))


class NetworkDenoiser(nn.Module):
    """Base of the adapters: runs the wrapped network, optionally under bf16/fp16 autocast, returning float32."""

    unet: nn.Module
    autocast_dtype: torch.dtype | None = None  # None: the network's own precision (fp32)

    def run(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            out = self.unet(x, cond).sample
        return out.float()


class EpsDenoiser(NetworkDenoiser):
    """DDPM epsilon network as D (EDM's VP wrapper): D(x, sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma))."""

    def __init__(self, unet: nn.Module, schedule: DiscreteVPSchedule):
        super().__init__()
        self.unet = unet  # eps-prediction network taking (x_vp, step)
        self.schedule = schedule  # maps sigma to the (fractional) training step

    def eps(self, x_vp: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """The network's noise prediction in VP form at a (fractional) step."""
        return self.run(x_vp, step.to(x_vp.device, torch.float32))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = _expand(sigma, x)
        # VE -> VP: x_vp = sqrt(alpha_bar) x_ve, with alpha_bar = 1 / (1 + sigma^2).
        x_vp = x / (1.0 + s**2).sqrt()
        eps = self.eps(x_vp, self.schedule.step(sigma.reshape(-1)))
        return x - s * eps.to(x.dtype)


class ScoreDenoiser(NetworkDenoiser):
    """NCSN++ score network as D (Song et al. 2021, VE SDE): D(x, sigma) = x + sigma^2 * score(x, sigma)."""

    def __init__(self, unet: nn.Module, schedule: VESchedule):
        super().__init__()
        self.unet = unet  # score network whose output is already divided by its sigma
        self.schedule = schedule  # knows the network's data range

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        k = self.schedule.scale  # contract units per network unit
        # Contract -> network units: [-1, 1] data becomes [0, 1] data, sigma shrinks alike.
        x_net = (x + 1.0) / k if k != 1.0 else x
        sigma_net = (sigma.reshape(-1) / k).to(x.device, torch.float32)
        score = self.run(x_net, sigma_net).to(x.dtype)
        # Tweedie: E[x0 | x] = x + sigma^2 score, then back to contract units.
        d_net = x_net + _expand(sigma_net, x) ** 2 * score
        return d_net * k - 1.0 if k != 1.0 else d_net
