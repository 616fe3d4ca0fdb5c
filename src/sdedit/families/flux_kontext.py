"""FLUX.1 Kontext (dev): FLUX.1 with the input image's latents as reference tokens beside the noisy latents.

The transformer is FLUX.1's; diffusers' FluxKontextPipeline adds, after the packed noisy latents, the packed
latents of the input image (the VAE posterior's mode, (z - shift) * scale) with position ids (1, row, column),
where the noisy tokens have (0, row, column), and keeps only the noisy tokens' velocity.  Here the reference is
`edit_condition`: the guide's latents at the frame's size on the latent grid, which the denoiser receives as
`condition` (and a tiled edit cuts per tile, as the noisy latents).  diffusers resizes the input to one of
Kontext's preferred resolutions (about 1 megapixel) and generates at max_area; in SDEdit the noisy latents are
the guide's own, so the reference is the guide at the frame's size, the same grid as the noisy latents.  SDEdit's
t0 applies to the noisy latents only: t0 = 1 is the pipeline's text-to-image-with-reference, t0 < 1 starts from the
noised input; masks and the exact paste-back work as for every family (the whole input stays the reference).
Guidance is FLUX.1 dev's embedding (2.5 by default, Kontext dev's model card; no negative prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..devices import pick_device
from ..engine.denoisers import flow_input, x0_from_velocity
from ..errors import InputError
from ..settings import NO_GUIDANCE
from .control import AttachedControl
from .flux import KONTEXT_PIPELINES, FluxDenoiser, FluxModel, check_flux_parts, check_flux_pipeline, flux_channels, \
    flux_parts, flux_pipeline, pack, patch_ids, unpack

KONTEXT_GUIDANCE = 2.5  # FLUX.1 Kontext dev's embedded guidance (its model card; the pipeline's example)
REFERENCE_ID = 1.0  # the first position id of the reference tokens (the noisy latents' is 0)


def reference_ids(h: int, w: int, device: torch.device) -> torch.Tensor:
    """The reference tokens' position ids: (1, row, column) per 2x2 patch of an h x w latent grid."""
    ids = patch_ids(h, w, device)
    ids[:, 0] = REFERENCE_ID
    return ids


class KontextDenoiser(FluxDenoiser):
    """D(z, sigma) of FLUX.1 Kontext for one prompt: the reference's tokens follow the noisy latents' in one sequence;
    the velocity of the noisy tokens alone gives x0 = x_t - t v."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """condition: the reference latents on their latent grid (model.edit_condition), one row per row of x; None:
        no reference (FLUX.1 Kontext as a text-to-image model)."""
        b, _, h, w = x.shape
        x_t, t = flow_input(x, sigma.to(x.device, x.dtype).reshape(-1, 1, 1, 1))
        tokens, ids = pack(x_t), patch_ids(h, w, x.device)
        if condition is not None:
            if condition.shape[1] != self.latent_channels:
                raise InputError(f"FLUX.1 Kontext takes its reference as {self.latent_channels} latent channels "
                                 f"(model.edit_condition); got {condition.shape[1]}")
            tokens = torch.cat([tokens, pack(condition.to(x_t))], dim=1)
            ids = torch.cat([ids, reference_ids(*condition.shape[-2:], x.device)])
        v = self.transformer(hidden_states=tokens, timestep=t.reshape(-1).expand(b), img_ids=ids,
                             guidance=self.guidance_input(b, x.device), **self.text_inputs(b, x.device),
                             return_dict=False)[0]
        return x0_from_velocity(x_t, t, unpack(v[:, :(h // 2) * (w // 2)].float(), h, w))


@dataclass
class FluxKontextModel(FluxModel):
    """FLUX.1 Kontext: FluxModel whose edit condition is the guide's latents as the transformer's reference image."""

    takes_controlnets = False

    @property
    def recommended_guidance(self) -> float:
        """Kontext dev's embedded guidance defaults to 2.5 (its model card); a transformer without the embedding
        takes none."""
        return KONTEXT_GUIDANCE if self.takes_guidance else NO_GUIDANCE

    def add_controlnets(self, controls: list[AttachedControl]) -> None:
        """FLUX.1 Kontext runs without ControlNets (its reference image is its conditioning)."""
        if controls:
            raise InputError(f"{self.name}: FLUX.1 Kontext takes no ControlNets (its input image is its reference)")

    @torch.inference_mode()
    def edit_condition(self, x_g: torch.Tensor, mask: torch.Tensor | None,
                       generators: Sequence[torch.Generator]) -> torch.Tensor | None:
        """The reference: the whole guide's latents, (mode - shift) * scale as FluxKontextPipeline encodes its image
        (the posterior's mode, no draw), one row per generator; the mask does not cut it."""
        with self._tiling(*x_g.shape[-2:]):
            mode = self.vae.encode(x_g.to(self.device, torch.float32)).latent_dist.mode()
        cfg = self.vae.config
        z = (mode - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor
        return z.expand(len(generators), -1, -1, -1)

    def _denoiser(self, context: torch.Tensor, pooled: torch.Tensor, guidance: float | None,
                  controls: Sequence[AttachedControl]) -> KontextDenoiser:
        return KontextDenoiser(self.transformer, context, pooled, guidance,
                               latent_channels=int(self.vae.config.latent_channels), latent_factor=self.latent_factor)


def is_flux_kontext_folder(root: Path) -> bool:
    """Whether a folder holds a diffusers FLUX.1 Kontext pipeline (model_index.json's class)."""
    return flux_pipeline(root) in KONTEXT_PIPELINES


def load_flux_kontext(root: str | Path, *, device: str | torch.device | None = None,
                      name: str | None = None) -> FluxKontextModel:
    """Load a diffusers FLUX.1 Kontext folder (FLUX.1's components; the transformer takes plain packed latents)."""
    root = Path(root)
    check_flux_pipeline(root, KONTEXT_PIPELINES)
    check_flux_parts(root)
    in_channels, plain, _ = flux_channels(root)
    if in_channels != plain:
        raise InputError(f"{root}: a FLUX.1 Kontext transformer with {in_channels} input channels; it takes {plain} "
                         f"(packed latents, the reference as more tokens)")
    parts, params = flux_parts(root)
    model = FluxKontextModel(*parts, name or str(root),
                             {"family": "flux-kontext", "source": str(root), "format": "diffusers",
                              "parameters": params, "guidance_embeds": bool(parts[0].config.guidance_embeds),
                              "inpainting": False})
    return model.to(pick_device(device))
