"""FLUX.1 (dev and schnell): a rectified-flow transformer on 2x2-packed latents, in the VE contract.

As for SD3, D = x_t - t v with t = sigma / (1 + sigma); the sampler works on ordinary latents
(so masks and seeds behave as for every family) and the denoiser packs each 2x2 latent patch
into a token before the transformer and unpacks its velocity after.  The timestep shift depends
on the image: s = exp(mu), mu linear in the number of packed tokens (diffusers' calculate_shift
with the scheduler's settings), so the schedule is chosen per image size.  Text: CLIP's pooled
embedding and T5's token embeddings.  FLUX.1-dev takes its guidance as an embedding (no
classifier-free guidance, no negative prompt; 3.5 is its usual value); schnell takes none.
FLUX.1 Fill also takes, per token, the packed latents of the guide with the repaint region zeroed
and the packed pixel mask (each latent cell's f x f pixels as f^2 channels): `edit_condition`.
ControlNets (diffusers' FluxControlNetModel, InstantX-style) see the packed noisy latents and the
packed latents of their control image (one posterior draw from the row's generator, drawn before
the guide's, as diffusers' FluxControlNetImg2ImgPipeline draws them); their per-block outputs are
added to the transformer's double- and single-stream blocks.  FLUX.1 Kontext, the same transformer with a reference
image as more tokens, is families/flux_kontext.py; other FLUX pipeline classes are refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import pick_device
from ..engine.denoisers import flow_input, x0_from_velocity
from ..engine.samplers import Denoiser
from ..engine.schedules import FlowSchedule, Schedule
from ..errors import InputError
from ..images import Fit
from ..loading.lora import LoraSpec
from ..loading.checkpoints import LOAD_ERRORS, first_line, plan_components, read_json, schedule_from, \
    scheduler_config
from ..settings import NO_GUIDANCE, RunSettings
from .base import Frame, Model
from .control import AttachedControl, check_family, scaled, summed
from .latent import LatentSpace, repaint_mask
from .stable_diffusion import snap8


def packed_shift(c: dict[str, Any], size: tuple[int, int], latent_factor: int, fixed: FlowSchedule) -> FlowSchedule:
    """A scheduler config's resolution-dependent shift for 2x2-packed latents (FLUX, Qwen-Image): mu linear in
    the token count between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift); s = exp(mu),
    or mu for time_shift_type 'linear'.  Without dynamic shifting, the fixed schedule."""
    if not c.get("use_dynamic_shifting"):
        return fixed
    tokens = (size[0] // latent_factor // 2) * (size[1] // latent_factor // 2)
    lo, hi = float(c.get("base_image_seq_len", 256)), float(c.get("max_image_seq_len", 4096))
    a, b = float(c.get("base_shift", 0.5)), float(c.get("max_shift", 1.15))
    mu = a + (b - a) * (tokens - lo) / (hi - lo)
    return FlowSchedule(shift=mu if c.get("time_shift_type") == "linear" else math.exp(mu))


def pack(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, h/2 * w/2, 4C) tokens, one per 2x2 patch."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of pack."""
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def patch_ids(h: int, w: int, device: torch.device) -> torch.Tensor:
    """FLUX's position ids of the packed tokens: (0, row, column) per 2x2 patch."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device)


class FluxDenoiser(nn.Module):
    """D(z, sigma) of the FLUX transformer for one prompt: pack, predict the velocity, unpack, x0 = x_t - t v."""

    def __init__(self, transformer: nn.Module, context: torch.Tensor, pooled: torch.Tensor, guidance: float | None,
                 extra_channels: int = 0, controls: Sequence[AttachedControl] = (), latent_channels: int = 16,
                 schedule_for: Callable[[tuple[int, int]], Schedule] | None = None, latent_factor: int = 8):
        super().__init__()
        self.extra_channels = extra_channels  # FLUX Fill's masked-image latents and mask per latent cell, else 0
        self.transformer, self.context, self.pooled, self.guidance = transformer, context, pooled, guidance
        self.controls = list(controls)  # ControlNets: their latents follow the extra channels in `condition`
        self.latent_channels, self.latent_factor = latent_channels, latent_factor
        self.schedule_for = schedule_for  # the schedule of an image size (its shift), for the control window

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """condition: FLUX Fill's masked-image latents and space-to-depth mask, then each ControlNet's control
        latents (model.control_condition), on the latent grid, one row per row of x."""
        b, _, h, w = x.shape
        s = sigma.to(x.device, x.dtype).reshape(-1, 1, 1, 1)
        x_t, t = flow_input(x, s)
        extra, controls = self.extra_channels, self.latent_channels * len(self.controls)
        got = condition.shape[1] if condition is not None else 0
        if got != extra + controls:
            raise InputError(f"this transformer takes {extra} extra channels per latent cell (FLUX Fill's masked "
                             f"image and mask: model.edit_condition) and {len(self.controls)} ControlNet latent(s) "
                             f"(model.control_condition); got {got} channels")
        # packing channel-major: pack([x_t, cond]) is the tokens of x_t, then of the masked image, then of the mask
        packed = pack(x_t)
        tokens = packed if not extra or condition is None else pack(torch.cat([x_t, condition[:, :extra].to(x_t)], 1))
        guidance = self.guidance_input(b, x.device)
        common = {"timestep": t.reshape(-1).expand(b), **self.text_inputs(b, x.device),
                  "img_ids": patch_ids(h, w, x.device)}
        residuals = {} if condition is None or not self.controls else \
            self._control(packed, condition[:, extra:], sigma.reshape(-1), (w, h), guidance, common)
        v = self.transformer(hidden_states=tokens, guidance=guidance, **common, **residuals, return_dict=False)[0]
        return x0_from_velocity(x_t, t, unpack(v.float(), h, w))

    def guidance_input(self, b: int, device: torch.device) -> torch.Tensor | None:
        """The embedded guidance, one value per row (None for a transformer without a guidance embedding)."""
        return None if self.guidance is None else torch.full((b,), self.guidance, device=device)

    def text_inputs(self, b: int, device: torch.device) -> dict[str, torch.Tensor]:
        """The prompt's transformer inputs for b rows: CLIP's pooled embedding, T5's tokens and their ids."""
        return {"pooled_projections": self.pooled.expand(b, -1).to(device),
                "encoder_hidden_states": self.context.expand(b, -1, -1).to(device),
                "txt_ids": torch.zeros(self.context.shape[1], 3, device=device)}

    def _control(self, tokens: torch.Tensor, channels: torch.Tensor, sigma: torch.Tensor, cells: tuple[int, int],
                 guidance: torch.Tensor | None, common: dict[str, Any]) -> dict[str, Any]:
        """The transformer's extra block inputs: each ControlNet's, scaled per row inside its window (in the time of
        this image size's schedule), summed in order.  A ControlNet with a guidance embedding gets the run's
        guidance (add_controlnets refuses one for a transformer without it)."""
        assert self.schedule_for is not None
        schedule = self.schedule_for((cells[0] * self.latent_factor, cells[1] * self.latent_factor))
        b, c = tokens.shape[0], self.latent_channels
        double: list[torch.Tensor] | None = None
        single: list[torch.Tensor] | None = None
        for i, control in enumerate(self.controls):
            scale = control.row_scale(sigma, schedule)
            if scale is None:
                continue
            mode = None if control.spec.mode is None else \
                torch.full((b, 1), control.spec.mode, dtype=torch.long, device=tokens.device)
            cond = pack(channels[:, i * c:(i + 1) * c].to(tokens))  # packed as the noisy latents are
            blocks, singles = control.net(hidden_states=tokens, controlnet_cond=cond, controlnet_mode=mode,
                                          conditioning_scale=1.0, **common, return_dict=False,
                                          guidance=guidance if control.net.config.guidance_embeds else None)
            double = double if blocks is None else summed(double, scaled(blocks, scale))
            single = single if singles is None else summed(single, scaled(singles, scale))
        out = {} if double is None else {"controlnet_block_samples": double}
        return out | ({} if single is None else {"controlnet_single_block_samples": single})


