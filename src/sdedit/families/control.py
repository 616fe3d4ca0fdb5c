"""ControlNets beside a latent model's main network (Zhang et al. 2023): their scale and window in the schedule's time,
and how a run's control images travel with its rows (on the latent grid, after any inpainting channels)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..control_images import DEFAULT_CONTROL_PREPROCESS
from ..errors import InputError
from ..loading.controlnets import ControlSpec

FULL_WINDOW = (1.0, 0.0)  # (start, end) in the schedule's time t: from the first evaluation to the last


def check_window(start: float, end: float) -> tuple[float, float]:
    """The control window rule: times in [0, 1], the ControlNet starting at t = start and stopping at t = end <= start
    (sampling runs from t0 down to 0)."""
    for name, value in (("--control-start", start), ("--control-end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise InputError(f"{name} is a time t in [0, 1] (1 = pure noise, 0 = the image), got {value!r}")
    if end > start:
        raise InputError(f"--control-end ({end:g}) must not exceed --control-start ({start:g}): sampling runs from "
                         f"t0 down to 0, so a ControlNet starts at the larger t")
    return float(start), float(end)


def check_pairing(images: int, controlnets: int, preprocess: str) -> None:
    """The pairing rule of control images: one per ControlNet in order, or none (the input steers them); and a
    preprocess only where there are ControlNets to steer."""
    if images and images != controlnets:
        raise InputError(f"{images} control image(s) for {controlnets} ControlNet(s): give one per ControlNet, in "
                         f"order, or none (the input steers them)")
    if preprocess != DEFAULT_CONTROL_PREPROCESS and not controlnets:
        raise InputError("--control-preprocess makes control images for ControlNets: give --controlnet")


@dataclass
class AttachedControl:
    """A loaded ControlNet, its scale, and the times t between which it acts: start >= t >= end, exactly (the
    evaluation's own sigma against sigma(start) and sigma(end), never a snapped step index)."""

    net: nn.Module
    spec: ControlSpec
    kind: str  # CONTROLNET_KINDS: unet, unet-union, sd3, flux
    start: float = FULL_WINDOW[0]
    end: float = FULL_WINDOW[1]

    @property
    def label(self) -> str:
        """How outputs record it (a union ControlNet's mode after a '#')."""
        mode = "" if self.spec.mode is None else f"#{self.spec.mode}"
        return f"{self.spec.source}:{self.spec.scale:g}{mode}"

    def row_scale(self, sigma: torch.Tensor, schedule: object) -> torch.Tensor | None:
        """Per row: the scale where the evaluation's sigma lies in the window, else 0 (float32, on sigma's device);
        None when it is 0 for every row and that is known without a device read (scale 0, or a closed window on
        a CPU), so the ControlNet is not run at all."""
        if self.spec.scale == 0.0:
            return None
        scale = torch.full_like(sigma, self.spec.scale, dtype=torch.float32)
        if (self.start, self.end) == FULL_WINDOW:
            return scale
        s = sigma.float()
        hi = float("inf") if self.start >= 1.0 else schedule.sigma(self.start)  # type: ignore[attr-defined]
        lo = 0.0 if self.end <= 0.0 else schedule.sigma(self.end)  # type: ignore[attr-defined]
        # thresholds rounded as the sampler's own float32 sigmas are, so t = t0 is inside a window starting at t0
        inside = (s <= torch.tensor(hi, dtype=torch.float32)) & (s >= torch.tensor(lo, dtype=torch.float32))
        if s.device.type == "cpu" and not bool(inside.any()):
            return None
        return scale * inside


def scaled(residuals: Sequence[torch.Tensor], scale: torch.Tensor) -> list[torch.Tensor]:
    """Residuals times a per-row scale (in their own dtype, as diffusers multiplies by its float scale); a row at
    scale 0 (outside the window) gets exactly 0, even where a reduced-precision residual overflowed."""
    out = []
    for r in residuals:
        s = scale.to(r.dtype).reshape(-1, *([1] * (r.ndim - 1)))
        out.append(torch.where(s != 0, r * s, torch.zeros((), dtype=r.dtype, device=r.device)))
    return out


def summed(total: list[torch.Tensor] | None, more: list[torch.Tensor]) -> list[torch.Tensor]:
    """Residuals of several ControlNets added in order (diffusers' MultiControlNet rule)."""
    return more if total is None else [a + b for a, b in zip(total, more, strict=True)]


def control_to_tensor(image: object) -> torch.Tensor:
    """A control image (PIL RGB) as a 1x3xHxW float tensor in [0, 1] (value / 255, as diffusers' control processor)."""
    import numpy as np

    arr = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None]


def pixels_on_grid(images: Sequence[torch.Tensor], factor: int) -> torch.Tensor:
    """Pixel control images (1x3xHxW each) as channels of the latent grid (space-to-depth by the latent factor), so
    they travel, crop and batch with the latents."""
    return torch.cat([F.pixel_unshuffle(img, factor) for img in images], dim=1)


def pixels_from_grid(channels: torch.Tensor, factor: int) -> list[torch.Tensor]:
    """The inverse of pixels_on_grid: one (B, 3, H, W) image per ControlNet."""
    per = 3 * factor * factor
    return [F.pixel_shuffle(channels[:, i:i + per], factor) for i in range(0, channels.shape[1], per)]


def check_family(controls: Sequence[AttachedControl], kinds: tuple[str, ...], family: str) -> None:
    """One line when a ControlNet is of another family than the model's."""
    for c in controls:
        if c.kind not in kinds:
            raise InputError(f"ControlNet {c.spec.source} is a {c.kind} ControlNet; {family} takes "
                             f"{' or '.join(kinds)} ControlNets")
