"""CPU offload of a latent model's networks: whole networks moved to the accelerator while they run (model), or
one layer's weights at a time (sequential), both through accelerate's forward hooks.

model: every network lives in CPU memory; a network's forward (or the VAE's encode/decode, which
diffusers routes through the same hook) first sends the network that ran before it back to the
CPU, then brings its own weights over; so at most one network is resident at a time and the UNet
or transformer stays on the accelerator for the whole sampling loop (with ControlNets, it and each
ControlNet take turns at every evaluation).  `release` sends the last
one home at the end of a run.  sequential: accelerate's `cpu_offload` keeps each network's
weights in a CPU state dict and streams every leaf module's weights in for its forward only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from accelerate import cpu_offload
from accelerate.hooks import ModelHook, add_hook_to_module
from accelerate.utils import send_to_device
from torch import nn

HOME = torch.device("cpu")  # where offloaded weights live


class _BringIn(ModelHook):
    """Before its network runs: make it the group's resident network and move the inputs to the device."""

    def __init__(self, group: ModelOffload, name: str):
        self.group, self.name = group, name

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        self.group.bring(self.name)
        return send_to_device(args, self.group.device), send_to_device(kwargs, self.group.device)


class ModelOffload:
    """Networks kept on the CPU, each moved to `device` when it runs, at most one of them there at a time."""

    def __init__(self, networks: dict[str, nn.Module], device: torch.device):
        self.networks, self.device = networks, device
        self.resident: str | None = None  # the network now on the device
        self.moves: list[tuple[str, str]] = []  # (network, "in" or "out") in order: the transfers made
        for name, net in networks.items():
            net.to(HOME)
            add_hook_to_module(net, _BringIn(self, name), append=True)

    def bring(self, name: str) -> None:
        """Move one network to the device, first sending the resident one home."""
        if self.resident == name:
            return
        self.release()
        self.networks[name].to(self.device)
        self.resident = name
        self.moves.append((name, "in"))

    def release(self) -> None:
        """Send the resident network back to the CPU."""
        if self.resident is not None:
            self.networks[self.resident].to(HOME)
            self.moves.append((self.resident, "out"))
            self.resident = None


def offload_layers(networks: Iterable[nn.Module], device: torch.device) -> None:
    """Sequential offload: each network's weights held in a CPU state dict, streamed to `device` layer by layer."""
    for net in networks:
        net.to(HOME)
        # a network with weights of its own (not only in submodules) needs its buffers streamed too, as diffusers does
        cpu_offload(net, device, offload_buffers=len(net._parameters) > 0)