EMBEDDED_GUIDANCE = 3.5  # FLUX.1 dev's usual guidance value (the guidance embedding; no CFG)


@dataclass
class FluxModel(LatentSpace, Model):
    """A FLUX.1 model: FluxTransformer2DModel, AutoencoderKL (16 channels), CLIP text encoder and T5."""

    transformer: nn.Module
    vae: nn.Module
    clip: tuple[Any, nn.Module]  # (tokenizer, CLIPTextModel)
    t5: tuple[Any, nn.Module]  # (tokenizer, T5EncoderModel)
    schedule: FlowSchedule  # the base shift; schedule_for adds the resolution-dependent one
    shift_settings: dict[str, Any]  # use_dynamic_shifting, base/max_image_seq_len, base/max_shift
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    t5_tokens: int = 512  # max_sequence_length of T5 (512 for dev, 256 for schnell in diffusers' examples)
    controls: list[AttachedControl] = field(default_factory=list)  # ControlNets run beside the transformer
    empty_prompt: tuple[torch.Tensor, torch.Tensor] | None = None  # the empty prompt's embeddings, once needed
    text_conditioned = True
    takes_controlnets = True

    @property
    def takes_guidance(self) -> bool:
        """FLUX.1 dev takes its guidance as an embedding; schnell has none."""
        return bool(self.transformer.config.guidance_embeds)

    @property
    def recommended_guidance(self) -> float:
        """FLUX.1 dev's embedded guidance defaults to 3.5 (its model card); schnell takes none."""
        return EMBEDDED_GUIDANCE if self.takes_guidance else NO_GUIDANCE

    @property
    def resolution(self) -> int:
        return 1024  # FLUX.1's training resolution; it runs at any multiple of 16

    def networks(self) -> dict[str, nn.Module]:
        return {"transformer": self.transformer, "vae": self.vae, "text_encoder": self.clip[1],
                "text_encoder_2": self.t5[1], **{f"controlnet{i}": c.net for i, c in enumerate(self.controls)}}

    def add_controlnets(self, controls: list[AttachedControl]) -> None:
        """FLUX ControlNets (diffusers' FluxControlNetModel) that take latents (InstantX-style), made for this
        transformer: its packed latent width, text and pooled widths, hidden width and guidance embedding."""
        check_family(controls, ("flux",), "FLUX.1")
        tf = self.transformer.config
        latent = 4 * int(self.vae.config.latent_channels)
        for c in controls:
            cfg = c.net.config
            if getattr(c.net, "input_hint_block", None) is not None:
                raise InputError(f"ControlNet {c.spec.source} takes pixel hints (an XLabs-style input_hint_block); "
                                 f"FLUX ControlNets that take latents (InstantX-style) are supported")
            got = (int(cfg.in_channels), int(cfg.joint_attention_dim), int(cfg.pooled_projection_dim),
                   int(cfg.num_attention_heads) * int(cfg.attention_head_dim))
            want = (latent, int(tf.joint_attention_dim), int(tf.pooled_projection_dim),
                    int(tf.num_attention_heads) * int(tf.attention_head_dim))
            if got != want:
                raise InputError(f"ControlNet {c.spec.source} was made for another FLUX transformer (latent, text, "
                                 f"pooled and hidden widths {list(got)}; this one: {list(want)})")
            if bool(cfg.guidance_embeds) and not bool(tf.guidance_embeds):
                raise InputError(f"ControlNet {c.spec.source} takes a guidance embedding (made for FLUX.1 dev); this "
                                 f"transformer has none (schnell)")
        blocks = {(int(c.net.config.num_layers), int(c.net.config.num_single_layers)) for c in [*self.controls,
                                                                                               *controls]}
        if len(blocks) > 1:
            raise InputError(f"FLUX ControlNets run together must have the same number of blocks (double, single); "
                             f"got {sorted(blocks)}")
        self.controls.extend(controls)
        self.info["controlnets"] = [c.label for c in self.controls]

    @torch.inference_mode()
    def control_condition(self, images: Sequence[torch.Tensor], generators: Sequence[torch.Generator]
                          ) -> torch.Tensor | None:
        """Each control image (1x3xHxW in [0, 1]) as VAE latents, (z - shift) * scale with one posterior draw from
        each row's generator (as diffusers' FLUX ControlNet pipelines encode it), on the latent grid.  A ControlNet
        at scale 0 draws nothing (zeros), so that the run is the run without it."""
        if not self.controls:
            return None
        out = []
        for image, control in zip(images, self.controls, strict=True):
            if control.spec.scale == 0.0:
                h, w = (side // self.latent_factor for side in image.shape[-2:])
                out.append(torch.zeros(len(generators), int(self.vae.config.latent_channels), h, w, device=self.device))
            else:
                out.append(self.encode(image * 2.0 - 1.0, generators))  # [0, 1] -> [-1, 1], as its image processor
        return torch.cat(out, dim=1)

    def add_loras(self, specs: list[LoraSpec]) -> None:
        """LoRA on the transformer and CLIP encoder, through diffusers' FLUX loader (kohya/XLabs conversions), PEFT."""
        if specs:
            from diffusers.loaders import FluxLoraLoaderMixin

            self.lora_onto({"transformer": self.transformer, "text_encoder": self.clip[1]}, specs, FluxLoraLoaderMixin)

    def compile(self) -> None:
        self.transformer = torch.compile(self.transformer)

    @property
    def size_multiple(self) -> int:
        """Latent sides are even: the latents are packed into 2x2 patches."""
        return 2

    def schedule_for(self, size: tuple[int, int]) -> FlowSchedule:
        """FLUX's resolution-dependent shift: s = exp(mu), mu linear in the number of packed latent tokens."""
        return packed_shift(self.shift_settings, size, self.latent_factor, self.schedule)

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """T5's token embeddings and CLIP's pooled embedding of one prompt."""
        tokenizer, clip = self.clip
        ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(self.device)
        pooled = clip(ids, output_hidden_states=False).pooler_output.float()
        tokenizer, t5 = self.t5
        ids = tokenizer([prompt], padding="max_length", max_length=self.t5_tokens, truncation=True,
                        return_tensors="pt").input_ids.to(self.device)
        return t5(ids, output_hidden_states=False)[0].float(), pooled

    def denoiser(self, settings: RunSettings) -> Denoiser:
        """The prompt's denoiser; FLUX-dev's guidance goes in as an embedding (no negative branch)."""
        if settings.negative_prompt:
            raise InputError("FLUX.1 is guidance-distilled: it takes no negative prompt")
        context, pooled = self.encode_prompt(settings.prompt)
        embedded = settings.guidance if self.takes_guidance else None
        return self._denoiser(context, pooled, embedded, self.controls)

    def _denoiser(self, context: torch.Tensor, pooled: torch.Tensor, guidance: float | None,
                  controls: Sequence[AttachedControl]) -> FluxDenoiser:
        latent = int(self.vae.config.latent_channels)
        extra = int(self.transformer.config.in_channels) // 4 - latent
        return FluxDenoiser(self.transformer, context, pooled, guidance, extra, controls, latent, self.schedule_for,
                            self.latent_factor)

    @property
    def inpainting(self) -> bool:
        """Whether the transformer takes masked-image latents and a mask beside the latents (FLUX.1 Fill)."""
        return int(self.transformer.config.in_channels) != 4 * int(self.vae.config.latent_channels)

    @torch.inference_mode()
    def edit_condition(self, x_g: torch.Tensor, mask: torch.Tensor | None,
                       generators: Sequence[torch.Generator]) -> torch.Tensor | None:
        """FLUX Fill: latents of the guide with the repaint region zeroed, and the mask's f x f pixels per latent
        cell."""
        if not self.inpainting:
            return None
        repaint = repaint_mask(mask, x_g)
        z_masked = self.encode(x_g * (1.0 - repaint), generators)  # one posterior draw per generator
        f = self.latent_factor
        _, _, h, w = z_masked.shape
        # space to depth: pixel (f i + a, f j + b) becomes channel f a + b of cell (i, j)
        cells = repaint.to(z_masked).reshape(1, h, f, w, f).permute(0, 2, 4, 1, 3).reshape(1, f * f, h, w)
        return torch.cat([z_masked, cells.expand(len(generators), -1, -1, -1)], dim=1)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(z, sigma) for the empty prompt at guidance 1 (embedded where the model takes it), without control."""
        if self.empty_prompt is None:
            self.empty_prompt = self.encode_prompt("")  # encoded once, then kept
        context, pooled = self.empty_prompt
        return self._denoiser(context, pooled, 1.0 if self.takes_guidance else None, ())(x, sigma)

    def frame(self, size: tuple[int, int], fit: Fit, original_size: bool) -> Frame:
        """The whole input at the largest size with sides multiples of VAE factor x 2 (the packing)."""
        return Frame((0, 0, *size), snap8(size, self.latent_factor * 2), original_size)


# diffusers pipeline classes whose folders hold FLUX.1 weights that FluxModel runs (a ControlNet pipeline's folder is
# its base model; its controlnet/ attaches with --controlnet)
FLUX_PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxFillPipeline",
                  "FluxControlNetPipeline", "FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline")
KONTEXT_PIPELINES = ("FluxKontextPipeline", "FluxKontextInpaintPipeline")  # FLUX.1 Kontext (families/flux_kontext.py)


def flux_pipeline(root: Path) -> str | None:
    """The class a diffusers folder's model_index.json names when it is a FLUX pipeline ('Flux*'), else None."""
    index = root / "model_index.json"
    if not index.is_file() or not (root / "transformer" / "config.json").is_file():
        return None
    try:
        kind = str(read_json(index).get("_class_name", ""))
    except InputError:
        return None
    return kind if kind.startswith("Flux") else None


def is_flux_folder(root: Path) -> bool:
    """Whether a folder holds a diffusers FLUX pipeline of any class (the loaders refuse classes they do not run)."""
    return flux_pipeline(root) is not None


def check_flux_pipeline(root: Path, runs: Sequence[str]) -> None:
    """Refuse, in one line, a FLUX folder whose pipeline class is not one of `runs` (never load it as another)."""
    kind = flux_pipeline(root)
    supported = (*FLUX_PIPELINES, *KONTEXT_PIPELINES)
    if kind in supported and kind not in runs:
        raise InputError(f"{root}: a {kind} folder, which another loader runs: load it with load_model")
    if kind not in runs:
        raise InputError(f"{root}: a {kind} folder, a FLUX pipeline that sdedit does not run (it runs "
                         f"{', '.join(supported)})")


def flux_channels(root: Path) -> tuple[int, int, int]:
    """The transformer's input channels per token, and those of FLUX.1 dev/schnell and of Fill for this VAE."""
    vae_cfg = read_json(root / "vae" / "config.json")
    latent_channels = int(vae_cfg.get("latent_channels", 16))
    factor = 2 ** (len(vae_cfg.get("block_out_channels", [0] * 4)) - 1)
    plain, fill = 4 * latent_channels, 4 * (2 * latent_channels + factor * factor)  # Fill: + masked image, mask
    return int(read_json(root / "transformer" / "config.json").get("in_channels", 64)), plain, fill


def flux_parts(root: Path) -> tuple[list[Any], int]:
    """A FLUX folder's transformer, vae, (CLIP tokenizer, encoder), (T5 tokenizer, encoder), schedule and scheduler
    settings (FluxModel's first fields, in order), and their parameter count."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    plan_components(root, {"transformer": FluxTransformer2DModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
                           "text_encoder_2": T5EncoderModel})  # limits checked before from_pretrained allocates
    try:
        transformer = FluxTransformer2DModel.from_pretrained(root, subfolder="transformer", use_safetensors=True)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", use_safetensors=True)
        clip = (CLIPTokenizer.from_pretrained(root / "tokenizer"),
                CLIPTextModel.from_pretrained(root / "text_encoder", use_safetensors=True))
        t5 = (AutoTokenizer.from_pretrained(root / "tokenizer_2"),
              T5EncoderModel.from_pretrained(root / "text_encoder_2", use_safetensors=True))
    except LOAD_ERRORS as e:
        raise InputError(f"{root}: cannot load its components: {first_line(e)}") from None
    sched = scheduler_config(root)
    schedule = schedule_from(lambda: FlowSchedule(float(sched.get("shift", 1.0))), root)
    nets = [transformer, vae, clip[1], t5[1]]
    for m in nets:
        m.eval().requires_grad_(False)
    params = sum(p.numel() for m in nets for p in m.parameters())
    return [transformer, vae, clip, t5, schedule, dict(sched)], params


def check_flux_parts(root: Path) -> None:
    """Every component folder a FLUX.1 pipeline needs is there."""
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        if not (root / part).is_dir():
            raise InputError(f"{root}: no {part}/ folder; a FLUX.1 model needs one")


def load_flux(root: str | Path, *, device: str | torch.device | None = None, name: str | None = None) -> FluxModel:
    """Load a diffusers FLUX.1 folder (transformer, vae, CLIP text encoder and T5 with their tokenizers)."""
    root = Path(root)
    check_flux_pipeline(root, FLUX_PIPELINES)
    check_flux_parts(root)
    in_channels, plain, fill = flux_channels(root)
    if in_channels not in (plain, fill):
        raise InputError(f"{root}: a FLUX transformer with {in_channels} input channels (Canny and Depth are not "
                         f"supported); FLUX.1 dev/schnell take {plain}, FLUX.1 Fill {fill}")
    parts, params = flux_parts(root)
    transformer = parts[0]
    model = FluxModel(*parts, name or str(root),
                      {"family": "flux", "source": str(root), "format": "diffusers", "parameters": params,
                       "guidance_embeds": bool(transformer.config.guidance_embeds), "inpainting": in_channels == fill})
    return model.to(pick_device(device))
