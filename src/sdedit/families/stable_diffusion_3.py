"""Stable Diffusion 3 / 3.5: a rectified-flow transformer in a VAE's latent space, in the VE contract.

The transformer predicts a velocity v = n - x0 at flow time t (x_t = (1 - t) x0 + t n), so with
sigma = t / (1 - t) and x_t = x / (1 + sigma) the denoiser is D = x_t - t v exactly; t0 is the
flow time after SD3's fixed timestep shift (FlowSchedule).  Text: two CLIP encoders with
projections (penultimate hidden states concatenated, zero-padded to T5's width, then T5's tokens
appended; pooled projections concatenated); T5 is optional (zeros without it, as diffusers does).
Latents are (z - shift_factor) * scaling_factor; the transformer patchifies them by patch_size,
so sizes are snapped to multiples of VAE factor x patch size.
ControlNets (diffusers' SD3ControlNetModel) see the noisy latents and their control image's latents
(InstantX's without the VAE's shift and with zero pooled embeddings, SD3.5's with both; SD3.5's share
the transformer's patch embedding); their block outputs are added to the transformer's blocks, on both
branches of classifier-free guidance.  A control image is drawn from the VAE's posterior once per row,
from the row's generator (diffusers' SD3 ControlNet pipeline draws without a generator, once per branch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import pick_device
from ..engine.denoisers import flow_input, x0_from_velocity
from ..engine.samplers import Denoiser
from ..engine.schedules import FlowSchedule
from ..errors import InputError
from ..images import Fit
from ..loading.lora import LoraSpec
from ..loading.checkpoints import LOAD_ERRORS, first_line, plan_components, read_json, schedule_from, \
    scheduler_config
from ..settings import RunSettings
from .base import Frame, Model
from .control import AttachedControl, check_family, scaled, summed
from .latent import LatentSpace
from .stable_diffusion import TextCondition, snap8

T5_TOKENS = 256  # SD3's max_sequence_length for T5


class FlowGuidedDenoiser(nn.Module):
    """D(z, sigma) of a velocity transformer with classifier-free guidance on v: v_u + w (v_c - v_u)."""

    def __init__(self, transformer: nn.Module, cond: TextCondition, uncond: TextCondition | None, guidance: float,
                 timesteps: int = 1000, controls: Sequence[AttachedControl] = (),
                 schedule: FlowSchedule | None = None):
        super().__init__()
        self.transformer, self.cond, self.uncond, self.guidance = transformer, cond, uncond, guidance
        self.timesteps = timesteps
        self.controls = list(controls)  # ControlNets: their latents are `condition`, in order
        self.schedule = schedule  # for the control window

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """condition: each ControlNet's control latents on the latent grid (model.control_condition), one row per
        row of x."""
        b, channels = x.shape[:2]
        got = condition.shape[1] if condition is not None else 0
        if got != channels * len(self.controls):
            raise InputError(f"this transformer takes {len(self.controls)} ControlNet latent(s) of {channels} "
                             f"channels (model.control_condition); got {got} channels")
        s = sigma.to(x.device, x.dtype).reshape(-1, 1, 1, 1)
        x_t, t = flow_input(x, s)
        guided = self.uncond is not None and self.guidance != 1.0
        branches = [self.uncond, self.cond] if guided and self.uncond is not None else [self.cond]
        ctx = torch.cat([c.context.expand(b, -1, -1) for c in branches]).to(x.device)
        pooled = torch.cat([c.pooled.expand(b, -1) for c in branches if c.pooled is not None]).to(x.device)
        k = len(branches)
        x_in, t_in = x_t.repeat(k, 1, 1, 1), (t.reshape(-1) * self.timesteps).repeat(k)
        residuals = {} if condition is None or not self.controls else \
            self._control(x_in, t_in, ctx, pooled, condition.repeat(k, 1, 1, 1), sigma.reshape(-1).repeat(k))
        v = self.transformer(hidden_states=x_in, timestep=t_in, encoder_hidden_states=ctx, pooled_projections=pooled,
                             **residuals, return_dict=False)[0]
        v = v.float()
        if guided:
            v_u, v_c = v.chunk(2)
            v = v_u + self.guidance * (v_c - v_u)
        return x0_from_velocity(x_t, t, v)

    def _control(self, x_in: torch.Tensor, t_in: torch.Tensor, ctx: torch.Tensor, pooled: torch.Tensor,
                 channels: torch.Tensor, sigma: torch.Tensor) -> dict[str, Any]:
        """The transformer's extra block inputs: each ControlNet's (on every branch), scaled per row inside its
        window, summed in order.  InstantX's ControlNets (force_zeros_for_pooled_projection) take zero pooled
        embeddings, SD3.5's (no joint_attention_dim) no text."""
        c = x_in.shape[1]
        total: list[torch.Tensor] | None = None
        for i, control in enumerate(self.controls):
            scale = control.row_scale(sigma, self.schedule)
            if scale is None:
                continue
            cfg = control.net.config
            text = None if cfg.joint_attention_dim is None else ctx
            zeros = bool(cfg.force_zeros_for_pooled_projection)
            (blocks,) = control.net(hidden_states=x_in, timestep=t_in, controlnet_cond=channels[:, i * c:(i + 1) * c]
                                    .to(x_in), encoder_hidden_states=text, conditioning_scale=1.0, return_dict=False,
                                    pooled_projections=torch.zeros_like(pooled) if zeros else pooled)
            total = summed(total, scaled(blocks, scale))
        return {} if total is None else {"block_controlnet_hidden_states": total}


