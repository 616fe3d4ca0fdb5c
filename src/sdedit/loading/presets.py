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
    PipelinePreset("kontext-dev", "black-forest-labs/FLUX.1-Kontext-dev", "flux-kontext", 1024,
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


CONTROL_FAMILIES = ("stable-diffusion", "stable-diffusion-xl", "stable-diffusion-3", "flux")


@dataclass(frozen=True)
class ControlPreset:
    """A named ControlNet or IP-Adapter on the Hub (diffusers format), with what a user should know first."""

    name: str
    repo_id: str
    kind: Literal["controlnet", "ip-adapter"]
    family: str  # the pipeline family it applies to, one of CONTROL_FAMILIES
    base: str  # the base model it was trained for
    control: str  # what it is steered by: "scribble", "canny", "union" (several modes), "image prompt"
    download: str  # approximate size of the files fetched (safetensors, the repository's default precision)
    licence: str
    gated: bool  # accept the licence on the Hub and log in (`huggingface-cli login` / HF_TOKEN) first
    model_class: str = ""  # ControlNets: the diffusers class whose from_pretrained loads the folder
    modes: tuple[str, ...] = ()  # union ControlNets: the control modes, each at its index (diffusers' control_mode)
    subfolder: str = ""  # IP-Adapters: the folder of the weight file inside the repository
    weight_name: str = ""  # IP-Adapters: the weight file (diffusers' load_ip_adapter weight_name)
    image_encoder: str = ""  # IP-Adapters: the image encoder's folder from the repository's root
    note: str = ""

    @property
    def files(self) -> tuple[str, ...]:
        """The files fetched, relative to the repository's root: configs and safetensors only, never pickles."""
        if self.kind == "ip-adapter":
            return (f"{self.subfolder}/{self.weight_name}", f"{self.image_encoder}/config.json",
                    f"{self.image_encoder}/model.safetensors")
        return ("config.json", "diffusion_pytorch_model.safetensors")


_OPENRAIL = "OpenRAIL"
CONTROL_PRESETS: dict[str, ControlPreset] = {c.name: c for c in [
    ControlPreset("sd15-scribble", "lllyasviel/control_v11p_sd15_scribble", "controlnet", "stable-diffusion",
                  "SD 1.5", "scribble", "~1.45 GB (fp32)", _OPENRAIL, False, model_class="ControlNetModel",
                  note="white strokes on black"),
    ControlPreset("sd15-canny", "lllyasviel/control_v11p_sd15_canny", "controlnet", "stable-diffusion",
                  "SD 1.5", "canny", "~1.45 GB (fp32)", _OPENRAIL, False, model_class="ControlNetModel",
                  note="white Canny edges on black"),
    ControlPreset("sdxl-union", "xinsir/controlnet-union-sdxl-1.0", "controlnet", "stable-diffusion-xl",
                  "SDXL 1.0", "union", "~2.5 GB (fp16)", "Apache 2.0", False, model_class="ControlNetUnionModel",
                  modes=("pose", "depth", "scribble", "canny", "normal", "segment"),
                  note="scribble: also HED/PiDi soft edges; canny: also lineart and MLSD lines"),
    ControlPreset("flux-union", "Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro", "controlnet", "flux",
                  "FLUX.1 dev", "union", "~6.6 GB (bf16)", "FLUX.1 [dev] Non-Commercial", False,
                  model_class="FluxControlNetModel",
                  modes=("canny", "tile", "depth", "blur", "pose", "gray", "low quality"),
                  note="the model card recommends scale 0.3-0.8"),
    ControlPreset("sd3.5-large-canny", "stabilityai/stable-diffusion-3.5-large-controlnet-canny", "controlnet",
                  "stable-diffusion-3", "SD3.5 Large", "canny", "~8.6 GB (16-bit)",
                  "Stability AI Community", True, model_class="SD3ControlNetModel",
                  note="SD3.5 Large only; its control image is not normalised to [-1, 1] (see its model card)"),
    ControlPreset("sd15-ip-adapter", "h94/IP-Adapter", "ip-adapter", "stable-diffusion", "SD 1.5", "image prompt",
                  "~2.6 GB (adapter 45 MB + ViT-H encoder 2.5 GB)", "Apache 2.0", False,
                  subfolder="models", weight_name="ip-adapter_sd15.safetensors",
                  image_encoder="models/image_encoder"),
    ControlPreset("sdxl-ip-adapter", "h94/IP-Adapter", "ip-adapter", "stable-diffusion-xl", "SDXL 1.0",
                  "image prompt", "~4.4 GB (adapter 0.7 GB + ViT-bigG encoder 3.7 GB)", "Apache 2.0", False,
                  subfolder="sdxl_models", weight_name="ip-adapter_sdxl.safetensors",
                  image_encoder="sdxl_models/image_encoder"),
    ControlPreset("sdxl-ip-adapter-vit-h", "h94/IP-Adapter", "ip-adapter", "stable-diffusion-xl", "SDXL 1.0",
                  "image prompt", "~3.2 GB (adapter 0.7 GB + ViT-H encoder 2.5 GB)", "Apache 2.0", False,
                  subfolder="sdxl_models", weight_name="ip-adapter_sdxl_vit-h.safetensors",
                  image_encoder="models/image_encoder", note="shares its image encoder with sd15-ip-adapter"),
]}


def control_preset(name: str, family: str | None = None) -> ControlPreset:
    """A control preset by name, checked against the family of the pipeline it is to steer (None: not checked)."""
    from ..errors import InputError

    preset = CONTROL_PRESETS.get(name)
    if preset is None:
        raise InputError(f"unknown control preset {name!r}; control presets: {', '.join(CONTROL_PRESETS)}")
    if family is not None and preset.family != family:
        raise InputError(f"{name} is a {preset.kind} for {preset.family} ({preset.base}); this model is {family}")
    return preset


def control_table() -> list[str]:
    """The lines of `sdedit models`' table of ControlNet and IP-Adapter presets."""
    rows = [f"{'name':<22} {'applies to':<33} {'type':<19} {'download':<50} licence"]
    for c in CONTROL_PRESETS.values():
        applies = f"{c.family} ({c.base})"
        kind = f"ControlNet {c.control}" if c.kind == "controlnet" else "IP-Adapter"
        gated = " (gated: accept it on the Hub, then `huggingface-cli login`)" if c.gated else ""
        rows.append(f"{c.name:<22} {applies:<33} {kind:<19} {c.download:<50} {c.licence}{gated}")
        if c.modes:
            rows.append(f"{'':<22} modes: {', '.join(f'{i} {m}' for i, m in enumerate(c.modes))}")
    return rows
