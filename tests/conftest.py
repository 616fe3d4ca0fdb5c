"""Shared fixtures: the reference checkpoint, an analytic Gaussian model, and a network-free environment."""

from __future__ import annotations

import math
import os
import tempfile

# huggingface_hub reads these once, at import: set them before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="sdedit-test-hf-")
os.environ.pop("SDEDIT_DEBUG", None)
# Precision 'auto' times fp32 against bf16 and caches the choice: the suite keeps its cache to itself, and runs
# fp32 unless a test asks otherwise (its outputs must not depend on which precision this CPU finds faster).
os.environ["SDEDIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="sdedit-test-cache-")
os.environ["SDEDIT_PRECISION"] = "fp32"
# Threads pinned for the session: the cores shared out among pytest-xdist's workers (-n), one thread each on a
# 2-core machine, so that no worker's torch oversubscribes the cores; subprocesses (CLI tests) inherit it.
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(THREADS)
from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(THREADS)

from sdedit.families.pixel import PixelModel
from sdedit.engine.schedules import VESchedule

DATA = Path(__file__).parent / "data"


class GaussianDenoiser(nn.Module):
    """Exact D(x, sigma) = E[x0 | x] for data x0 ~ N(mu, s0^2) per pixel."""

    def __init__(self, mu: float, s0: float):
        super().__init__()
        self.mu, self.s0 = mu, s0
        self.register_buffer("anchor", torch.zeros(()))  # gives the module a device

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma.reshape(-1, 1, 1, 1).to(x.dtype) ** 2
        return self.mu + self.s0**2 / (self.s0**2 + s2) * (x - self.mu)


def gaussian_model(mu: float = 0.1, s0: float = 0.5, resolution: int = 32) -> PixelModel:
    """An PixelModel whose data are Gaussian, on a VE schedule in contract units."""
    return PixelModel(GaussianDenoiser(mu, s0), VESchedule(0.01, 50.0, data_range=2.0), resolution, "gaussian")


def t_for_sigma(schedule: VESchedule, sigma: float) -> float:
    """Invert the VE schedule."""
    return math.log(sigma / (schedule.scale * schedule.sigma_min)) / math.log(schedule.sigma_max / schedule.sigma_min)


@pytest.fixture(scope="session")
def tiny_model():
    from sdedit import load_model

    # fp32: the tests compare it with the original network's fp32 outputs
    return load_model(DATA / "tiny.ckpt", config=DATA / "tiny.yml", device="cpu", precision="fp32")
