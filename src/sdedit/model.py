"""A loaded diffusion model: a denoiser D(x, sigma), its schedule and what it was trained on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .schedules import Schedule


@dataclass
class SDEModel:
    """What `load_model` returns: the denoiser contract plus the facts SDEdit needs."""

    denoiser: nn.Module  # D(x, sigma) -> x0_hat, VE form, data in [-1, 1]
    schedule: Schedule  # sigma(t) of the SDE the network was trained with
    resolution: int  # square image size the network expects
    name: str  # preset name, path or Hub id, for metadata
    info: dict[str, Any] = field(default_factory=dict)  # family, source, parameter count, ...

    @property
    def device(self) -> torch.device:
        for t in (*self.denoiser.parameters(), *self.denoiser.buffers()):
            return t.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> SDEModel:
        """Move the network to a device (in place) and return self."""
        self.denoiser.to(device)
        return self

    def optimize(self, *, precision: Literal["fp32", "bf16", "fp16"] = "fp32", compile: bool = False) -> SDEModel:
        """Run the network under bf16/fp16 autocast and/or torch.compile (measure first: see benchmarks/speed.py)."""
        dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
        if precision not in dtypes:
            raise ValueError(f"precision must be one of {', '.join(dtypes)}, got {precision!r}")
        self.denoiser.autocast_dtype = dtypes[precision]
        if compile:
            self.denoiser.unet = torch.compile(self.denoiser.unet)
        self.info["precision"] = precision
        self.info["compiled"] = compile
        return self

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x, sigma) -> x0_hat for x = x0 + sigma n, x0 in [-1, 1], sigma of shape (B,)."""
        return self.denoiser(x, sigma)

    def sigma(self, t: float) -> float:
        """The noise level of the model's SDE at time t in [0, 1]."""
        return self.schedule.sigma(t)