@dataclass
class StableDiffusion3Model(LatentSpace, Model):
    """An SD3 / SD3.5 model: SD3Transformer2DModel, AutoencoderKL, two CLIP encoders and an optional T5."""

    transformer: nn.Module
    vae: nn.Module
    encoders: list[tuple[Any, nn.Module]]  # (tokenizer, encoder): CLIP-L, CLIP-G with projections
    t5: tuple[Any, nn.Module] | None  # (tokenizer, T5 encoder), optional
    schedule: FlowSchedule
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    controls: list[AttachedControl] = field(default_factory=list)  # ControlNets run beside the transformer
    empty_prompt: TextCondition | None = None  # the empty prompt's embedding, once denoise() has needed it
    text_conditioned = True
    takes_controlnets = True

    @property
    def resolution(self) -> int:
        return int(self.transformer.config.sample_size) * self.latent_factor

    def networks(self) -> dict[str, nn.Module]:
        nets = {"transformer": self.transformer, "vae": self.vae}
        nets.update({f"text_encoder{'_' + str(i + 1) if i else ''}": e for i, (_, e) in enumerate(self.encoders)})
        nets |= {"text_encoder_3": self.t5[1]} if self.t5 else {}
        return nets | {f"controlnet{i}": c.net for i, c in enumerate(self.controls)}

    def add_controlnets(self, controls: list[AttachedControl]) -> None:
        """SD3 ControlNets (diffusers' SD3ControlNetModel) made for this transformer: its latent channels, patch,
        hidden, pooled and (where they take text) text widths; SD3.5's (use_pos_embed false) get a copy of the
        transformer's patch embedding, as diffusers' pipeline gives them."""
        check_family(controls, ("sd3",), "Stable Diffusion 3")
        tf = self.transformer.config
        for c in controls:
            cfg = c.net.config
            extra = int(cfg.extra_conditioning_channels)
            if extra:
                raise InputError(f"ControlNet {c.spec.source} is an inpainting ControlNet ({extra} extra conditioning "
                                 f"channels); SD3 ControlNets that take a control image alone are supported")
            got = (int(cfg.in_channels), int(cfg.patch_size), int(cfg.num_attention_heads * cfg.attention_head_dim),
                   int(cfg.pooled_projection_dim), int(cfg.joint_attention_dim or tf.joint_attention_dim))
            want = (int(tf.in_channels), int(tf.patch_size), int(tf.num_attention_heads * tf.attention_head_dim),
                    int(tf.pooled_projection_dim), int(tf.joint_attention_dim))
            if got != want:
                raise InputError(f"ControlNet {c.spec.source} was made for another SD3 transformer (latent channels, "
                                 f"patch, hidden, pooled and text widths {list(got)}; this one: {list(want)})")
        layers = {int(c.net.config.num_layers) for c in [*self.controls, *controls]}
        if len(layers) > 1:
            raise InputError(f"SD3 ControlNets run together must have the same number of blocks; got {sorted(layers)}")
        for c in controls:
            if c.net.config.use_pos_embed is False:
                embed = c.net._get_pos_embed_from_transformer(self.transformer)
                c.net.pos_embed = embed.to(next(c.net.parameters()).device, next(c.net.parameters()).dtype)
        self.controls.extend(controls)
        self.info["controlnets"] = [c.label for c in self.controls]

    @torch.inference_mode()
    def control_condition(self, images: Sequence[torch.Tensor], generators: Sequence[torch.Generator]
                          ) -> torch.Tensor | None:
        """Each control image (1x3xHxW in [0, 1]) as VAE latents, one posterior draw from each row's generator, then
        (z - shift) * scale with shift 0 for InstantX's ControlNets (force_zeros_for_pooled_projection), as diffusers'
        SD3 ControlNet pipeline encodes them; on the latent grid.  A ControlNet at scale 0 draws nothing (zeros),
        so that the run is the run without it."""
        if not self.controls:
            return None
        cfg = self.vae.config
        out = []
        for image, control in zip(images, self.controls, strict=True):
            if control.spec.scale == 0.0:
                h, w = (side // self.latent_factor for side in image.shape[-2:])
                out.append(torch.zeros(len(generators), int(cfg.latent_channels), h, w, device=self.device))
                continue
            with self._tiling(*image.shape[-2:]):
                dist = self.vae.encode((image * 2.0 - 1.0).to(self.device, torch.float32)).latent_dist
            draws = [torch.randn(dist.mean.shape, generator=g, dtype=torch.float32, device=g.device).to(self.device)
                     for g in generators]
            z = torch.cat([dist.mean + dist.std * d for d in draws])
            shift = 0.0 if control.net.config.force_zeros_for_pooled_projection else (cfg.shift_factor or 0.0)
            out.append((z - shift) * cfg.scaling_factor)
        return torch.cat(out, dim=1)

    def add_loras(self, specs: list[LoraSpec]) -> None:
        """LoRA on the transformer and the two CLIP encoders, through diffusers' SD3 loader and PEFT adapters."""
        if specs:
            from diffusers.loaders import SD3LoraLoaderMixin

            clips = {name: encoder for name, (_, encoder) in zip(("text_encoder", "text_encoder_2"), self.encoders)}
            self.lora_onto({"transformer": self.transformer, **clips}, specs, SD3LoraLoaderMixin)

    def compile(self) -> None:
        self.transformer = torch.compile(self.transformer)

    @property
    def size_multiple(self) -> int:
        """Latent sides are multiples of the transformer's patch size."""
        return int(self.transformer.config.patch_size)

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> TextCondition:
        """CLIP-L and CLIP-G penultimate states side by side, padded to T5's width, then T5's tokens; pooled both."""
        hidden, pooled = [], []
        for tokenizer, encoder in self.encoders:
            ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(self.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2].float())
            pooled.append(out[0].float())
        clip = torch.cat(hidden, dim=-1)
        width = int(self.transformer.config.joint_attention_dim)
        if self.t5 is None:
            t5 = torch.zeros(1, T5_TOKENS, width, device=self.device)
        else:
            tokenizer, encoder = self.t5
            ids = tokenizer([prompt], padding="max_length", max_length=T5_TOKENS, truncation=True,
                            add_special_tokens=True, return_tensors="pt").input_ids.to(self.device)
            t5 = encoder(ids)[0].float()
        clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1]))
        return TextCondition(torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1))

    def denoiser(self, settings: RunSettings) -> Denoiser:
        """Velocity guided by the prompt against the negative prompt (encoded, even when empty, as SD3 does)."""
        cond = self.encode_prompt(settings.prompt)
        uncond = self.encode_prompt(settings.negative_prompt) if settings.guidance != 1.0 else None
        return FlowGuidedDenoiser(self.transformer, cond, uncond, settings.guidance, controls=self.controls,
                                  schedule=self.schedule)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D for the empty prompt without guidance or control (the empty prompt encoded once, then kept)."""
        if self.empty_prompt is None:
            self.empty_prompt = self.encode_prompt("")
        return FlowGuidedDenoiser(self.transformer, self.empty_prompt, None, 1.0)(x, sigma)

    def _multiple(self) -> int:
        return self.latent_factor * int(self.transformer.config.patch_size)

    def frame(self, size: tuple[int, int], fit: Fit, original_size: bool) -> Frame:
        """The whole input at the largest size with sides multiples of VAE factor x patch size."""
        return Frame((0, 0, *size), snap8(size, self._multiple()), original_size)

def is_sd3_folder(root: Path) -> bool:
    """Whether a folder holds a diffusers SD3 pipeline (model_index.json naming it, transformer/ and vae/)."""
    index = root / "model_index.json"
    if not index.is_file() or not (root / "transformer" / "config.json").is_file():
        return False
    try:
        return "StableDiffusion3" in str(read_json(index).get("_class_name", ""))
    except InputError:
        return False


def load_stable_diffusion_3(root: str | Path, *, device: str | torch.device | None = None,
                            name: str | None = None) -> StableDiffusion3Model:
    """Load a diffusers SD3 / SD3.5 folder; T5 (text_encoder_3) is used when present."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    root = Path(root)
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        if not (root / part).is_dir():
            raise InputError(f"{root}: no {part}/ folder; an SD3 model needs one")
    weights = {"use_safetensors": True}
    plan_components(root, {"transformer": SD3Transformer2DModel, "vae": AutoencoderKL,
                           "text_encoder": CLIPTextModelWithProjection, "text_encoder_2": CLIPTextModelWithProjection})
    try:
        transformer = SD3Transformer2DModel.from_pretrained(root, subfolder="transformer", **weights)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **weights)
        encoders = [(CLIPTokenizer.from_pretrained(root / tok), CLIPTextModelWithProjection.from_pretrained(root / enc,
                                                                                                    **weights))
                    for tok, enc in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))]
        t5 = None
        if (root / "text_encoder_3").is_dir():
            from transformers import AutoTokenizer, T5EncoderModel

            t5 = (AutoTokenizer.from_pretrained(root / "tokenizer_3"),
                  T5EncoderModel.from_pretrained(root / "text_encoder_3", **weights))
    except LOAD_ERRORS as e:
        raise InputError(f"{root}: cannot load its components: {first_line(e)}") from None
    sched = scheduler_config(root)
    schedule = schedule_from(lambda: FlowSchedule(float(sched.get("shift", 3.0))), root)
    nets = [transformer, vae, *(e for _, e in encoders), *((t5[1],) if t5 else ())]
    for m in nets:
        m.eval().requires_grad_(False)
    params = sum(p.numel() for m in nets for p in m.parameters())
    model = StableDiffusion3Model(transformer, vae, encoders, t5, schedule, name or str(root),
                                  {"family": "stable-diffusion-3", "source": str(root), "format": "diffusers",
                                   "parameters": params, "t5": t5 is not None})
    return model.to(pick_device(device))
