"""What every latent family shares: the VAE's latent space (encode with one posterior draw per generator, decode),
masks on the latent grid, UNet/transformer autocast, and LoRA on the main network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..loading.lora import LoraSpec, apply_loras


def latent_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A pixel mask (1, 1, H, W) on the latent grid: a cell is as edited as its most edited pixel."""
    return F.adaptive_max_pool2d(mask, shape)


def repaint_mask(mask: torch.Tensor | None, x_g: torch.Tensor) -> torch.Tensor:
    """What inpainting networks are trained on: 1 = repaint, binarised at 0.5; no mask repaints everything."""
    if mask is None:
        return torch.ones_like(x_g[:, :1])
    return (mask >= 0.5).to(x_g.dtype)


class LatentSpace:
    """Mixin for models with a `vae` (AutoencoderKL), an `autocast_dtype` and an `info` dict."""

    vae: nn.Module
    autocast_dtype: torch.dtype | None
    info: dict[str, Any]
    device: torch.device

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell: the VAE halves the size at each level but the last."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def set_autocast(self, dtype: torch.dtype | None) -> None:
        self.autocast_dtype = dtype  # the main network's; the VAE always runs in fp32

    @torch.inference_mode()
    def encode(self, x_g: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(z - shift) * scale of one guide, one draw from the VAE's posterior per generator (as diffusers draws it)."""
        dist = self.vae.encode(x_g.to(self.device, torch.float32)).latent_dist
        draws = [torch.randn(dist.mean.shape, generator=g, dtype=torch.float32).to(self.device) for g in generators]
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
        return self.vae.decode(z.float() / cfg.scaling_factor + shift).sample.clamp(-1.0, 1.0)

    def lora_onto(self, network: nn.Module, specs: list[LoraSpec], reader: object, prefix: str) -> None:
        """Apply LoRAs to the main network and record them (and any text-encoder layers left out) in info."""
        if not specs:
            return
        skipped = apply_loras(network, specs, reader, prefix)
        self.info["loras"] = [f"{s.source}:{s.scale:g}" for s in specs]
        if skipped:
            self.info["lora_text_encoder_layers_skipped"] = len(skipped)
