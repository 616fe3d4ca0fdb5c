"""Stable Diffusion 1.x/2.x: SDEdit in a VAE's latent space, text-guided with classifier-free guidance.

Stable Diffusion's img2img is SDEdit on z = scale * E(x): the guide is encoded (one draw
from the VAE's posterior per sample), perturbed to sigma(t0), denoised by any sampler under
classifier-free guidance (Ho & Salimans 2022), and decoded; a mask reaches the latent grid by
max-pooling.  The input keeps its own aspect ratio (sides snapped down to multiples of 8).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import pick_device
from ..engine.denoisers import autocast, eps_from_v, vp_input, x0_from_eps
from ..engine.samplers import Denoiser
from ..engine.schedules import DiscreteVPSchedule
from ..errors import InputError
from ..images import Fit
from ..loading.checkpoints import LOAD_ERRORS, check_sample_size, first_line, plan_network, read_json, \
    schedule_from, scheduler_config
from ..settings import RunSettings
from .base import Frame, Model

LATENT_FACTOR = 8  # pixels per latent cell in Stable Diffusion's VAE


class GuidedDenoiser(nn.Module):
    """D(z, sigma) of a latent eps/v network with classifier-free guidance: eps_u + w (eps_c - eps_u)."""

    def __init__(self, unet: nn.Module, schedule: DiscreteVPSchedule, prediction_type: str, cond: torch.Tensor,
                 uncond: torch.Tensor | None, guidance: float, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.unet, self.schedule, self.prediction_type = unet, schedule, prediction_type
        self.cond, self.uncond, self.guidance = cond, uncond, guidance
        self.autocast_dtype = autocast_dtype

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        s = sigma.to(x.device, x.dtype).reshape(-1, 1, 1, 1)
        x_vp = vp_input(x, s)
        step = self.schedule.step(sigma.reshape(-1)).to(x.device, torch.float32)
        guided = self.uncond is not None and self.guidance != 1.0
        ctx = self.cond.expand(b, -1, -1)
        if guided:
            ctx = torch.cat([self.uncond.expand(b, -1, -1), ctx])
        x_in, t_in = (torch.cat([x_vp, x_vp]), torch.cat([step, step])) if guided else (x_vp, step)
        with autocast(x.device, self.autocast_dtype):
            out = self.unet(x_in, t_in, encoder_hidden_states=ctx.to(x.device)).sample
        out = out.float()
        if guided:
            out_u, out_c = out.chunk(2)
            out = out_u + self.guidance * (out_c - out_u)  # linear, so guiding v or eps is the same
        if self.prediction_type == "v_prediction":
            out = eps_from_v(out, x_vp, s)
        return x0_from_eps(x, s, out)


def latent_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A pixel mask (1, 1, H, W) on the latent grid: a cell is as edited as its most edited pixel."""
    return F.adaptive_max_pool2d(mask, shape)


