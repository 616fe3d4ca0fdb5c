"""The paper's pretrained models by name: where they live, their architecture, schedule and data scale."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .released_format import DDPMArch


@dataclass(frozen=True)
class Preset:
    """One named pretrained model."""

    name: str
    repo_id: str  # Hugging Face Hub repository (diffusers format)
    family: Literal["vp", "ve"]  # DDPM epsilon network, or NCSN++ score network
    resolution: int  # square image size
    description: str
    params_m: float | None  # parameters in millions (fp32 download ~ 4 bytes each); None: not recorded
    data_range: Literal["[-1,1]", "[0,1]"]  # the data scale the network was trained on
    sigma_max: float | None = None  # VE only, in the network's data units (sigma_min is 0.01)
    arch: DDPMArch | None = None  # VP only: the original architecture, for original .ckpt files
    original_ckpt: str | None = None  # the released checkpoint's file name (its bucket is gone)

    @property
    def size_mb(self) -> float | None:
        return None if self.params_m is None else self.params_m * 4.0


_DDPM_256 = DDPMArch()  # ch 128, ch_mult (1,1,2,2,4,4), 2 res blocks, attention at 16x16

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("church", "google/ddpm-ema-church-256", "vp", 256, "LSUN church outdoor, DDPM (EMA)", 113.67,
           "[-1,1]", arch=_DDPM_256, original_ckpt="church_outdoor.ckpt"),
    Preset("bedroom", "google/ddpm-ema-bedroom-256", "vp", 256, "LSUN bedroom, DDPM (EMA)", 113.67,
           "[-1,1]", arch=_DDPM_256, original_ckpt="bedroom.ckpt"),
    Preset("celebahq", "google/ddpm-ema-celebahq-256", "vp", 256, "CelebA-HQ faces, DDPM (EMA)", 113.67,
           "[-1,1]", arch=_DDPM_256, original_ckpt="celeba_hq.ckpt"),
    Preset("church-ve", "google/ncsnpp-church-256", "ve", 256, "LSUN church outdoor, NCSN++ (VE SDE)", None,
           "[0,1]", sigma_max=380.0),
    Preset("celebahq-ve", "google/ncsnpp-celebahq-256", "ve", 256, "CelebA-HQ faces, NCSN++ (VE SDE)", None,
           "[0,1]", sigma_max=348.0),
    Preset("ffhq-ve", "google/ncsnpp-ffhq-256", "ve", 256, "FFHQ faces, NCSN++ (VE SDE)", None,
           "[0,1]", sigma_max=348.0),
    Preset("ffhq1024-ve", "google/ncsnpp-ffhq-1024", "ve", 1024, "FFHQ faces 1024px, NCSN++ (VE SDE)", None,
           "[0,1]", sigma_max=1348.0),
]}

@dataclass(frozen=True)
class PipelinePreset:
    """A named text-conditioned pipeline on the Hub (diffusers format), with what a user should know first."""

    name: str
    repo_id: str
    family: str  # the family module that runs it
    resolution: int  # the side it was trained at
    download: str  # approximate size of the files fetched (safetensors), an estimate from parameter counts
    licence: str
    gated: bool  # accept the licence on the Hub and log in (`huggingface-cli login` / HF_TOKEN) first


PIPELINE_PRESETS: dict[str, PipelinePreset] = {p.name: p for p in [
    PipelinePreset("sd1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", "stable-diffusion", 512,
                   "~4.3 GB (fp32)", "CreativeML OpenRAIL-M", False),
    PipelinePreset("sd2.1", "stabilityai/stable-diffusion-2-1", "stable-diffusion", 768, "~5.2 GB (fp32)",
                   "CreativeML OpenRAIL++-M", False),
    PipelinePreset("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "stable-diffusion-xl", 1024,
                   "~14 GB (fp32; 3.5B parameters)", "CreativeML OpenRAIL++-M", False),
    PipelinePreset("sd3.5-medium", "stabilityai/stable-diffusion-3.5-medium", "stable-diffusion-3", 1024,
                   "~16 GB (2.5B transformer + CLIP-L/G + T5-XXL 4.7B, 16-bit)", "Stability AI Community", True),
    PipelinePreset("flux-schnell", "black-forest-labs/FLUX.1-schnell", "flux", 1024,
                   "~34 GB (12B transformer + T5-XXL, 16-bit)", "Apache 2.0", False),
    PipelinePreset("flux-dev", "black-forest-labs/FLUX.1-dev", "flux", 1024,
                   "~34 GB (12B transformer + T5-XXL, 16-bit)", "FLUX.1 [dev] Non-Commercial", True),
    PipelinePreset("sd3.5-large", "stabilityai/stable-diffusion-3.5-large", "stable-diffusion-3", 1024,
                   "~27 GB (8.1B transformer + text encoders, 16-bit)", "Stability AI Community", True),
    PipelinePreset("qwen-image", "Qwen/Qwen-Image", "qwen-image", 1024,
                   "~58 GB (20B transformer + 8B Qwen2.5-VL + VAE, 16-bit)", "Apache 2.0", False),
]}

# Models that ship inside the package (src/sdedit/weights/<name>/, diffusers format), usable offline.
DEFAULT_MODEL = "landscapes"
BUNDLED_MODELS: dict[str, str] = {
    "landscapes": "64x64 DDPM trained by this project on its procedural landscapes (docs/default-model.md)",
}


def bundled_path(name: str) -> Path:
    """Folder of a model that ships inside the package."""
    from importlib import resources

    return Path(str(resources.files("sdedit") / "weights" / name))
