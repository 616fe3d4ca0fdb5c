"""Pixel-space families: DDPM epsilon networks (VP) and NCSN++ score networks (VE), square inputs, no conditioning.

The image space is the sampler's space: encode is the identity (one row per generator),
decode returns the samples, and a mask is used as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.denoisers import expand, vp_input, x0_from_eps
from ..engine.schedules import DiscreteVPSchedule, Schedule, VESchedule
from ..devices import pick_device
from ..errors import InputError
from ..images import Fit, fit_box
from ..loading.checkpoints import check_compute, check_sample_size, materialize, plan_network, read_json, \
    read_state_dict, schedule_from, scheduler_config
from ..loading.presets import PRESETS, Preset
from ..loading.released_format import DDPMArch, convert_state_dict, read_config
from ..settings import DEFAULT_T0, SettingError, check_t0
from .base import Frame, Model
from .ddpm_unet import DDPMUNet, fits


class NetworkDenoiser(nn.Module):
    """Base of the pixel adapters: runs the wrapped network (under whatever autocast the run set), returning float32.

    clip: D is E[x0 | x] of images in [-1, 1], so it lies in [-1, 1], and the adapter may project its estimate
    there (DDPM's clip_denoised): a projection onto a box that holds the true value never moves the estimate away
    from it.  At high noise, where x0 = x - sigma eps multiplies the network's error by sigma (157 at t = 1), it
    keeps a small model from saturating (the bundled model at t0 >= 0.9 gives black images without it).  Off unless
    the model's config asks (`_sdedit.clip_denoised`), so released checkpoints run the released algorithm exactly.
    """

    unet: nn.Module
    clip: bool = False

    def projected(self, d: torch.Tensor) -> torch.Tensor:
        return d.clamp(-1.0, 1.0) if self.clip else d

    def run(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, cond).sample.float()


class EpsDenoiser(NetworkDenoiser):
    """DDPM epsilon network as D (EDM's VP wrapper): D(x, sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma))."""

    def __init__(self, unet: nn.Module, schedule: DiscreteVPSchedule):
        super().__init__()
        self.unet = unet  # eps-prediction network taking (x_vp, step)
        self.schedule = schedule  # maps sigma to the (fractional) training step
        # the schedule's grid as a buffer: it moves with the network, so no step copies it to the device
        self.register_buffer("log_sigmas", schedule.log_sigmas.clone(), persistent=False)

    def eps(self, x_vp: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """The network's noise prediction in VP form at a (fractional) step."""
        return self.run(x_vp, step.to(x_vp.device, torch.float32))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = expand(sigma, x)
        eps = self.eps(vp_input(x, s), self.schedule.step(sigma.reshape(-1), self.log_sigmas))
        return self.projected(x0_from_eps(x, s, eps))


class ScoreDenoiser(NetworkDenoiser):
    """NCSN++ score network as D (Song et al. 2021, VE SDE): D(x, sigma) = x + sigma^2 * score(x, sigma)."""

    def __init__(self, unet: nn.Module, schedule: VESchedule):
        super().__init__()
        self.unet = unet  # score network whose output is already divided by its sigma
        self.schedule = schedule  # knows the network's data range

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        k = self.schedule.scale  # contract units per network unit
        # Contract -> network units: [-1, 1] data becomes [0, 1] data, sigma shrinks alike.
        x_net = (x + 1.0) / k if k != 1.0 else x
        sigma_net = (sigma.reshape(-1) / k).to(x.device, torch.float32)
        score = self.run(x_net, sigma_net).to(x.dtype)
        # Tweedie: E[x0 | x] = x + sigma^2 score, then back to contract units.
        d_net = x_net + expand(sigma_net, x) ** 2 * score
        return self.projected(d_net * k - 1.0 if k != 1.0 else d_net)


def pixel_denoiser(unet: nn.Module, schedule: Schedule, clip: bool = False) -> NetworkDenoiser:
    """The adapter for a network trained on this schedule: epsilon for VP, score for VE (clip: see NetworkDenoiser)."""
    adapter = EpsDenoiser(unet, schedule) if isinstance(schedule, DiscreteVPSchedule) else ScoreDenoiser(unet, schedule)
    adapter.clip = clip
    return adapter


@dataclass
class PixelModel(Model):
    """A square pixel-space diffusion model: the denoiser contract plus the facts SDEdit needs."""

    denoiser_net: nn.Module  # D(x, sigma) -> x0_hat, VE form, data in [-1, 1]
    schedule: Schedule  # sigma(t) of the SDE the network was trained with
    side: int  # square image size the network expects
    name: str  # preset name, path or Hub id, for metadata
    info: dict[str, Any] = field(default_factory=dict)  # family, source, parameter count, ...
    square = True

    @property
    def resolution(self) -> int:
        return self.side

    @property
    def device(self) -> torch.device:
        for t in (*self.denoiser_net.parameters(), *self.denoiser_net.buffers()):
            return t.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> PixelModel:
        self.denoiser_net.to(device)
        return self

    def main_network(self) -> nn.Module:
        return self.denoiser_net

    @property
    def size_multiple(self) -> int:
        """The UNet halves its input at each down block but the last (a denoiser without a UNet takes any size)."""
        unet = getattr(self.denoiser_net, "unet", None)
        return 1 if unet is None else 2 ** (len(unet.config["down_block_types"]) - 1)

    def compile(self) -> None:
        self.denoiser_net.unet = torch.compile(self.denoiser_net.unet)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x, sigma) -> x0_hat for x = x0 + sigma n, x0 in [-1, 1], sigma of shape (B,)."""
        return self.denoiser_net(x, sigma)

    def frame(self, size: tuple[int, int], fit: Fit, original_size: bool) -> Frame:
        """Centre square (crop) or the whole image (stretch), at the model's square resolution."""
        return Frame(fit_box(size, fit), (self.side, self.side), original_size)

    def canvas_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Any aspect (tiles are square, the canvas need not be), sides down to the network's multiple."""
        m = self.size_multiple
        return max(m, size[0] // m * m), max(m, size[1] // m * m)

    def encode(self, x_g: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        return x_g.to(self.device).expand(len(generators), -1, -1, -1)

    def encode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.to(self.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


def unet_from_config(config: dict[str, Any]) -> nn.Module:
    """The network a UNet2DModel config describes: the lean DDPMUNet when it covers the config (no diffusers
    import: ~2 s less start-up), else diffusers' own class."""
    if fits(config):
        return DDPMUNet(config)
    from diffusers import UNet2DModel

    return UNet2DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def unet_flops(unet: nn.Module, side: int) -> float:
    """Floating-point operations of one evaluation of a UNet2DModel-layout network on one side x side image, from its
    layers without running it: 2 per multiply-add of every convolution and linear weight at its level's resolution
    (resamplers at the finer side), plus self-attention's two products over the level's pixels."""
    blocks: list[tuple[str, float]] = [("", side)]  # (module prefix, side it runs at); the first is the outer layers
    down = list(getattr(unet, "down_blocks", []))
    blocks += [(f"down_blocks.{i}.", side / 2**i) for i in range(len(down))]
    lowest = side / 2 ** max(len(down) - 1, 0)
    blocks += [("mid_block.", lowest)]
    blocks += [(f"up_blocks.{j}.", lowest * 2**j) for j in range(len(getattr(unet, "up_blocks", [])))]
    macs = 0.0
    for name, w in unet.named_parameters():
        if w.ndim < 2 or "time_emb" in name:  # biases, norms; the time embedding runs once per image
            continue
        prefix, s = max(((p, r) for p, r in blocks if name.startswith(p)), key=lambda b: len(b[0]))
        finer = prefix.startswith("up_blocks") and any(k in name for k in ("upsampler", "resnet_up", "skip"))
        macs += w.numel() * (2 * s if finer else s) ** 2
    for name, module in unet.named_modules():
        if isinstance(getattr(module, "to_q", None), nn.Linear):
            s = max(((p, r) for p, r in blocks if name.startswith(p)), key=lambda b: len(b[0]))[1]
            macs += 2 * (s * s) ** 2 * module.to_q.out_features  # q k^T and attention-weighted v
    return 2 * macs


def _finish(unet: nn.Module, schedule: Schedule, resolution: int, name: str, info: dict[str, Any],
            device: str | torch.device | None) -> PixelModel:
    """The loaded network in inference mode on its device (channels_last on CPUs), wrapped in its adapter."""
    unet.eval().requires_grad_(False)
    dev = pick_device(device)
    if dev.type == "cpu":
        unet.to(memory_format=torch.channels_last)
    info = {"family": schedule.kind, "params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 3), **info}
    return PixelModel(pixel_denoiser(unet, schedule, bool(info.get("clip_denoised"))), schedule, resolution, name,
                      info).to(dev)


def load_original(path: str | Path, config: str | Path, *, device: str | torch.device | None = None,
                  name: str | None = None) -> PixelModel:
    """An original SDEdit / DDIM checkpoint with its YAML config (or a preset name for the architecture)."""
    arch, schedule = _arch_for(config)
    check_sample_size(arch.image_size, str(config))
    unet = plan_network(lambda: unet_from_config(arch.unet_config()), str(config))  # no memory yet
    check_compute(unet_flops(unet, arch.image_size), str(config), f"image_size {arch.image_size}")
    state = read_state_dict(path)
    materialize(unet, convert_state_dict(state, unet.state_dict(), len(arch.ch_mult), str(path)), str(path))
    return _finish(unet, schedule, arch.image_size, name or str(path), {"source": str(path), "format": "original"},
                   device)


def _arch_for(config: str | Path) -> tuple[DDPMArch, DiscreteVPSchedule]:
    if str(config) in PRESETS:
        preset = PRESETS[str(config)]
        if preset.arch is None:
            raise InputError(f"preset {preset.name!r} is an NCSN++ model; original .ckpt files are DDPM networks")
        return preset.arch, DiscreteVPSchedule()
    if not Path(config).is_file():
        raise InputError(f"config not found: {config} (give a released YAML config or one of: "
                         f"{', '.join(n for n, p in PRESETS.items() if p.arch)})")
    return read_config(config)


def load_diffusers_unet(folder: str | Path, *, device: str | torch.device | None = None, name: str | None = None,
                   preset: Preset | None = None) -> PixelModel:
    """A diffusers-format unconditional UNet2DModel folder (DDPM epsilon or NCSN++ score network)."""
    root = Path(folder)
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    cfg = read_json(unet_dir / "config.json")
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise InputError(f"{root}: a {cfg.get('_class_name')} is not an unconditional UNet2DModel")
    weights = next((unet_dir / f"diffusion_pytorch_model{s}" for s in (".safetensors", ".bin")
                    if (unet_dir / f"diffusion_pytorch_model{s}").is_file()), None)
    if weights is None:
        raise InputError(f"{root}: no diffusion_pytorch_model.safetensors or .bin in {unet_dir}")
    config_file = str(unet_dir / "config.json")
    size = check_sample_size(cfg.get("sample_size") or (preset.resolution if preset else None), config_file)
    unet = plan_network(lambda: unet_from_config(cfg), config_file)  # no memory yet: the config is checked first
    check_compute(unet_flops(unet, size), config_file, f"sample_size {size}")
    materialize(unet, read_state_dict(weights), str(weights))
    sched = scheduler_config(root)
    if cfg.get("time_embedding_type") == "fourier":
        sigma_max = sched.get("sigma_max", preset.sigma_max if preset else None)
        if sigma_max is None:
            raise InputError(f"{root}: an NCSN++ score model needs scheduler_config.json with sigma_max")
        schedule: Schedule = schedule_from(lambda: VESchedule(float(sched.get("sigma_min", 0.01)), float(sigma_max),
                                                              1.0), root)
    else:
        if sched.get("prediction_type", "epsilon") != "epsilon":
            raise InputError(f"{root}: prediction_type {sched['prediction_type']!r} is not supported (epsilon only)")
        schedule = schedule_from(lambda: DiscreteVPSchedule(
            float(sched.get("beta_start", 1e-4)), float(sched.get("beta_end", 0.02)),
            int(sched.get("num_train_timesteps", 1000)), str(sched.get("beta_schedule", "linear"))), root)
    clip = {"clip_denoised": True} if model_fact(cfg, config_file, "clip_denoised", bool, False) else {}
    model = _finish(unet, schedule, int(size), name or str(folder), {"source": str(folder), "format": "diffusers",
                                                                    **clip}, device)
    model.recommended_t0 = recommended_t0(cfg, config_file)
    return model


def model_fact(config: dict[str, Any], where: str, name: str, kind: type, default: Any) -> Any:
    """One fact about the model from its config's `_sdedit` object (written by whoever measured it), or default."""
    facts = config.get("_sdedit", {})
    if not isinstance(facts, dict):
        raise InputError(f"{where}: _sdedit must be an object of facts about the model, got {facts!r:.60}")
    value = facts.get(name, default)
    if not isinstance(value, kind):
        raise InputError(f"{where}: _sdedit.{name} must be a {kind.__name__}, got {value!r:.60}")
    return value


def recommended_t0(config: dict[str, Any], where: str) -> float:
    """The t0 a model's config recommends (`_sdedit.recommended_t0`, written by whoever measured it), else 0.5."""
    if "_sdedit" not in config:
        return DEFAULT_T0
    facts = config["_sdedit"]
    if not isinstance(facts, dict):
        raise InputError(f"{where}: _sdedit must be an object of facts about the model, got {facts!r:.60}")
    if "recommended_t0" not in facts:
        return DEFAULT_T0
    value = facts["recommended_t0"]
    try:
        return check_t0(value)
    except SettingError:
        raise InputError(f"{where}: _sdedit.recommended_t0 must be a number in (0, 1], got {value!r:.60}") from None
