"""Choosing the device a model runs on."""

from __future__ import annotations

import torch

from .errors import InputError


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when present, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but no CUDA device is available")
    return dev


