"""Stable Diffusion 3 / 3.5: a rectified-flow transformer in a VAE's latent space, in the VE contract.

The transformer predicts a velocity v = n - x0 at flow time t (x_t = (1 - t) x0 + t n), so with
sigma = t / (1 - t) and x_t = x / (1 + sigma) the denoiser is D = x_t - t v exactly; t0 is the
flow time after SD3's fixed timestep shift (FlowSchedule).  Text: two CLIP encoders with
projections (penultimate hidden states concatenated, zero-padded to T5's width, then T5's tokens
appended; pooled projections concatenated); T5 is optional (zeros without it, as diffusers does).
Latents are (z - shift_factor) * scaling_factor; the transformer patchifies them by patch_size,
so sizes are snapped to multiples of VAE factor x patch size.
"""

from __future__ import annotations

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
from .latent import LatentSpace
from .stable_diffusion import TextCondition, snap8

T5_TOKENS = 256  # SD3's max_sequence_length for T5


class FlowGuidedDenoiser(nn.Module):
    """D(z, sigma) of a velocity transformer with classifier-free guidance on v: v_u + w (v_c - v_u)."""

    def __init__(self, transformer: nn.Module, cond: TextCondition, uncond: TextCondition | None, guidance: float,
                 timesteps: int = 1000):
        super().__init__()
        self.transformer, self.cond, self.uncond, self.guidance = transformer, cond, uncond, guidance
        self.timesteps = timesteps

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        s = sigma.to(x.device, x.dtype).reshape(-1, 1, 1, 1)
        x_t, t = flow_input(x, s)
        guided = self.uncond is not None and self.guidance != 1.0
        branches = [self.uncond, self.cond] if guided and self.uncond is not None else [self.cond]
        ctx = torch.cat([c.context.expand(b, -1, -1) for c in branches]).to(x.device)
        pooled = torch.cat([c.pooled.expand(b, -1) for c in branches if c.pooled is not None]).to(x.device)
        k = len(branches)
        v = self.transformer(hidden_states=x_t.repeat(k, 1, 1, 1), timestep=(t.reshape(-1) * self.timesteps)
                             .repeat(k), encoder_hidden_states=ctx, pooled_projections=pooled, return_dict=False)[0]
        v = v.float()
        if guided:
            v_u, v_c = v.chunk(2)
            v = v_u + self.guidance * (v_c - v_u)
        return x0_from_velocity(x_t, t, v)


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
    text_conditioned = True

    @property
    def resolution(self) -> int:
        return int(self.transformer.config.sample_size) * self.latent_factor

    def networks(self) -> dict[str, nn.Module]:
        nets = {"transformer": self.transformer, "vae": self.vae}
        nets.update({f"text_encoder{'_' + str(i + 1) if i else ''}": e for i, (_, e) in enumerate(self.encoders)})
        return nets | ({"text_encoder_3": self.t5[1]} if self.t5 else {})

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
        return FlowGuidedDenoiser(self.transformer, cond, uncond, settings.guidance)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D for the empty prompt without guidance."""
        return self.denoiser(RunSettings(guidance=1.0, seed=0))(x, sigma)

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

            t5 = (AutoTokenizer.from_pretrained(root / "tokenizer_3"), T5EncoderModel.from_pretrained(root / "text_encoder_3", **weights))
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
