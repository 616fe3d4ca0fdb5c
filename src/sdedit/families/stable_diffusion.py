"""Stable Diffusion 1.x/2.x and XL: SDEdit in a VAE's latent space, text-guided with classifier-free guidance.

Stable Diffusion's img2img is SDEdit on z = scale * E(x): the guide is encoded (one draw
from the VAE's posterior per sample), perturbed to sigma(t0), denoised by any sampler under
classifier-free guidance (Ho & Salimans 2022), and decoded; a mask reaches the latent grid by
max-pooling.  The input keeps its own aspect ratio (sides snapped down to multiples of the VAE's
downsampling factor, 8).  SDXL adds a second text encoder (their penultimate hidden states
concatenated), the second one's pooled projection, and the size conditioning (original size,
crop corner, target size: the image's own size and (0, 0), as diffusers' img2img passes them).
Inpainting UNets (9 channels) also take, beside the noisy latents, the repaint mask on the latent
grid and the latents of the guide with that region zeroed (`edit_condition`), as they were trained.
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
from ..engine.denoisers import eps_from_v, vp_input, x0_from_eps
from ..engine.samplers import Denoiser
from ..engine.schedules import DiscreteVPSchedule
from ..errors import InputError
from ..images import Fit
from ..loading.ip_adapter import IPAdapterSpec, attach_ip_adapters
from ..loading.lora import LoraSpec
from ..loading.single_file import ldm_networks
from ..loading.checkpoints import LOAD_ERRORS, first_line, plan_components, read_json, \
    schedule_from, scheduler_config
from ..settings import RunSettings
from .base import Frame, Model
from .control import AttachedControl, check_family, pixels_from_grid, pixels_on_grid, scaled, summed
from .latent import LatentSpace, latent_mask, repaint_mask  # noqa: F401 (latent_mask: part of this family's API)

LATENT_FACTOR = 8  # pixels per latent cell in Stable Diffusion's VAEs (2 ** (levels - 1))


@dataclass(frozen=True)
class TextCondition:
    """One prompt's conditioning: token embeddings for cross-attention, and SDXL's pooled embedding."""

    context: torch.Tensor  # (1, tokens, dim)
    pooled: torch.Tensor | None = None  # (1, dim): SDXL only

    def zeros(self) -> TextCondition:
        """The all-zero conditioning SDXL uses for an empty negative prompt."""
        return TextCondition(torch.zeros_like(self.context),
                             None if self.pooled is None else torch.zeros_like(self.pooled))


class GuidedDenoiser(nn.Module):
    """D(z, sigma) of a latent eps/v network with classifier-free guidance: eps_u + w (eps_c - eps_u)."""

    def __init__(self, unet: nn.Module, schedule: DiscreteVPSchedule, prediction_type: str, cond: TextCondition,
                 uncond: TextCondition | None, guidance: float, latent_factor: int = LATENT_FACTOR,
                 extra_channels: int = 0, device: torch.device | str = "cpu",
                 controls: Sequence[AttachedControl] = (), image_embeds: Sequence[torch.Tensor] = ()):
        super().__init__()
        self.extra_channels = extra_channels  # an inpainting UNet's mask and masked-image latents (5), else 0
        self.unet, self.schedule, self.prediction_type = unet, schedule, prediction_type
        self.cond, self.uncond, self.guidance = cond, uncond, guidance
        # the schedule's grid where the UNet is, once per run (no copy to the device at every step)
        self.register_buffer("log_sigmas", schedule.log_sigmas.to(device), persistent=False)
        self.latent_factor = latent_factor
        self.controls = list(controls)  # ControlNets: their images follow the extra channels in `condition`
        self.image_embeds = [e.to(device) for e in image_embeds]  # IP-Adapters: each reference's (1, 1, width)

    def _extra(self, branches: list[TextCondition], b: int, x: torch.Tensor) -> dict[str, Any]:
        """SDXL's added conditioning: pooled text embeddings and (original size, crop corner, target size)."""
        if branches[0].pooled is None:
            return {}
        h, w = x.shape[-2] * self.latent_factor, x.shape[-1] * self.latent_factor
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=x.device)
        pooled = torch.cat([c.pooled.expand(b, -1) for c in branches if c.pooled is not None])
        return {"added_cond_kwargs": {"text_embeds": pooled.to(x.device),
                                      "time_ids": time_ids.expand(b * len(branches), -1)}}

    def _with_images(self, added: dict[str, Any], b: int, guided: bool, x: torch.Tensor) -> dict[str, Any]:
        """The UNet's added conditioning with the IP-Adapters' image embeddings, one row per row of its input: zeros
        for the unconditional branch, as diffusers' pipelines give a base IP-Adapter (ControlNets never see them)."""
        if not self.image_embeds:
            return added
        rows = [e.to(x.device).expand(b, -1, -1) for e in self.image_embeds]
        embeds = [torch.cat([torch.zeros_like(r), r]) for r in rows] if guided else rows
        return {"added_cond_kwargs": {**added.get("added_cond_kwargs", {}), "image_embeds": embeds}}

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """condition: an inpainting UNet's extra channels (mask, masked-image latents), then each ControlNet's image
        on the latent grid (control.pixels_on_grid), one row per row of x."""
        b = x.shape[0]
        s = sigma.to(x.device, x.dtype).reshape(-1, 1, 1, 1)
        x_vp = vp_input(x, s)
        extra, per_control = self.extra_channels, 3 * self.latent_factor ** 2
        got = condition.shape[1] if condition is not None else 0
        if got != extra + per_control * len(self.controls):
            raise InputError(f"this UNet takes {extra} extra input channels (an inpainting model's mask and masked "
                             f"image: model.edit_condition) and {len(self.controls)} control image(s) "
                             f"(model.control_condition); got {got} channels")
        if condition is not None and extra:
            x_vp = torch.cat([x_vp, condition[:, :extra].to(x_vp)], dim=1)  # beside the noisy latents, unscaled
        step = self.schedule.step(sigma.reshape(-1), self.log_sigmas).to(torch.float32)
        guided = self.uncond is not None and self.guidance != 1.0
        branches = [self.uncond, self.cond] if guided and self.uncond is not None else [self.cond]
        ctx = torch.cat([c.context.expand(b, -1, -1) for c in branches]).to(x.device)
        x_in, t_in = (torch.cat([x_vp, x_vp]), torch.cat([step, step])) if guided else (x_vp, step)
        added = self._extra(branches, b, x)
        residuals = {} if condition is None or not self.controls else \
            self._control(x_in, t_in, ctx, added, condition[:, extra:], sigma.reshape(-1), guided)
        out = self.unet(x_in, t_in, encoder_hidden_states=ctx, **self._with_images(added, b, guided, x),
                        **residuals).sample
        out = out.float()
        if guided:
            out_u, out_c = out.chunk(2)
            out = out_u + self.guidance * (out_c - out_u)  # linear, so guiding v or eps is the same
        if self.prediction_type == "v_prediction":
            out = eps_from_v(out, x_vp[:, :x.shape[1]], s)
        return x0_from_eps(x, s, out)

    def _control(self, x_in: torch.Tensor, t_in: torch.Tensor, ctx: torch.Tensor, added: dict[str, Any],
                 channels: torch.Tensor, sigma: torch.Tensor, guided: bool) -> dict[str, Any]:
        """The UNet's extra residuals: each ControlNet's, scaled per row inside its window, summed in order.  A
        ControlNet with pooled conditions (global_pool_conditions) sees the conditional branch only, and the
        unconditional branch gets no residual, as diffusers' guess mode does."""
        down: list[torch.Tensor] | None = None
        mid: list[torch.Tensor] | None = None
        for c, image in zip(self.controls, pixels_from_grid(channels, self.latent_factor), strict=True):
            scale = c.row_scale(sigma, self.schedule)
            if scale is None:
                continue
            cond_only = guided and bool(getattr(c.net.config, "global_pool_conditions", False))
            if cond_only:
                half = x_in.shape[0] // 2
                kw = {k: {n: v[half:] for n, v in val.items()} for k, val in added.items()}
                args = (x_in[half:], t_in[half:], ctx[half:])
            else:
                kw, args = added, (x_in, t_in, ctx)
                if guided:
                    image, scale = torch.cat([image, image]), torch.cat([scale, scale])
            image = image.to(x_in.device)
            if c.kind == "unet-union":  # one control type of a union ControlNet: its one-hot type vector, per row
                assert c.spec.mode is not None
                onehot = torch.zeros(1, int(c.net.config.num_control_type), device=x_in.device, dtype=args[2].dtype)
                onehot[0, c.spec.mode] = 1.0
                kw = {**kw, "control_type": onehot.expand(args[0].shape[0], -1), "control_type_idx": [c.spec.mode]}
                image_in: Any = [image]
            else:
                image_in = image
            d, m = c.net(args[0], args[1], encoder_hidden_states=args[2], controlnet_cond=image_in,
                         conditioning_scale=1.0, guess_mode=cond_only, return_dict=False, **kw)
            d, m = scaled(d, scale), scaled([m], scale)
            if cond_only:
                d, m = [torch.cat([torch.zeros_like(r), r]) for r in d], [torch.cat([torch.zeros_like(m[0]), m[0]])]
            down, mid = summed(down, d), summed(mid, m)
        if down is None or mid is None:
            return {}
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid[0]}


