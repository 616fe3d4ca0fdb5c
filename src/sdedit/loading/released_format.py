"""The released SDEdit / DDIM checkpoint format: YAML configs, and its state-dict keys mapped onto diffusers' UNet2DModel.

The original network (Ho et al. 2020, in the DDIM PyTorch port) equals diffusers'
UNet2DModel with attention at the configured resolutions, downsample_padding=0,
flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6 and single-head attention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import InputError
from ..files import printable
from ..engine.schedules import DiscreteVPSchedule


@dataclass(frozen=True)
class DDPMArch:
    """The original DDPM network's hyperparameters (the `model:` section of a released config)."""

    image_size: int = 256  # square input size
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128  # base width
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)  # width multiplier per resolution level
    num_res_blocks: int = 2  # residual blocks per level on the way down
    attn_resolutions: tuple[int, ...] = (16,)  # resolutions that get self-attention
    dropout: float = 0.0
    resamp_with_conv: bool = True

    def unet_config(self) -> dict[str, Any]:
        """The diffusers UNet2DModel config that reproduces this network."""
        attn = [self.image_size // 2**i in self.attn_resolutions for i in range(len(self.ch_mult))]
        return dict(
            sample_size=self.image_size,
            in_channels=self.in_channels,
            out_channels=self.out_ch,
            block_out_channels=[self.ch * m for m in self.ch_mult],
            layers_per_block=self.num_res_blocks,
            down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
            up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
            downsample_padding=0,
            flip_sin_to_cos=False,
            freq_shift=1,
            norm_eps=1e-6,
            norm_num_groups=32,
            attention_head_dim=None,
            act_fn="silu",
            dropout=self.dropout,
            time_embedding_type="positional",
        )


MAX_CONFIG_BYTES = 1_000_000  # a released config is about 1 KB


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: `*name` is refused, so a few hundred bytes cannot expand to gigabytes
    (the "billion laughs" file)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config",
                                              event.start_mark)
        return super().compose_node(parent, index)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a regular file of bounded size, without aliases or runaway nesting; InputError otherwise."""
    path = Path(path)
    if not path.is_file():  # a folder, FIFO or device would hang or fail later
        raise InputError(f"config {printable(path)} is not a regular file")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise InputError(f"config {printable(path)} is over {MAX_CONFIG_BYTES // 1000} KB; not a config")
        data = yaml.load(path.read_text(), Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"cannot read config {printable(path)}: {' '.join(str(e).split())[:300]}") from None
    except RecursionError:
        raise InputError(f"cannot read config {printable(path)}: nested too deeply") from None
    if not isinstance(data, dict):
        raise InputError(f"config {printable(path)} is not a released SDEdit/DDIM config (expected a YAML mapping)")
    return data


def read_config(path: str | Path) -> tuple[DDPMArch, DiscreteVPSchedule]:
    """Architecture and schedule from a released-format YAML config (configs/church.yml and kin)."""
    cfg = read_yaml(path)
    try:
        m, d, data = cfg["model"], cfg["diffusion"], cfg["data"]
        if m.get("type", "simple") != "simple":
            raise InputError(f"config {printable(path)}: model type {printable(repr(m['type']))[:80]} is not the DDPM "
                             f"network ('simple')")
        if not m.get("resamp_with_conv", True):
            raise InputError(f"config {path}: resamp_with_conv: false is not supported")
        arch = DDPMArch(
            image_size=int(data["image_size"]),
            in_channels=int(m.get("in_channels", 3)),
            out_ch=int(m.get("out_ch", 3)),
            ch=int(m["ch"]),
            ch_mult=tuple(int(v) for v in m["ch_mult"]),
            num_res_blocks=int(m["num_res_blocks"]),
            attn_resolutions=tuple(int(v) for v in m["attn_resolutions"]),
            dropout=float(m.get("dropout", 0.0)),
        )
        schedule = DiscreteVPSchedule(
            beta_start=float(d["beta_start"]),
            beta_end=float(d["beta_end"]),
            num_steps=int(d["num_diffusion_timesteps"]),
            beta_schedule=str(d.get("beta_schedule", "linear")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"config {printable(path)} is not a released SDEdit/DDIM config: missing or bad "
                         f"{printable(e)[:200]}") from None
    return arch, schedule


# Original key pattern -> diffusers key template; {L} is filled with the reversed level index.
_RULES: list[tuple[str, str]] = [
    (r"temb\.dense\.0\.(.*)", r"time_embedding.linear_1.\1"),
    (r"temb\.dense\.1\.(.*)", r"time_embedding.linear_2.\1"),
    (r"conv_in\.(.*)", r"conv_in.\1"),
    (r"norm_out\.(.*)", r"conv_norm_out.\1"),
    (r"conv_out\.(.*)", r"conv_out.\1"),
    (r"down\.(\d+)\.block\.(\d+)\.(.*)", r"down_blocks.\1.resnets.\2.\3"),
    (r"down\.(\d+)\.attn\.(\d+)\.(.*)", r"down_blocks.\1.attentions.\2.\3"),
    (r"down\.(\d+)\.downsample\.conv\.(.*)", r"down_blocks.\1.downsamplers.0.conv.\2"),
    (r"mid\.block_1\.(.*)", r"mid_block.resnets.0.\1"),
    (r"mid\.attn_1\.(.*)", r"mid_block.attentions.0.\1"),
    (r"mid\.block_2\.(.*)", r"mid_block.resnets.1.\1"),
    (r"up\.(\d+)\.block\.(\d+)\.(.*)", r"up_blocks.{L}.resnets.\2.\3"),
    (r"up\.(\d+)\.attn\.(\d+)\.(.*)", r"up_blocks.{L}.attentions.\2.\3"),
    (r"up\.(\d+)\.upsample\.conv\.(.*)", r"up_blocks.{L}.upsamplers.0.conv.\2"),
]
# Leaf renames inside residual and attention blocks.
_LEAVES = {
    "temb_proj": "time_emb_proj", "nin_shortcut": "conv_shortcut",
    "norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0",
}


def map_key(key: str, num_levels: int) -> str | None:
    """The diffusers name of one original key, or None when the key belongs to no known part."""
    for pattern, template in _RULES:
        m = re.fullmatch(pattern, key)
        if m is None:
            continue
        out = m.expand(template)
        if "{L}" in out:
            out = out.replace("{L}", str(num_levels - 1 - int(m.group(1))))
        head, _, param = out.rpartition(".")
        block, _, leaf = head.rpartition(".")
        if (".resnets." in out or ".attentions." in out) and leaf in _LEAVES:
            head = f"{block}.{_LEAVES[leaf]}"
        return f"{head}.{param}"
    return None


def convert_state_dict(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], num_levels: int,
                       source: str) -> dict[str, torch.Tensor]:
    """Map every original tensor onto the target network's keys, strictly: any missing, extra or mis-shaped tensor is an InputError naming it."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = map_key(key, num_levels)
        if new is None or new not in target:
            raise InputError(f"{source}: unexpected tensor {key!r} (not part of the configured network)")
        if new.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")) and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1x1 convolution -> linear layer
        if tuple(value.shape) != tuple(target[new].shape):
            raise InputError(f"{source}: tensor {key!r} has shape {tuple(value.shape)}, "
                             f"the configured network needs {tuple(target[new].shape)}")
        out[new] = value
    missing = [k for k in target if k not in out]
    if missing:
        raise InputError(f"{source}: missing {len(missing)} tensor(s) of the configured network, "
                         f"first {missing[0]!r}; is the config right for this checkpoint?")
    return out
