"""Latent, text-conditioned models (Stable Diffusion 1.x/2.x): SDEdit in a VAE's latent space with guidance.

Stable Diffusion's img2img is SDEdit on z = scale * E(x): the guide is encoded, perturbed to
sigma(t0), denoised by any sampler of `samplers.py` under classifier-free guidance (Ho &
Salimans 2022), and decoded; a mask is downsampled to the latent grid for the `project`
hook, and the exact kept pixels are pasted back after decoding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .editing import sdedit
from .errors import InputError, SamplingError
from .images import ImageLike, image_to_tensor, load_guide, mask_to_tensor, paste_kept, tensor_to_images
from .run_settings import DEFAULT_SAMPLER, checked_run
from .schedules import DiscreteVPSchedule

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
        alpha = 1.0 / (1.0 + s**2).sqrt()  # VE -> VP: x_vp = alpha x, alpha = sqrt(alpha_bar)
        x_vp = x * alpha
        step = self.schedule.step(sigma.reshape(-1)).to(x.device, torch.float32)
        guided = self.uncond is not None and self.guidance != 1.0
        ctx = self.cond.expand(b, -1, -1)
        if guided:
            ctx = torch.cat([self.uncond.expand(b, -1, -1), ctx])
        x_in, t_in = (torch.cat([x_vp, x_vp]), torch.cat([step, step])) if guided else (x_vp, step)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            out = self.unet(x_in, t_in, encoder_hidden_states=ctx.to(x.device)).sample
        out = out.float()
        if guided:
            out_u, out_c = out.chunk(2)
            out = out_u + self.guidance * (out_c - out_u)  # linear, so guiding v or eps is the same
        if self.prediction_type == "v_prediction":
            # v = alpha eps - s_vp x0 with s_vp = sigma alpha  =>  eps = s_vp x_vp + alpha v
            out = s * alpha * x_vp + alpha * out
        return x - s * out.to(x.dtype)


@dataclass
class LatentModel:
    """A Stable Diffusion-family model: UNet2DConditionModel, AutoencoderKL, CLIP text encoder and tokenizer."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    schedule: DiscreteVPSchedule
    prediction_type: str  # "epsilon" or "v_prediction"
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    autocast_dtype: torch.dtype | None = None  # the UNet's autocast on GPUs; the VAE always runs in fp32

    @property
    def resolution(self) -> int:
        """The image side the model was trained at (its UNet's sample size times 8)."""
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size) * LATENT_FACTOR

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: str | torch.device) -> LatentModel:
        """Move every component (in place) and return self."""
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(device)
        return self

    def optimize(self, *, precision: str = "fp32", compile: bool = False) -> LatentModel:
        """UNet under bf16/fp16 autocast (the VAE stays fp32 so it cannot overflow); optional torch.compile."""
        dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
        if precision not in dtypes:
            raise ValueError(f"precision must be one of {', '.join(dtypes)}, got {precision!r}")
        self.autocast_dtype = dtypes[precision]
        if compile:
            self.unet = torch.compile(self.unet)
        self.info.update(precision=precision, compiled=compile)
        return self

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """CLIP text embeddings (1, tokens, dim) of one prompt, padded to the tokenizer's length."""
        ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0].float()

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """Scaled latents of one guide x in [-1, 1], one draw from the VAE's posterior per generator."""
        dist = self.vae.encode(x.to(self.device, torch.float32)).latent_dist
        draws = [torch.randn(dist.mean.shape, generator=g, dtype=torch.float32).to(self.device) for g in generators]
        z = torch.cat([dist.mean + dist.std * d for d in draws])
        return z * self.vae.config.scaling_factor

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from scaled latents (fp32)."""
        return self.vae.decode(z.float() / self.vae.config.scaling_factor).sample.clamp(-1.0, 1.0)

    def guided(self, prompt: str, negative_prompt: str, guidance: float) -> GuidedDenoiser:
        """The denoiser for one prompt: conditional, or classifier-free guided against the negative prompt."""
        uncond = self.encode_prompt(negative_prompt) if guidance != 1.0 else None
        return GuidedDenoiser(self.unet, self.schedule, self.prediction_type, self.encode_prompt(prompt), uncond,
                              guidance, self.autocast_dtype)


def is_latent_folder(root: Path) -> bool:
    """Whether a folder holds a Stable Diffusion-style pipeline (model_index.json with a conditional UNet)."""
    return (root / "model_index.json").is_file() and (root / "unet" / "config.json").is_file() and \
        (root / "vae" / "config.json").is_file()


def _weights(folder: Path) -> dict[str, Any]:
    """from_pretrained options: safetensors when present, never remote code."""
    has_st = any(folder.glob("*.safetensors"))
    return {"use_safetensors": has_st}


def load_latent(root: str | Path, *, device: str | torch.device | None = None, name: str | None = None) -> LatentModel:
    """Load a diffusers SD 1.x/2.x folder (unet, vae, text_encoder, tokenizer, scheduler) onto one device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .checkpoints import _read_json, _scheduler_config, pick_device

    root = Path(root)
    index = _read_json(root / "model_index.json")
    kind = index.get("_class_name", "")
    if "XL" in kind or (root / "text_encoder_2").is_dir():
        raise InputError(f"{root}: {kind or 'SDXL'} needs pooled text embeddings and size conditioning, which "
                         f"this engine does not pass yet; Stable Diffusion 1.x/2.x folders work")
    unet_cfg = _read_json(root / "unet" / "config.json")
    if unet_cfg.get("_class_name") != "UNet2DConditionModel":
        raise InputError(f"{root}: unet is a {unet_cfg.get('_class_name')}, not a UNet2DConditionModel")
    if unet_cfg.get("in_channels", 4) != 4:
        raise InputError(f"{root}: a {unet_cfg['in_channels']}-channel inpainting UNet; use the plain model "
                         f"(SDEdit masks any 4-channel model)")
    for part in ("text_encoder", "tokenizer"):
        if not (root / part).is_dir():
            raise InputError(f"{root}: no {part}/ folder; a text-conditioned model needs one")
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **_weights(root / "unet"))
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **_weights(root / "vae"))
        text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", **_weights(root / "text_encoder"))
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{root}: cannot load its components: {str(e).splitlines()[0]}") from None
    sched = _scheduler_config(root)
    prediction = str(sched.get("prediction_type", "epsilon"))
    if prediction not in ("epsilon", "v_prediction"):
        raise InputError(f"{root}: prediction_type {prediction!r} is not supported (epsilon or v_prediction)")
    schedule = DiscreteVPSchedule(float(sched.get("beta_start", 0.00085)), float(sched.get("beta_end", 0.012)),
                                  int(sched.get("num_train_timesteps", 1000)),
                                  str(sched.get("beta_schedule", "scaled_linear")))
    for m in (unet, vae, text_encoder):
        m.eval().requires_grad_(False)
    params = sum(p.numel() for m in (unet, vae, text_encoder) for p in m.parameters())
    model = LatentModel(unet, vae, text_encoder, tokenizer, schedule, prediction, name or str(root),
                        {"family": "latent", "source": str(root), "format": "diffusers", "pipeline": kind,
                         "parameters": params})
    return model.to(pick_device(device))


