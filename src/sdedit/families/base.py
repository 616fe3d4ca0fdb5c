"""The model interface every family implements: the denoiser contract, its schedule, and its image space.

`sdedit.api.edit` runs every family through these methods only:

    frame(size, fit, original_size)  where in the input the model works, at which size
    denoiser(settings)               D(x, sigma) for the run's conditioning (prompt, guidance)
    encode(x_g, generators)          guide pixels -> the sampler's space, one row per generator
    encode_mask(mask)                a pixel mask -> the sampler's grid
    decode(z)                        the sampler's space -> pixels in [-1, 1]
    edit_condition(x_g, mask, gens)  per-edit network input (inpainting models; FLUX.1 Kontext's reference
                                     latents), or None; a model that
                                     returns one takes it back as denoiser(x, sigma, condition=c)
    control_condition(images, gens)  the ControlNets' images on the sampler's grid (after edit_condition's
                                     channels in `condition`), or None
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..engine.samplers import Denoiser
from .control import AttachedControl
from ..engine.schedules import Schedule
from ..errors import InputError
from ..images import Fit
from ..devices import Offload
from ..loading.lora import LoraSpec
from ..precision import RunPrecision, requested
from ..settings import DEFAULT_GUIDANCE, DEFAULT_PRECISION, DEFAULT_T0, NO_GUIDANCE, RunSettings


@dataclass(frozen=True)
class Frame:
    """Where a model works on an input image: a box of the input, resized to `size`."""

    box: tuple[int, int, int, int]  # (left, top, right, bottom) in input pixels
    size: tuple[int, int]  # (width, height) the sampler sees, in pixels
    back_to_input: bool  # outputs are scaled back to the box's own size (else they stay at `size`)
    whole_input: bool = False  # outputs are the whole input with the box replaced (crop-to-mask)


class Model(ABC):
    """What `load_model` returns for every family."""

    name: str  # preset name, path or Hub id, for metadata
    schedule: Schedule  # sigma(t) of the SDE the network was trained with, in contract units
    info: dict[str, Any]  # family, source, parameter count, precision, ...
    text_conditioned: bool = False  # takes prompt / negative prompt / guidance
    square: bool = False  # works on square images only (pixel models); latent models take any aspect
    recommended_t0: float = DEFAULT_T0  # t0 when none is given (a model's config may say its own)
    takes_controlnets: bool = False  # ControlNets can run beside its main network (add_controlnets)
    takes_ip_adapters: bool = False  # IP-Adapters (an image as a prompt) load into its main network

    @property
    @abstractmethod
    def resolution(self) -> int:
        """The image side the network was trained at."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the networks are."""

    @abstractmethod
    def to(self, device: str | torch.device) -> Model:
        """Move every network (in place) and return self."""

    @abstractmethod
    def main_network(self) -> nn.Module:
        """The network D runs at every step (UNet or transformer): what a run's precision is measured on."""

    @property
    @abstractmethod
    def size_multiple(self) -> int:
        """The main network takes inputs whose sides (in the sampler's space) are multiples of this."""

    @abstractmethod
    def compile(self) -> None:
        """torch.compile the main network."""

    @abstractmethod
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x, sigma) -> x0_hat without conditioning, in the sampler's space."""

    @abstractmethod
    def frame(self, size: tuple[int, int], fit: Fit, original_size: bool) -> Frame:
        """The part of a (w, h) input the model edits, and at which size."""

    @abstractmethod
    def encode(self, x_g: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One guide (1x3xHxW in [-1, 1]) in the sampler's space, one row per generator."""

    @abstractmethod
    def encode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A pixel mask (1x1xHxW, 1 = edit) on the sampler's grid."""

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] from the sampler's space."""

    @property
    def latent_factor(self) -> int:
        """Input pixels per cell of the sampler's grid (1 for pixel models; the VAE's factor for latent ones)."""
        return 1

    def canvas_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (w, h) a tiled edit of an input (or box) of this size works at: its own size on the network's grid."""
        return self.frame(size, "stretch", True).size

    def crop_frame(self, box: tuple[int, int, int, int]) -> Frame:
        """A box of a larger input edited at the model's resolution (at most its area) and pasted back whole."""
        w, h = box[2] - box[0], box[3] - box[1]
        scale = min(1.0, self.resolution / (w * h) ** 0.5)
        size = self.frame((max(1, round(w * scale)), max(1, round(h * scale))), "stretch", True).size
        return Frame(box, size, True, whole_input=True)

    @property
    def default_precision(self) -> str:
        """The precision of runs that name none, as given to load_model: auto, fp32, bf16 or fp16."""
        return str(self.info.get("precision", DEFAULT_PRECISION))

    def run_precision(self, asked: str | None) -> RunPrecision:
        """The precision of one run (decided on its first batch; the model is not changed)."""
        return RunPrecision(requested(asked, self.default_precision), self.device, self.network_signature(),
                            self.size_multiple, stored=self.info.get("weights"))

    def network_signature(self) -> str:
        """A short hash of the main network's (and any ControlNet's) class and parameter shapes and dtypes (a key of
        measured decisions)."""
        h = hashlib.sha256()
        # the ControlNets run at every evaluation too: a decision measured without them is not theirs
        for net in (self.main_network(), *(c.net for c in getattr(self, "controls", ()))):
            h.update(type(getattr(net, "_orig_mod", net)).__name__.encode())
            for name, p in net.named_parameters():
                h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
        return h.hexdigest()[:16]

    def optimize(self, *, compile: bool = False) -> Model:
        """torch.compile the main network once (precision is a run's setting, see sdedit.precision)."""
        if compile and self.info.get("offload", "none") != "none":
            raise InputError("--compile does not combine with --offload (the offload hooks move weights mid-graph)")
        if compile and not self.info.get("compiled"):
            self.compile()
            self.info["compiled"] = True
        return self

    def offload(self, mode: Offload, device: torch.device, weights_dtype: torch.dtype | None = None) -> Model:
        """Keep the networks in CPU memory and run them on `device`; only latent families have networks worth it."""
        if mode != "none":
            raise InputError(f"{self.name} is a pixel-space model ({self.info.get('params_m', 0):.0f}M "
                             f"parameters) that fits on any GPU; --offload is for the latent families (SD, SDXL, "
                             f"SD3, FLUX)")
        return self

    def release(self) -> None:
        """After a run: offloaded networks go back to CPU memory (a no-op for models that are not offloaded)."""

    def add_loras(self, specs: list[LoraSpec]) -> None:
        """Apply LoRA adapters to the main network (families that diffusers/PEFT support)."""
        if specs:
            raise InputError(f"{self.name}: LoRA is supported for Stable Diffusion 1.x/2.x, SDXL, SD3 and FLUX models")

    @property
    def takes_guidance(self) -> bool:
        """Whether a guidance weight acts on this model (text-conditioned ones; FLUX.1 schnell takes none)."""
        return self.text_conditioned

    @property
    def recommended_guidance(self) -> float:
        """Guidance when none is given: the CFG default where guidance acts, else none (1)."""
        return DEFAULT_GUIDANCE if self.takes_guidance else NO_GUIDANCE

    def run_settings(self, settings: RunSettings) -> RunSettings:
        """The settings with this model's recommended t0 and guidance where the user gave none."""
        return settings.resolve(self.recommended_t0, self.recommended_guidance)

    def check_conditioning(self, settings: RunSettings) -> None:
        """Refuse a prompt for a model that takes none, and a guidance weight for a model it would not act on."""
        if settings.text and not self.text_conditioned:
            raise InputError(f"{self.name} is not text-conditioned: a prompt needs a Stable Diffusion-style model")
        if settings.guidance not in (None, NO_GUIDANCE) and not self.takes_guidance:
            raise InputError(f"{self.name} takes no guidance weight (it has no guidance input): leave --guidance out")
        if settings.negative_prompt and settings.guidance == NO_GUIDANCE:
            raise InputError("a negative prompt acts through guidance, and guidance 1 is none: it would be ignored")

    def denoiser(self, settings: RunSettings) -> Denoiser:
        """D(x, sigma) for one run's conditioning; unconditional models take none."""
        self.check_conditioning(settings)
        return self.denoise

    def add_controlnets(self, controls: list[AttachedControl]) -> None:
        """Run ControlNets beside the main network (families with takes_controlnets; each checks their kind)."""
        if controls:
            raise InputError(f"{self.name}: ControlNets run with Stable Diffusion 1.x/2.x, SDXL, SD3 and FLUX models")

    def add_ip_adapters(self, specs: Sequence[Any]) -> None:
        """Load IP-Adapters into the main network (families with takes_ip_adapters)."""
        if specs:
            raise InputError(f"{self.name}: IP-Adapters run with Stable Diffusion 1.x/2.x and SDXL models")

    def with_control_scales(self, scales: Sequence[float]) -> Model:
        """This model with its ControlNets at other scales, one per ControlNet (a new model object sharing every
        network; nothing is changed in place, so a run's scale cannot leak into another run)."""
        controls = list(getattr(self, "controls", ()))
        if len(scales) != len(controls):
            raise InputError(f"{len(scales)} control scale(s) for {len(controls)} ControlNet(s)")
        moved = [dataclasses.replace(c, spec=dataclasses.replace(c.spec, scale=float(s)))
                 for c, s in zip(controls, scales, strict=True)]
        twin = copy.copy(self)  # every attribute, the offload state (execution device, hooks) included
        twin.controls, twin.info = moved, dict(self.info)  # type: ignore[attr-defined]
        if moved:
            twin.info["controlnets"] = [c.label for c in moved]
        return twin

    @property
    def control_count(self) -> int:
        """How many ControlNets run beside the main network (each takes one control image per edit)."""
        return len(getattr(self, "controls", ()))

    def control_condition(self, images: Sequence[torch.Tensor], generators: Sequence[torch.Generator]
                          ) -> torch.Tensor | None:
        """The control images (1x3xHxW in [0, 1], one per ControlNet) in the sampler's space, one row per generator;
        None without ControlNets."""
        return None

    def edit_condition(self, x_g: torch.Tensor, mask: torch.Tensor | None,
                       generators: Sequence[torch.Generator]) -> torch.Tensor | None:
        """Extra network input made from one guide (1x3xHxW) and its pixel mask, one row per generator; None: none."""
        return None

    def schedule_for(self, size: tuple[int, int]) -> Schedule:
        """The schedule for images of this (width, height): the model's own, unless it shifts with resolution."""
        return self.schedule

    def sigma(self, t: float) -> float:
        """The noise level of the model's SDE at time t in [0, 1]."""
        return self.schedule.sigma(t)
