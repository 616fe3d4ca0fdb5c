"""Colour matching (Reinhard et al. 2001, "Color transfer between images", in CIELAB instead of l-alpha-beta):
an output's per-channel mean and spread moved onto a reference's, so repeated or unmasked edits do not drift.

Images are (B, 3, H, W) tensors in [-1, 1] (sRGB); statistics are weighted by a region (a mask: 1 = counts).
"""

from __future__ import annotations

import torch

# sRGB (D65) to XYZ, and the D65 white point (IEC 61966-2-1; CIE 15)
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375), (0.2126729, 0.7151522, 0.0721750), (0.0193339, 0.1191920, 0.9503041))
_WHITE = (0.95047, 1.0, 1.08883)
_EPS, _KAPPA = 216 / 24389, 24389 / 27  # CIELAB's linear segment
MIN_SPREAD = 1e-3  # a channel flatter than this (in L*a*b* units) in either image is shifted only, not scaled


def _matrix(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_RGB_TO_XYZ, dtype=x.dtype, device=x.device)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [-1, 1] to CIELAB (L* in [0, 100])."""
    c = ((x.clamp(-1, 1) + 1) / 2).to(torch.float64)
    linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,bjhw->bihw", _matrix(linear), linear)
    xyz = xyz / torch.tensor(_WHITE, dtype=xyz.dtype, device=xyz.device).view(1, 3, 1, 1)
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS) ** (1 / 3), (_KAPPA * xyz + 16) / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB to sRGB in [-1, 1] (colours outside the sRGB gamut clipped), float64."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    xyz = torch.where(f ** 3 > _EPS, f ** 3, (116 * f - 16) / _KAPPA)
    xyz = xyz * torch.tensor(_WHITE, dtype=xyz.dtype, device=xyz.device).view(1, 3, 1, 1)
    linear = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_matrix(xyz)), xyz).clamp(0, 1)
    c = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return c * 2 - 1


def _moments(lab: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row and channel: the weighted mean and standard deviation, (B, 3, 1, 1) each."""
    total = weight.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    mean = (lab * weight).sum(dim=(2, 3), keepdim=True) / total
    var = (((lab - mean) ** 2) * weight).sum(dim=(2, 3), keepdim=True) / total
    return mean, var.sqrt()


def match_colors(x: torch.Tensor, reference: torch.Tensor, region: torch.Tensor | None = None,
                 source: torch.Tensor | None = None) -> torch.Tensor:
    """x with each CIELAB channel's mean and spread over `region` set to the reference's over `source` (both
    weights (B or 1, 1, H, W) in [0, 1]; None: every pixel; source defaults to region); a channel flat in either
    only takes the mean.  Rows whose region is empty come back unchanged."""
    region = torch.ones_like(x[:, :1]) if region is None else region.to(x.device, torch.float64).expand_as(x[:, :1])
    source = region if source is None else source.to(x.device, torch.float64).expand_as(x[:, :1])
    lab, ref = rgb_to_lab(x), rgb_to_lab(reference.to(x.device))
    mean_x, spread_x = _moments(lab, region)
    mean_r, spread_r = _moments(ref, source)
    # a flat reference (a uniform guide, a one-colour stroke) holds a colour but no spread to match: scaling by its
    # 0 would flatten the edit back into it
    scaled = (spread_x > MIN_SPREAD) & (spread_r > MIN_SPREAD)
    scale = torch.where(scaled, spread_r / spread_x.clamp_min(MIN_SPREAD), torch.ones_like(spread_x))
    out = lab_to_rgb((lab - mean_x) * scale + mean_r).to(x.dtype)
    empty = (region.sum(dim=(1, 2, 3)) <= 0) | (source.sum(dim=(1, 2, 3)) <= 0)
    return torch.where(empty.view(-1, 1, 1, 1), x, out)
