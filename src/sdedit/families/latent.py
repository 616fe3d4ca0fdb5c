"""What every latent family shares: the VAE's latent space (encode with one posterior draw per generator, decode),
masks on the latent grid, LoRA on the main network and text encoders, and CPU offload of
its networks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import Offload
from ..errors import InputError
from ..loading.lora import LoraSpec, apply_loras
from .offload import ModelOffload, offload_layers


VAE_TILE_ABOVE = 1024  # pixels a side; diffusers' VAEs then encode and decode in overlapping tiles


def latent_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A pixel mask (1, 1, H, W) on the latent grid: a cell is as edited as its most edited pixel."""
    return F.adaptive_max_pool2d(mask, shape)


def repaint_mask(mask: torch.Tensor | None, x_g: torch.Tensor) -> torch.Tensor:
    """What inpainting networks are trained on: 1 = repaint, binarised at 0.5; no mask repaints everything."""
    if mask is None:
        return torch.ones_like(x_g[:, :1])
    return (mask >= 0.5).to(x_g.dtype)


class LatentSpace:
    """Mixin for models with a `vae` (AutoencoderKL) and an `info` dict."""

    vae: nn.Module
    info: dict[str, Any]
    name: str
    execution_device: torch.device | None = None  # set when offloaded: where the networks run
    offloader: ModelOffload | None = None  # model offload's bookkeeping

    def networks(self) -> dict[str, nn.Module]:
        """Every network by name, the main one (UNet or transformer) first."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the networks run: the execution device when offloaded, else where the main network is."""
        if self.execution_device is not None:
            return self.execution_device
        return next(next(iter(self.networks().values())).parameters()).device

    def to(self, device: str | torch.device) -> Any:
        """Move every network (in place) and return self."""
        if self.execution_device is not None:
            raise InputError(f"{self.name} is offloaded ({self.info['offload']}): its networks move on their own")
        for net in self.networks().values():
            net.to(device)
        return self

    def offload(self, mode: Offload, device: torch.device, weights_dtype: torch.dtype | None = None) -> Any:
        """Keep the networks in CPU memory and run them on `device`: whole networks (model) or layer by layer
        (sequential); weights_dtype stores every network but the VAE in that dtype (bf16 halves the memory)."""
        if mode == "none":
            return self.to(device)
        if self.execution_device is not None:
            raise InputError(f"{self.name} is already offloaded ({self.info['offload']})")
        nets = self.networks()
        if weights_dtype is not None:
            for name, net in nets.items():
                if name != "vae":  # the VAE runs in fp32, as without offload
                    net.to(weights_dtype)
            self.info["weights"] = self.info["precision"] = {torch.bfloat16: "bf16", torch.float16: "fp16"}[weights_dtype]
        if mode == "model":
            self.offloader = ModelOffload(nets, device)
        elif mode == "sequential":
            offload_layers(nets.values(), device)
        else:
            raise InputError(f"offload must be none, model or sequential, got {mode!r}")
        self.execution_device = torch.device(device)
        self.info["offload"] = mode
        return self

    def release(self) -> None:
        """Model offload: the network that ran last goes back to CPU memory (sequential offload returns each layer)."""
        if self.offloader is not None:
            self.offloader.release()

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell: the VAE halves the size at each level but the last."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def main_network(self) -> nn.Module:
        """The UNet or transformer (named first by networks())."""
        return next(iter(self.networks().values()))

    tile_vae: bool | None = None  # None: VAE_TILE_ABOVE decides

    def vae_tiling(self, height: int, width: int) -> bool:
        """Tiled VAE passes for images over VAE_TILE_ABOVE px a side (or as tile_vae says), decided per call from its
        own size: the VAE's memory grows with the image, its tiles' does not (a tiled edit's canvas of any size)."""
        return self.tile_vae if self.tile_vae is not None else max(height, width) > VAE_TILE_ABOVE

    @contextmanager
    def _tiling(self, height: int, width: int) -> Iterator[None]:
        """The VAE tiled or not for one call, by that call's own image size (never left set for the next call, so
        an image's output does not depend on what else is in its batch or run)."""
        before = getattr(self.vae, "use_tiling", False)
        if hasattr(self.vae, "use_tiling"):
            self.vae.use_tiling = self.vae_tiling(height, width)
        try:
            yield
        finally:
            if hasattr(self.vae, "use_tiling"):
                self.vae.use_tiling = before

    @torch.inference_mode()
    def encode(self, x_g: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(z - shift) * scale of one guide, one draw from the VAE's posterior per generator (as diffusers draws it)."""
        with self._tiling(*x_g.shape[-2:]):
            dist = self.vae.encode(x_g.to(self.device, torch.float32)).latent_dist
        draws = [torch.randn(dist.mean.shape, generator=g, dtype=torch.float32, device=g.device).to(self.device)
                 for g in generators]
        z = torch.cat([dist.mean + dist.std * d for d in draws])
        cfg = self.vae.config
        return (z - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor

    def encode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        h, w = mask.shape[-2:]
        return latent_mask(mask.to(self.device), (h // self.latent_factor, w // self.latent_factor))

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from latents (fp32)."""
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        with self._tiling(z.shape[-2] * self.latent_factor, z.shape[-1] * self.latent_factor):
            return self.vae.decode(z.float() / cfg.scaling_factor + shift).sample.clamp(-1.0, 1.0)

    def lora_onto(self, networks: dict[str, nn.Module | None], specs: list[LoraSpec], reader: object) -> None:
        """Apply LoRAs to the main network (named first) and the text encoders, and record them in info."""
        if not specs:
            return
        apply_loras({k: v for k, v in networks.items() if v is not None}, specs, reader)
        self.info["loras"] = [f"{s.source}:{s.scale:g}" for s in specs]
