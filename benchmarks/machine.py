"""What machine a benchmark ran on: CPU model and its bf16 features, cores, torch build (named beside every figure)."""

from __future__ import annotations

import os

import torch

from sdedit.devices import cpu_name


def describe() -> dict:
    """A record of the machine for raw benchmark files."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        pass
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


def label() -> str:
    """One line for printed tables."""
    d = describe()
    extras = [k for k in ("amx_bf16", "avx512_bf16") if d[k]]
    gpu = f", GPU {d['cuda']}" if d["cuda"] else ""
    return (f"{d['cpu']} ({d['cores']} cores{', ' + ', '.join(extras) if extras else ', no native bf16'}), "
            f"torch {d['torch']}{gpu}")


def slug() -> str:
    """A short file-name tag for the CPU, e.g. 'xeon-amx' or 'epyc-avx512bf16' or 'avx2'."""
    d = describe()
    vendor = "xeon" if "Xeon" in d["cpu"] else "epyc" if "EPYC" in d["cpu"] else "cpu"
    feature = "amx" if d["amx_bf16"] else "avx512bf16" if d["avx512_bf16"] else "avx2"
    return f"{vendor}-{feature}"