def latent_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A pixel mask (1, 1, H, W) on the latent grid: a cell is as edited as its most edited pixel."""
    h, w = shape
    return F.adaptive_max_pool2d(mask, (h, w))


def snap8(size: tuple[int, int]) -> tuple[int, int]:
    """The largest size with both sides multiples of 8 that fits in size."""
    w, h = (max(LATENT_FACTOR, s // LATENT_FACTOR * LATENT_FACTOR) for s in size)
    return w, h


def latent_edit(model: LatentModel, image: ImageLike, *, prompt: str = "", negative_prompt: str = "",
                guidance: float = 7.5, mask: ImageLike | None = None, t0: float = 0.5, steps: int | None = None,
                repeats: int = 1, sampler: str = DEFAULT_SAMPLER, num_samples: int = 1, seed: int | None = None,
                progress: bool = True, batch_size: int | None = None, tile_vae: bool | None = None,
                callback: Callable[[int, float, torch.Tensor, torch.Tensor], None] | None = None) -> list[Image.Image]:
    """Text-guided SDEdit in latent space; outputs at the input's size, kept pixels exactly the input's."""
    steps, seed = checked_run(sampler, t0, steps, repeats, num_samples, seed, batch_size)
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or guidance < 0:
        raise InputError(f"guidance must be a finite number >= 0, got {guidance!r}")
    full, full_mask = load_guide(image, mask)
    size = snap8(full.size)
    guide = full if size == full.size else full.resize(size, Image.Resampling.LANCZOS)
    small_mask = None if full_mask is None else \
        (full_mask if size == full.size else full_mask.resize(size, Image.Resampling.BILINEAR))
    if tile_vae if tile_vae is not None else max(size) > 1024:
        model.vae.enable_tiling()
    else:
        model.vae.disable_tiling()

    device = model.device
    x_g = image_to_tensor(guide).to(device)
    m_lat = None
    if small_mask is not None:
        m_lat = latent_mask(mask_to_tensor(small_mask).to(device), (size[1] // 8, size[0] // 8))
    denoiser = model.guided(prompt, negative_prompt, float(guidance))
    batch = batch_size or min(num_samples, 4)
    bar = tqdm(total=math.ceil(num_samples / batch) * repeats * steps, desc="sdedit", unit="step",
               disable=not progress)

    def on_step(i: int, sigma: float, x: torch.Tensor, denoised: torch.Tensor) -> None:
        bar.update(1)
        if callback is not None:
            callback(i, sigma, x, denoised)

    outputs: list[Image.Image] = []
    try:
        for start in range(0, num_samples, batch):
            n = min(batch, num_samples - start)
            gens = [torch.Generator().manual_seed(seed + start + j) for j in range(n)]
            z_g = model.encode(x_g, gens)  # one posterior draw per sample, then its SDEdit noise, as diffusers
            try:
                z = sdedit(denoiser, model.schedule, z_g, mask=m_lat, t0=float(t0), steps=steps, repeats=repeats,
                           sampler=sampler, generator=gens, callback=on_step)
            except FloatingPointError as e:
                raise SamplingError(f"sampling diverged: {e}; no image written") from None
            x = model.decode(z)
            if not torch.isfinite(x).all():
                raise SamplingError("decoding produced NaN or inf; no image written")
            outputs += tensor_to_images(x)
    finally:
        bar.close()

    base = {"model": model.name, "prompt": prompt, "negative_prompt": negative_prompt, "guidance": float(guidance),
            "t0": float(t0), "steps": steps, "sampler": sampler, "repeats": repeats, "size": list(size),
            "masked": mask is not None, "precision": model.info.get("precision", "fp32"), "device": str(device),
            "sdedit_version": __version__}
    results = []
    for j, out in enumerate(outputs):
        if out.size != full.size:
            out = out.resize(full.size, Image.Resampling.LANCZOS)
        if full_mask is not None:
            out = paste_kept(out, full, full_mask)
        out.info["sdedit"] = json.dumps({**base, "seed": seed + j, "sample": j})
        results.append(out)
    return results

