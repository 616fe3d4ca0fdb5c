"""Qwen-Image: a rectified-flow MMDiT on 2x2-packed latents of a causal 3-D VAE, in the VE contract.

As for FLUX, D = x_t - t v with t = sigma / (1 + sigma), the sampler works on ordinary 4-D latents
(B, C, H/8, W/8) and the denoiser packs each 2x2 latent patch into a token.  The VAE is a video VAE:
its latents carry a frame axis (B, C, 1, h, w), here always one frame, and are normalised per channel
with the config's latents_mean / latents_std.  Text: the last hidden state of Qwen2.5-VL over the
pipeline's chat template, the template's system prefix dropped.  Guidance is "true CFG": the guided
velocity v_u + w (v_c - v_u) rescaled per token to the norm of v_c.  The timestep shift grows with the
number of packed tokens (s = exp(mu), as FLUX's); the scheduler's shift_terminal (a stretch of each
step grid so that its last step ends at 0.02) belongs to diffusers' step grid, not to the model's SDE,
and is not applied: SDEdit's grid runs from t0 down to 0.
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
from .flux import pack, packed_shift, unpack
from .latent import LatentSpace
from .stable_diffusion import snap8

# The text encoder's input: Qwen2.5-VL's chat format with a system turn asking for a description.
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                   "<|im_end|>\n<|im_start|>assistant\n")
TEMPLATE_PREFIX_TOKENS = 34  # the system turn's tokens, dropped from the encoder's output
MAX_TEXT_TOKENS = 1024  # tokens kept after the prefix by the tokenizer (truncation) ...
PROMPT_TOKENS = 512  # ... and passed to the transformer (the pipeline's max_sequence_length)
TRUE_CFG = 4.0  # the pipeline's default true_cfg_scale
RUNNABLE_PIPELINES = ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline")
# Qwen-Image-Edit: its reference latents would fit FLUX.1 Kontext's adapter, but its prompt is Qwen2.5-VL reading the
# input image (vision tower, Qwen2VLProcessor, image tokens in an edit template), which encode_prompt does not do
EDIT_PIPELINES = ("QwenImageEditPipeline", "QwenImageEditPlusPipeline", "QwenImageEditInpaintPipeline")


class QwenImageDenoiser(nn.Module):
    """D(z, sigma) of the Qwen-Image transformer: pack, velocity with norm-rescaled true CFG, unpack, x_t - t v."""

    def __init__(self, transformer: nn.Module, cond: torch.Tensor, uncond: torch.Tensor | None, guidance: float):
        super().__init__()
        self.transformer = transformer
        self.cond, self.uncond = cond, uncond  # (1, L, D) prompt embeddings; uncond None: no guidance
        self.guidance = guidance  # w of true CFG

    def velocity(self, tokens: torch.Tensor, t: torch.Tensor, text: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The transformer's velocity on packed tokens for one prompt's embeddings (one sequence, no padding)."""
        b = tokens.shape[0]
        v = self.transformer(hidden_states=tokens, timestep=t.reshape(-1).expand(b),
                             encoder_hidden_states=text.expand(b, -1, -1).to(tokens.device),
                             encoder_hidden_states_mask=None, img_shapes=[[(1, h // 2, w // 2)]] * b,
                             return_dict=False)[0]
        return v.float()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        x_t, t = flow_input(x, sigma.to(x.device, x.dtype).reshape(-1, 1, 1, 1))
        tokens = pack(x_t)
        v = self.velocity(tokens, t, self.cond, h, w)
        if self.uncond is not None:
            v_u = self.velocity(tokens, t, self.uncond, h, w)
            guided = v_u + self.guidance * (v - v_u)
            # Rescale each token's guided velocity to the norm of its conditional one.
            v = guided * (v.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))
        return x0_from_velocity(x_t, t, unpack(v, h, w))


@dataclass
class QwenImageModel(LatentSpace, Model):
    """A Qwen-Image model: QwenImageTransformer2DModel, AutoencoderKLQwenImage and the Qwen2.5-VL text encoder."""

    transformer: nn.Module
    vae: nn.Module
    text: tuple[Any, nn.Module]  # (Qwen2Tokenizer, Qwen2_5_VLForConditionalGeneration)
    schedule: FlowSchedule  # the base shift; schedule_for adds the resolution-dependent one
    shift_settings: dict[str, Any]  # use_dynamic_shifting, base/max_image_seq_len, base/max_shift, time_shift_type
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = PROMPT_TOKENS
    empty_prompt: torch.Tensor | None = None  # the empty prompt's embedding, once denoise() has needed it
    text_conditioned = True

    @property
    def recommended_guidance(self) -> float:
        """Qwen-Image's true CFG weight (its model card's 4)."""
        return TRUE_CFG

    @property
    def resolution(self) -> int:
        return 1024  # the pipeline's default side; it runs at any multiple of 16

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell: the VAE halves the size at each of its downsampling levels."""
        return 2 ** len(self.vae.config.temperal_downsample)

    def networks(self) -> dict[str, nn.Module]:
        return {"transformer": self.transformer, "vae": self.vae, "text_encoder": self.text[1]}

    def add_loras(self, specs: list[LoraSpec]) -> None:
        """LoRA on the transformer, through diffusers' Qwen-Image loader and PEFT."""
        if specs:
            from diffusers.loaders import QwenImageLoraLoaderMixin

            self.lora_onto({"transformer": self.transformer}, specs, QwenImageLoraLoaderMixin)

    def compile(self) -> None:
        self.transformer = torch.compile(self.transformer)

    @property
    def size_multiple(self) -> int:
        """Latent sides are even: the latents are packed into 2x2 patches."""
        return 2

    def schedule_for(self, size: tuple[int, int]) -> FlowSchedule:
        """The resolution-dependent shift: mu linear in the number of packed tokens, s = exp(mu) (or mu if linear)."""
        return packed_shift(self.shift_settings, size, self.latent_factor, self.schedule)

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Qwen2.5-VL's last hidden state over the chat template, system prefix dropped: (1, L, D)."""
        tokenizer, encoder = self.text
        batch = tokenizer([PROMPT_TEMPLATE.format(prompt)], max_length=MAX_TEXT_TOKENS + TEMPLATE_PREFIX_TOKENS,
                          truncation=True, return_tensors="pt").to(self.device)
        out = encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        return out.hidden_states[-1][:, TEMPLATE_PREFIX_TOKENS:][:, :self.prompt_tokens].float()

    def denoiser(self, settings: RunSettings) -> Denoiser:
        """The prompt's denoiser; guidance w != 1 adds true CFG against the negative prompt (encoded even when empty)."""
        w = 1.0 if settings.guidance is None else settings.guidance
        cond = self.encode_prompt(settings.prompt)
        uncond = self.encode_prompt(settings.negative_prompt) if w != 1.0 else None
        return QwenImageDenoiser(self.transformer, cond, uncond, w)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(z, sigma) for the empty prompt without guidance (the empty prompt encoded once, then kept)."""
        if self.empty_prompt is None:
            self.empty_prompt = self.encode_prompt("")
        return QwenImageDenoiser(self.transformer, self.empty_prompt, None, 1.0)(x, sigma)

    def frame(self, size: tuple[int, int], fit: Fit, original_size: bool) -> Frame:
        """The whole input at the largest size with sides multiples of VAE factor x 2 (the packing)."""
        return Frame((0, 0, *size), snap8(size, self.latent_factor * 2), original_size)

    def _latent_stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's per-channel latents_mean and latents_std, shaped (1, C, 1, 1, 1) like z."""
        cfg = self.vae.config
        shape = (1, int(cfg.z_dim), 1, 1, 1)
        return (torch.tensor(cfg.latents_mean, dtype=z.dtype, device=z.device).view(shape),
                torch.tensor(cfg.latents_std, dtype=z.dtype, device=z.device).view(shape))

    @torch.inference_mode()
    def encode(self, x_g: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(z - mean) / std per channel of one guide as a one-frame video, one posterior draw per generator."""
        with self._tiling(*x_g.shape[-2:]):
            dist = self.vae.encode(x_g.to(self.device, torch.float32)[:, :, None]).latent_dist
        draws = [torch.randn(dist.mean.shape, generator=g, dtype=torch.float32, device=g.device).to(self.device)
                 for g in generators]
        z = torch.cat([dist.mean + dist.std * d for d in draws])
        mean, std = self._latent_stats(z)
        return ((z - mean) / std)[:, :, 0]

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from normalised latents (fp32), through the VAE's one-frame video decoder."""
        z = z.float()[:, :, None]
        mean, std = self._latent_stats(z)
        with self._tiling(z.shape[-2] * self.latent_factor, z.shape[-1] * self.latent_factor):
            return self.vae.decode(z * std + mean).sample[:, :, 0].clamp(-1.0, 1.0)


def is_qwen_image_folder(root: Path) -> bool:
    """Whether a folder holds a diffusers Qwen-Image pipeline (any QwenImage* class; the loader refuses some)."""
    index = root / "model_index.json"
    if not index.is_file() or not (root / "transformer" / "config.json").is_file():
        return False
    try:
        return str(read_json(index).get("_class_name", "")).startswith("QwenImage")
    except InputError:
        return False


def load_qwen_image(root: str | Path, *, device: str | torch.device | None = None,
                    name: str | None = None) -> QwenImageModel:
    """Load a diffusers Qwen-Image folder (transformer, vae, Qwen2.5-VL text encoder and its tokenizer)."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

    root = Path(root)
    kind = str(read_json(root / "model_index.json").get("_class_name", ""))
    if kind in EDIT_PIPELINES:
        raise InputError(f"{root}: a {kind} (Qwen-Image-Edit), not supported: its prompt is encoded by Qwen2.5-VL "
                         f"reading the input image through its vision tower and processor, which this project does "
                         f"not run; FLUX.1 Kontext (preset kontext-dev) is the instruction-edit model supported")
    if kind not in RUNNABLE_PIPELINES:
        raise InputError(f"{root}: a {kind}; Qwen-Image text-to-image weights ({', '.join(RUNNABLE_PIPELINES)}) are "
                         f"supported, not its edit, layered or ControlNet variants")
    for part in ("transformer", "vae", "text_encoder", "tokenizer"):
        if not (root / part).is_dir():
            raise InputError(f"{root}: no {part}/ folder; a Qwen-Image model needs one")
    plan_components(root, {"transformer": QwenImageTransformer2DModel, "vae": AutoencoderKLQwenImage,
                           "text_encoder": Qwen2_5_VLForConditionalGeneration})  # before from_pretrained allocates
    try:
        transformer = QwenImageTransformer2DModel.from_pretrained(root, subfolder="transformer", use_safetensors=True)
        vae = AutoencoderKLQwenImage.from_pretrained(root, subfolder="vae", use_safetensors=True)
        text = (Qwen2Tokenizer.from_pretrained(root / "tokenizer"),
                Qwen2_5_VLForConditionalGeneration.from_pretrained(root / "text_encoder", use_safetensors=True))
    except LOAD_ERRORS as e:
        raise InputError(f"{root}: cannot load its components: {first_line(e)}") from None
    sched = scheduler_config(root)
    schedule = schedule_from(lambda: FlowSchedule(float(sched.get("shift", 1.0))), root)
    nets = [transformer, vae, text[1]]
    for m in nets:
        m.eval().requires_grad_(False)
    params = sum(p.numel() for m in nets for p in m.parameters())
    model = QwenImageModel(transformer, vae, text, schedule, dict(sched), name or str(root),
                           {"family": "qwen-image", "source": str(root), "format": "diffusers", "parameters": params})
    return model.to(pick_device(device))