def snap8(size: tuple[int, int]) -> tuple[int, int]:
    """The largest size with both sides multiples of 8 that fits in size."""
    w, h = (max(LATENT_FACTOR, s // LATENT_FACTOR * LATENT_FACTOR) for s in size)
    return w, h


@dataclass
class StableDiffusionModel(Model):
    """A Stable Diffusion 1.x/2.x model: UNet2DConditionModel, AutoencoderKL, CLIP text encoder and tokenizer."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    schedule: DiscreteVPSchedule
    prediction_type: str  # "epsilon" or "v_prediction"
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    autocast_dtype: torch.dtype | None = None  # the UNet's autocast; the VAE always runs in fp32
    tile_vae: bool | None = None  # None: tiled above 1024 px
    text_conditioned = True

    @property
    def resolution(self) -> int:
        """The image side the model was trained at (its UNet's sample size times 8)."""
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size) * LATENT_FACTOR

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: str | torch.device) -> StableDiffusionModel:
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(device)
        return self

    def set_autocast(self, dtype: torch.dtype | None) -> None:
        self.autocast_dtype = dtype

    def compile(self) -> None:
        self.unet = torch.compile(self.unet)

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """CLIP text embeddings (1, tokens, dim) of one prompt, padded to the tokenizer's length."""
        ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0].float()

    def denoiser(self, settings: RunSettings) -> Denoiser:
        """The denoiser for one prompt: conditional, or classifier-free guided against the negative prompt."""
        uncond = self.encode_prompt(settings.negative_prompt) if settings.guidance != 1.0 else None
        return GuidedDenoiser(self.unet, self.schedule, self.prediction_type, self.encode_prompt(settings.prompt),
                              uncond, settings.guidance, self.autocast_dtype)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(z, sigma) for the empty prompt without guidance."""
        return self.denoiser(RunSettings(guidance=1.0, seed=0))(x, sigma)

    def frame(self, size: tuple[int, int], fit: Fit, original_size: bool) -> Frame:
        """The whole input, at the largest multiple-of-8 size inside it; outputs come back at the input's size."""
        snapped = snap8(size)
        tiled = self.tile_vae if self.tile_vae is not None else max(snapped) > 1024
        if tiled:
            self.vae.enable_tiling()
        else:
            self.vae.disable_tiling()
        return Frame((0, 0, *size), snapped, True)

    @torch.inference_mode()
    def encode(self, x_g: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Scaled latents of one guide, one draw from the VAE's posterior per generator (as diffusers draws it)."""
        dist = self.vae.encode(x_g.to(self.device, torch.float32)).latent_dist
        draws = [torch.randn(dist.mean.shape, generator=g, dtype=torch.float32).to(self.device) for g in generators]
        z = torch.cat([dist.mean + dist.std * d for d in draws])
        return z * self.vae.config.scaling_factor

    def encode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        h, w = mask.shape[-2:]
        return latent_mask(mask.to(self.device), (h // LATENT_FACTOR, w // LATENT_FACTOR))

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from scaled latents (fp32)."""
        return self.vae.decode(z.float() / self.vae.config.scaling_factor).sample.clamp(-1.0, 1.0)


def is_sd_folder(root: Path) -> bool:
    """Whether a folder holds a Stable Diffusion-style pipeline (model_index.json with unet/ and vae/)."""
    return (root / "model_index.json").is_file() and (root / "unet" / "config.json").is_file() and \
        (root / "vae" / "config.json").is_file()


def _weights(folder: Path) -> dict[str, Any]:
    """from_pretrained options: safetensors when present, never remote code."""
    return {"use_safetensors": any(folder.glob("*.safetensors"))}


def load_stable_diffusion(root: str | Path, *, device: str | torch.device | None = None,
                          name: str | None = None) -> StableDiffusionModel:
    """Load a diffusers SD 1.x/2.x folder (unet, vae, text_encoder, tokenizer, scheduler) onto one device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = Path(root)
    index = read_json(root / "model_index.json")
    kind = index.get("_class_name", "")
    if "XL" in kind or (root / "text_encoder_2").is_dir():
        raise InputError(f"{root}: {kind or 'SDXL'} needs pooled text embeddings and size conditioning, which "
                         f"this engine does not pass yet; Stable Diffusion 1.x/2.x folders work")
    unet_cfg = read_json(root / "unet" / "config.json")
    if unet_cfg.get("_class_name") != "UNet2DConditionModel":
        raise InputError(f"{root}: unet is a {unet_cfg.get('_class_name')}, not a UNet2DConditionModel")
    if unet_cfg.get("in_channels", 4) != 4:
        raise InputError(f"{root}: a {unet_cfg['in_channels']}-channel inpainting UNet; use the plain model "
                         f"(SDEdit masks any 4-channel model)")
    for part in ("text_encoder", "tokenizer"):
        if not (root / part).is_dir():
            raise InputError(f"{root}: no {part}/ folder; a text-conditioned model needs one")
    for part, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        cfg = read_json(root / part / "config.json")
        check_sample_size(cfg.get("sample_size", 64), str(root / part / "config.json"))
        plan_network(lambda c=cfg, k=cls: k.from_config({n: v for n, v in c.items() if not n.startswith("_")}),
                     str(root / part / "config.json"))  # limits checked before from_pretrained allocates
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **_weights(root / "unet"))
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **_weights(root / "vae"))
        text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", **_weights(root / "text_encoder"))
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    except LOAD_ERRORS as e:
        raise InputError(f"{root}: cannot load its components: {first_line(e)}") from None
    sched = scheduler_config(root)
    prediction = str(sched.get("prediction_type", "epsilon"))
    if prediction not in ("epsilon", "v_prediction"):
        raise InputError(f"{root}: prediction_type {prediction!r} is not supported (epsilon or v_prediction)")
    schedule = schedule_from(lambda: DiscreteVPSchedule(
        float(sched.get("beta_start", 0.00085)), float(sched.get("beta_end", 0.012)),
        int(sched.get("num_train_timesteps", 1000)), str(sched.get("beta_schedule", "scaled_linear"))), root)
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    params = sum(p.numel() for m in (unet, vae, text_encoder) for p in m.parameters())
    model = StableDiffusionModel(unet, vae, text_encoder, tokenizer, schedule, prediction, name or str(root),
                                 {"family": "stable-diffusion", "source": str(root), "format": "diffusers",
                                  "pipeline": kind, "parameters": params})
    return model.to(pick_device(device))
