"""Choosing the device a model runs on."""

from __future__ import annotations

import platform
import re
from typing import Literal

import torch

from .errors import InputError

Offload = Literal["none", "model", "sequential"]
OFFLOADS: tuple[Offload, ...] = ("none", "model", "sequential")  # diffusers' names: enable_model/sequential_cpu_offload


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when present, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device {str(device)!r} (use cpu, cuda, cuda:N, mps or auto)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(device)!r} requested but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {str(device)!r} requested but there are {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {str(device)!r} requested but MPS is not available")
    return dev


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """What a device is, for keys of measured decisions and for metadata: the GPU's or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name() if device.type == "cpu" else device.type


def bf16_runs(device: torch.device) -> bool:
    """Whether bf16 autocast runs on the device at all (it is timed against fp32 before it is chosen)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu"


def offload_device(offload: str, device: str | torch.device | None) -> torch.device:
    """The execution device of an offloaded model: the requested accelerator; the CPU is refused (nothing to save)."""
    if offload not in OFFLOADS:
        raise InputError(f"offload must be one of {', '.join(OFFLOADS)}, got {offload!r}")
    dev = pick_device(device)
    if offload != "none" and dev.type == "cpu":
        raise InputError(f"--offload {offload} keeps the networks in CPU memory and runs them on a GPU, "
                         f"but the device is the CPU{'' if torch.cuda.is_available() else ' (no CUDA device here)'}")
    return dev
