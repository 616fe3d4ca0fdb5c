"""ControlNets (Zhang et al. 2023) named as `MODEL[:SCALE]`: a diffusers folder, a Hub id or a single safetensors file,
read into diffusers' ControlNet classes (safetensors only, config checked before any weights load)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InputError
from ..files import printable
from .checkpoints import LOAD_ERRORS, check_regular_files, check_weights_fit, first_line, plan_network, read_json, \
    safetensors_shapes
from .hub import hub_control_snapshot, hub_reachable, is_repo_id
from .lora import split_scale
from .presets import CONTROL_PRESETS, ControlPreset

# diffusers' ControlNet classes by config class name, and the family kind each one steers
SINGLE_FILE_KEYS = ("control_model.input_hint_block.", "input_hint_block.", "controlnet_cond_embedding.")
CONTROLNET_KINDS = {"ControlNetModel": "unet", "ControlNetUnionModel": "unet-union", "SD3ControlNetModel": "sd3",
                    "FluxControlNetModel": "flux"}


@dataclass(frozen=True)
class ControlSpec:
    """One ControlNet to run beside the main network: where it is and how strongly (scale 0 = as if absent)."""

    source: str  # a diffusers folder, a Hub id, a .safetensors file, or a control preset's name
    scale: float = 1.0
    mode: int | None = None  # union ControlNets: the control type's index (diffusers' control_mode); others: None

    @classmethod
    def parse(cls, text: str) -> ControlSpec:
        """'MODEL' or 'MODEL:SCALE' (lora.split_scale's rule)."""
        source, scale = split_scale(text, "--controlnet")
        if scale is not None and scale < 0:
            raise InputError(f"--controlnet {printable(text)}: the scale must be 0 or more (0 = as if absent)")
        return cls(source) if scale is None else cls(source, scale)


def control_mode(spec: ControlSpec, text: str) -> ControlSpec:
    """The spec with a union ControlNet's mode: its index, or a name from its preset's modes."""
    preset = CONTROL_PRESETS.get(spec.source)
    modes = preset.modes if preset is not None else ()
    if text.isascii() and text.isdigit():
        mode = int(text)
    elif text in modes:
        mode = modes.index(text)
    else:
        known = f" ({', '.join(modes)})" if modes else ""
        raise InputError(f"--control-mode {printable(text)}: a control type's index or a name of its preset{known}")
    if modes and mode >= len(modes):
        raise InputError(f"--control-mode {mode}: {spec.source} has {len(modes)} modes ({', '.join(modes)})")
    return ControlSpec(spec.source, spec.scale, mode)


def check_mode(spec: ControlSpec, net: nn.Module, kind: str) -> None:
    """A union ControlNet needs a mode within its config's count; any other takes none."""
    count = getattr(net.config, "num_control_type", None) or getattr(net.config, "num_mode", None)
    union = kind == "unet-union" or bool(count)
    if union and spec.mode is None:
        raise InputError(f"ControlNet {spec.source} is a union ControlNet: say which control type with --control-mode")
    if not union and spec.mode is not None:
        raise InputError(f"ControlNet {spec.source} has one control type: leave --control-mode out")
    if union and count and spec.mode is not None and not 0 <= spec.mode < int(count):
        raise InputError(f"--control-mode {spec.mode}: {spec.source} has {count} control types (0 to {int(count) - 1})")


def _classes() -> dict[str, Any]:
    from diffusers import ControlNetModel, ControlNetUnionModel, FluxControlNetModel, SD3ControlNetModel

    return {"ControlNetModel": ControlNetModel, "ControlNetUnionModel": ControlNetUnionModel,
            "SD3ControlNetModel": SD3ControlNetModel, "FluxControlNetModel": FluxControlNetModel}


def controlnet_folder(spec: ControlSpec) -> Path | None:
    """The local diffusers folder a spec names (a preset or Hub id fetched into the cache); None for a single file."""
    path = Path(spec.source).expanduser()
    if path.is_dir():
        return path
    if path.is_file() or path.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        return None
    if spec.source in CONTROL_PRESETS:
        preset = CONTROL_PRESETS[spec.source]
        if preset.kind != "controlnet":
            raise InputError(f"{spec.source} is an IP-Adapter: give it with --ip-adapter")
        return hub_control_snapshot(preset)
    if is_repo_id(spec.source):  # any diffusers-format ControlNet repository: its config and safetensors only
        return hub_control_snapshot(ControlPreset(spec.source, spec.source, "controlnet", "", "", "", "", "", False))
    names = ", ".join(n for n, p in CONTROL_PRESETS.items() if p.kind == "controlnet")
    raise InputError(f"ControlNet not found: {printable(spec.source)} (a diffusers folder, a .safetensors file, "
                     f"a Hub id or a control preset: {names})")


def load_controlnet(spec: ControlSpec) -> tuple[nn.Module, str]:
    """The ControlNet a spec names, in inference mode, and its kind (CONTROLNET_KINDS)."""
    folder = controlnet_folder(spec)
    if folder is None:
        net = _single_file(Path(spec.source).expanduser())
        check_mode(spec, net, "unet")
        return net, "unet"
    check_regular_files(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise InputError(f"{printable(folder)}: not a ControlNet folder (no config.json)")
    cfg = read_json(config_file)
    name = str(cfg.get("_class_name", ""))
    if name not in CONTROLNET_KINDS:
        raise InputError(f"{printable(folder)}: a {name or 'model without _class_name'}, not a ControlNet "
                         f"({', '.join(CONTROLNET_KINDS)})")
    cls = _classes()[name]
    planned = plan_network(lambda: cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")}),
                           str(config_file))
    check_weights_fit(planned, folder, str(config_file))
    if not any(folder.glob("*.safetensors")):
        raise InputError(f"{printable(folder)}: no .safetensors weights (pickled .bin files can hold code)")
    try:
        net = cls.from_pretrained(folder, use_safetensors=True)
    except LOAD_ERRORS as e:
        raise InputError(f"{printable(folder)}: cannot load the ControlNet: {first_line(e)}") from None
    check_mode(spec, net, CONTROLNET_KINDS[name])
    return net.eval().requires_grad_(False), CONTROLNET_KINDS[name]


def _single_file(path: Path) -> nn.Module:
    """A ControlNet in the original single-file layout (safetensors), through diffusers' single-file loader."""
    if not path.is_file():
        raise InputError(f"ControlNet not found: {printable(path)}")
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"{printable(path)}: ControlNet weights are read from .safetensors files only (pickled "
                         f"files can hold code)")
    keys = safetensors_shapes(path)
    if not any(k.startswith(SINGLE_FILE_KEYS) for k in keys):
        raise InputError(f"{printable(path)}: not a ControlNet (none of its {len(keys)} tensors is a ControlNet's "
                         f"hint or condition embedding)")
    from diffusers import ControlNetModel

    try:  # offline, diffusers' config lookup fails at once instead of retrying
        net = ControlNetModel.from_single_file(str(path), local_files_only=not hub_reachable())
    except LOAD_ERRORS as e:
        raise InputError(f"{printable(path)}: cannot load it as a single-file ControlNet (its config is inferred "
                         f"from the Hub, which may be unreachable; a diffusers folder needs none): "
                         f"{first_line(e)}") from None
    return net.eval().requires_grad_(False)