def snap8(size: tuple[int, int], factor: int = LATENT_FACTOR) -> tuple[int, int]:
    """The largest size with both sides multiples of the latent factor (8) that fits in size."""
    w, h = (max(factor, s // factor * factor) for s in size)
    return w, h


@dataclass
class StableDiffusionModel(LatentSpace, Model):
    """A Stable Diffusion 1.x/2.x model: UNet2DConditionModel, AutoencoderKL, CLIP text encoder and tokenizer."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    schedule: DiscreteVPSchedule
    prediction_type: str  # "epsilon" or "v_prediction"
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    tile_vae: bool | None = None  # None: LatentSpace.vae_tiling decides (over 1024 px)
    text_encoder_2: nn.Module | None = None  # SDXL: the second (projecting) CLIP text encoder
    tokenizer_2: Any = None
    zero_empty_negative: bool = False  # SDXL's force_zeros_for_empty_prompt
    controls: list[AttachedControl] = field(default_factory=list)  # ControlNets run beside the UNet
    empty_prompt: TextCondition | None = None  # the empty prompt's embedding, once denoise() has needed it
    image_embeds: list[torch.Tensor] = field(default_factory=list)  # IP-Adapters' reference embeddings (1, 1, width)
    text_conditioned = True
    takes_controlnets = True
    takes_ip_adapters = True

    @property
    def resolution(self) -> int:
        """The image side the model was trained at (its UNet's sample size times 8)."""
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (list, tuple)) else size) * self.latent_factor

    def networks(self) -> dict[str, nn.Module]:
        nets = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder,
                "text_encoder_2": self.text_encoder_2, **{f"controlnet{i}": c.net for i, c in enumerate(self.controls)}}
        return {k: v for k, v in nets.items() if v is not None}

    def add_controlnets(self, controls: list[AttachedControl]) -> None:
        """ControlNets (diffusers' ControlNetModel, and ControlNetUnionModel for SDXL) for this UNet: the same
        cross-attention width and blocks, and SDXL's added conditioning exactly when the UNet has it."""
        check_family(controls, ("unet", "unet-union"), "Stable Diffusion 1.x/2.x and SDXL")
        for c in controls:
            cfg, unet = c.net.config, self.unet.config
            if int(getattr(cfg, "conditioning_channels", 3)) != 3:
                raise InputError(f"ControlNet {c.spec.source} takes {cfg.conditioning_channels}-channel control "
                                 f"images; sdedit gives RGB images (3 channels)")
            if (cfg.cross_attention_dim != unet.cross_attention_dim or cfg.addition_embed_type != unet.addition_embed_type
                    or tuple(cfg.block_out_channels) != tuple(unet.block_out_channels)):
                raise InputError(f"ControlNet {c.spec.source} was made for another Stable Diffusion model (text width "
                                 f"{cfg.cross_attention_dim}, blocks {list(cfg.block_out_channels)}; this UNet: "
                                 f"{unet.cross_attention_dim}, {list(unet.block_out_channels)})")
        self.controls.extend(controls)
        self.info["controlnets"] = [c.label for c in self.controls]

    def control_condition(self, images: Sequence[torch.Tensor], generators: Sequence[torch.Generator]
                          ) -> torch.Tensor | None:
        """The run's control images (1x3xHxW in [0, 1], one per ControlNet) on the latent grid, one row per generator."""
        if not self.controls:
            return None
        grid = pixels_on_grid([i.to(self.device, torch.float32) for i in images], self.latent_factor)
        return grid.expand(len(generators), -1, -1, -1)

    def add_ip_adapters(self, specs: list[IPAdapterSpec]) -> None:
        """IP-Adapters in the UNet (diffusers' processors), their reference images embedded once, here; scale 0 loads
        nothing."""
        if specs:
            self.image_embeds = attach_ip_adapters(self.unet, specs, self.info.get("family"))
            self.info["ip_adapters"] = [s.label for s in specs]
            self.info["ip_images"] = [s.image_name for s in specs]

    def add_loras(self, specs: list[LoraSpec]) -> None:
        """LoRA on the UNet and text encoders, through diffusers' loader (kohya and diffusers formats) and PEFT."""
        if specs:
            from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

            xl = self.text_encoder_2 is not None
            networks = {"unet": self.unet, "text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2}
            self.lora_onto(networks, specs, StableDiffusionXLLoraLoaderMixin if xl else StableDiffusionLoraLoaderMixin)

    def compile(self) -> None:
        self.unet = torch.compile(self.unet)

    @property
    def size_multiple(self) -> int:
        """Latent sides the UNet halves evenly at each down block but the last (it takes others by interpolating)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> TextCondition:
        """CLIP text embeddings of one prompt, padded to the tokenizer's length (SDXL: both encoders, and pooled)."""
        def ids(tokenizer: Any) -> torch.Tensor:
            return tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)

        if self.text_encoder_2 is None:
            return TextCondition(self.text_encoder(ids(self.tokenizer))[0].float())
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            out = encoder(ids(tokenizer), output_hidden_states=True)
            hidden.append(out.hidden_states[-2].float())  # SDXL reads the penultimate layer
            if out[0].ndim == 2:
                pooled = out[0].float()  # the projecting encoder's pooled embedding
        return TextCondition(torch.cat(hidden, dim=-1), pooled)

    def denoiser(self, settings: RunSettings) -> Denoiser:
        """The denoiser for one prompt: conditional, or classifier-free guided against the negative prompt."""
        cond = self.encode_prompt(settings.prompt)
        uncond = None
        if settings.guidance != 1.0:
            empty = not settings.negative_prompt and self.zero_empty_negative
            uncond = cond.zeros() if empty else self.encode_prompt(settings.negative_prompt)
        return GuidedDenoiser(self.unet, self.schedule, self.prediction_type, cond, uncond, settings.guidance,
                              self.latent_factor, self.extra_channels, self.device, self.controls, self.image_embeds)

    @property
    def inpainting(self) -> bool:
        """Whether the UNet takes a mask and masked-image latents beside the latents (9 channels for SD's VAE)."""
        return int(self.unet.config.in_channels) != int(self.vae.config.latent_channels)

    @torch.inference_mode()
    def edit_condition(self, x_g: torch.Tensor, mask: torch.Tensor | None,
                       generators: Sequence[torch.Generator]) -> torch.Tensor | None:
        """Inpainting UNets: the repaint mask on the latent grid and the latents of the guide with that region zeroed."""
        if not self.inpainting:
            return None
        repaint = repaint_mask(mask, x_g)
        z_masked = self.encode(x_g * (1.0 - repaint), generators)  # one posterior draw per generator
        # nearest (the cell's top-left pixel), as the inpainting models were trained and diffusers feeds them
        cells = F.interpolate(repaint, size=z_masked.shape[-2:]).to(z_masked)
        return torch.cat([cells.expand(len(generators), -1, -1, -1), z_masked], dim=1)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(z, sigma) for the empty prompt without guidance or control (the empty prompt encoded once, then kept);
        IP-Adapters get their unconditional (zero) image embeddings."""
        if self.empty_prompt is None:
            self.empty_prompt = self.encode_prompt("")
        return GuidedDenoiser(self.unet, self.schedule, self.prediction_type, self.empty_prompt, None, 1.0,
                              self.latent_factor, self.extra_channels, self.device,
                              image_embeds=[torch.zeros_like(e) for e in self.image_embeds])(x, sigma)

    @property
    def extra_channels(self) -> int:
        """The UNet's input channels beyond the latents (an inpainting model's mask and masked image)."""
        return int(self.unet.config.in_channels) - int(self.vae.config.latent_channels)

    def frame(self, size: tuple[int, int], fit: Fit, original_size: bool) -> Frame:
        """The whole input, at the largest multiple-of-8 size inside it (outputs back at the input's size if asked)."""
        return Frame((0, 0, *size), snap8(size, self.latent_factor), original_size)

def is_sd_folder(root: Path) -> bool:
    """Whether a folder holds a Stable Diffusion-style pipeline (model_index.json with unet/ and vae/)."""
    return (root / "model_index.json").is_file() and (root / "unet" / "config.json").is_file() and \
        (root / "vae" / "config.json").is_file()


def _weights(folder: Path) -> dict[str, Any]:
    """from_pretrained options: safetensors when present, never remote code."""
    return {"use_safetensors": any(folder.glob("*.safetensors"))}


def load_stable_diffusion(root: str | Path, *, device: str | torch.device | None = None, name: str | None = None,
                          single_file: Path | None = None) -> StableDiffusionModel:
    """Load a diffusers SD 1.x/2.x or SDXL folder (unet, vae, text encoder(s), tokenizer(s), scheduler).

    single_file: an original-layout checkpoint holding the networks; root then only configures them.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = Path(root)
    index = read_json(root / "model_index.json")
    kind = str(index.get("_class_name", ""))
    xl = "XL" in kind or (root / "text_encoder_2").is_dir()
    if xl and not (root / "text_encoder").is_dir():
        raise InputError(f"{root}: an SDXL refiner (one text encoder, aesthetic-score conditioning) is not "
                         f"supported; use the SDXL base model")
    unet_cfg = read_json(root / "unet" / "config.json")
    if unet_cfg.get("_class_name") != "UNet2DConditionModel":
        raise InputError(f"{root}: unet is a {unet_cfg.get('_class_name')}, not a UNet2DConditionModel")
    latent_channels = int(read_json(root / "vae" / "config.json").get("latent_channels", 4))
    in_channels = int(unet_cfg.get("in_channels", 4))
    if in_channels not in (latent_channels, 2 * latent_channels + 1):
        raise InputError(f"{root}: a {in_channels}-channel UNet; Stable Diffusion takes {latent_channels} (plain) or "
                         f"{2 * latent_channels + 1} (inpainting: latents, mask, masked-image latents)")
    parts = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2") if xl else ("text_encoder", "tokenizer")
    for part in (*parts, *(("scheduler",) if single_file else ())):
        if not (root / part).is_dir():
            raise InputError(f"{root}: no {part}/ folder; {'an SDXL' if xl else 'a text-conditioned'} model needs one")
    encoders = {"text_encoder": CLIPTextModel, **({"text_encoder_2": CLIPTextModelWithProjection} if xl else {})}
    # Every network's config checked on the meta device (limits, fit with its weights) before from_pretrained allocates.
    plan_components(root, {"unet": UNet2DConditionModel, "vae": AutoencoderKL,
                           **{k: v for k, v in encoders.items() if (root / k / "config.json").is_file()}})
    try:
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
        tokenizer_2 = CLIPTokenizer.from_pretrained(root / "tokenizer_2") if xl else None
        if single_file is None:
            unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **_weights(root / "unet"))
            vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **_weights(root / "vae"))
            text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", **_weights(root / "text_encoder"))
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
                root / "text_encoder_2", **_weights(root / "text_encoder_2")) if xl else None
    except LOAD_ERRORS as e:
        raise InputError(f"{root}: cannot load its components: {first_line(e)}") from None
    if single_file is not None:
        nets = ldm_networks(single_file, root, xl)
        unet, vae, text_encoder, text_encoder_2 = (nets["unet"], nets["vae"], nets["text_encoder"],
                                                   nets.get("text_encoder_2"))
    sched = scheduler_config(root)
    prediction = str(sched.get("prediction_type", "epsilon"))
    if prediction not in ("epsilon", "v_prediction"):
        raise InputError(f"{root}: prediction_type {prediction!r} is not supported (epsilon or v_prediction)")
    schedule = schedule_from(lambda: DiscreteVPSchedule(
        float(sched.get("beta_start", 0.00085)), float(sched.get("beta_end", 0.012)),
        int(sched.get("num_train_timesteps", 1000)), str(sched.get("beta_schedule", "scaled_linear"))), root)
    nets = [m for m in (unet, vae, text_encoder, text_encoder_2) if m is not None]
    for m in nets:
        m.eval().requires_grad_(False)
    params = sum(p.numel() for m in nets for p in m.parameters())
    where = {"source": str(root), "format": "diffusers"} if single_file is None else \
        {"source": str(single_file), "format": "single-file", "config": str(root)}
    model = StableDiffusionModel(unet, vae, text_encoder, tokenizer, schedule, prediction,
                                 name or str(single_file or root),
                                 {"family": "stable-diffusion-xl" if xl else "stable-diffusion", **where,
                                  "pipeline": kind, "parameters": params,
                                  "inpainting": in_channels != latent_channels},
                                 text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                                 zero_empty_negative=xl and bool(index.get("force_zeros_for_empty_prompt", True)))
    return model.to(pick_device(device))
