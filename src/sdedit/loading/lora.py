"""LoRA files: `PATH_OR_HUB_ID[:SCALE]` parsed once, and resolved to a local safetensors file (never a pickle)."""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, ModelUnavailableError
from ..files import printable
from .hub import hub_reachable, is_repo_id, offline_note

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' training scripts and the Hub use


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: where it is and how strongly (scale 0 = as if absent)."""

    source: str  # a .safetensors file, a folder holding pytorch_lora_weights.safetensors, or a Hub id
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """'PATH_OR_HUB_ID' or 'PATH_OR_HUB_ID:SCALE' (split_scale's rule)."""
        source, scale = split_scale(text, "--lora")
        return cls(source) if scale is None else cls(source, scale)


def split_scale(text: str, option: str) -> tuple[str, float | None]:
    """'SOURCE[:SCALE]' as (source, scale or None): the scale is whatever follows the last colon if it is a number
    (so 'C:/x' or 'owner/name' stay whole); a scale that is not finite is an input error naming the option."""
    source, sep, tail = text.rpartition(":")
    if not (sep and source):
        return text, None
    try:
        scale = float(tail)
    except ValueError:
        return text, None
    if not math.isfinite(scale):
        raise InputError(f"{option} {printable(text)}: the scale must be a finite number")
    return source, scale


def _check_readable(path: Path, note: str = "") -> None:
    """InputError unless path is a regular file this process can open (a FIFO is refused, never waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"LoRA not found: {printable(path)}{note}") from None
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.EISDIR):
            raise InputError(f"LoRA {printable(path)} is not a regular file") from None
        raise InputError(f"LoRA {printable(path)} cannot be read: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"LoRA {printable(path)} is not a regular file (a FIFO or device)")
    finally:
        os.close(fd)


def local_lora_file(spec: LoraSpec) -> Path | None:
    """The local safetensors file a LoRA names, checked to be a readable regular file; None for a Hub id."""
    given = Path(spec.source).expanduser()
    path = given / LORA_FILE if given.is_dir() else given
    if os.path.lexists(given) or given.suffix.lower() in (".safetensors", ".bin", ".pt", ".pth", ".ckpt"):
        _check_readable(path, f" (the folder has no {LORA_FILE})" if given.is_dir() else "")
        if path.suffix != ".safetensors":
            raise InputError(f"{printable(path)}: LoRA weights are read from .safetensors files only "
                             f"(pickled .bin/.pt files can hold code)")
        return path
    if not is_repo_id(spec.source):
        raise InputError(f"LoRA not found: {printable(spec.source)} (a .safetensors file, a folder with {LORA_FILE}, "
                         f"or a Hub id)")
    return None


def check_lora_files(specs: Sequence[LoraSpec]) -> None:
    """Every local LoRA checked (a readable regular .safetensors file) before any model is loaded."""
    for spec in specs:
        local_lora_file(spec)


def lora_file(spec: LoraSpec) -> Path:
    """The local safetensors file of a LoRA (downloaded into the Hub cache for a Hub id)."""
    path = local_lora_file(spec)
    if path is not None:
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(spec.source, LORA_FILE, local_files_only=not hub_reachable()))
    except LocalEntryNotFoundError:
        raise ModelUnavailableError(f"LoRA {spec.source} is not in the Hugging Face cache and the Hub cannot be "
                                    f"reached{offline_note()}") from None
    except (EntryNotFoundError, RepositoryNotFoundError):
        raise InputError(f"LoRA {spec.source}: no {LORA_FILE} in that Hub repository") from None


def apply_loras(networks: dict[str, Any], specs: list[LoraSpec], state_dict_reader: Any) -> None:
    """Load each LoRA's layers into the networks they name (diffusers' format conversion, PEFT adapters), scaled.

    networks: the model's networks by their key prefix in LoRA files, the main one first ('unet' or
    'transformer', then 'text_encoder', 'text_encoder_2'); state_dict_reader: a diffusers LoRA loader
    mixin class, whose lora_state_dict reads (and converts kohya/diffusers formats of) a file.  A file with
    layers for a network the model lacks is refused.
    """
    from ..loading.checkpoints import LOAD_ERRORS, first_line

    main = next(iter(networks))
    active: dict[str, list[tuple[str, float]]] = {prefix: [] for prefix in networks}
    for i, spec in enumerate(specs):
        path, name, prefix = lora_file(spec), f"lora{i}", ""
        try:
            loaded = state_dict_reader.lora_state_dict(str(path))
            state, alphas = (loaded[0], loaded[1]) if isinstance(loaded, tuple) else (loaded, None)
            parts: dict[str, dict[str, Any]] = {}
            for key, value in state.items():
                parts.setdefault(key.split(".")[0], {})[key] = value
            foreign = [p for p in parts if p not in networks]
            if foreign or not parts:
                raise ValueError(f"layers for {foreign[0]!r}, which this model does not have" if foreign
                                 else "no LoRA layers in it")
            for prefix, layers in parts.items():
                if prefix == main:
                    with _quiet("diffusers.loaders.peft"):  # it logs the whole error (one line per tensor) first
                        networks[prefix].load_lora_adapter(layers, network_alphas=alphas, adapter_name=name,
                                                           prefix=prefix)
                else:
                    _into_text_encoder(networks[prefix], layers, alphas, prefix, name)
                active[prefix].append((name, spec.scale))
        except LOAD_ERRORS as e:
            raise InputError(f"{printable(path)}: not a LoRA for this model: "
                             f"{_first_mismatch(e, prefix, name) or first_line(e)}") from None
    _set_scales(networks, active, main)


_MISMATCH = re.compile(r"size mismatch for (\S+?): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from "
                       r"checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)")


def _first_mismatch(e: BaseException, prefix: str, name: str) -> str | None:
    """The first wrongly shaped tensor of a load_state_dict error, in one line with the file's key (None if none)."""
    found = _MISMATCH.search(str(e))
    if found is None:
        return None
    key, have, need = found.groups()
    key = f"{prefix}.{key.replace(f'.{name}.', '.')}" if prefix else key
    return f"tensor {printable(key)[:160]!r} has shape ({have}), the model's layer needs ({need})"


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """A library logger silenced for the block (its error is raised and reported in one line instead)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _into_text_encoder(encoder: Any, layers: dict[str, Any], alphas: dict[str, float] | None, prefix: str,
                       name: str) -> None:
    """One LoRA's layers for a transformers text encoder, injected as a PEFT adapter (as diffusers reads them).

    PEFT directly rather than transformers' own adapter API, which asks for a newer PEFT than is released.
    """
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, get_peft_kwargs
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    state = convert_state_dict_to_peft(convert_state_dict_to_diffusers(
        {k.removeprefix(prefix + "."): v for k, v in layers.items()}))
    if not hasattr(encoder, "text_model"):  # transformers 5 flattened CLIPTextModel; older files keep the prefix
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    ranks = {k: v.shape[1] for k, v in state.items() if ".lora_B." in k and v.ndim == 2}
    if not ranks:
        raise ValueError(f"no LoRA up/down pairs for {prefix}")
    mine = {k.removeprefix(prefix + "."): v for k, v in (alphas or {}).items() if k.split(".")[0] == prefix}
    config = LoraConfig(**get_peft_kwargs(ranks, mine, state, is_unet=False))
    inject_adapter_in_model(config, encoder, adapter_name=name)
    result = set_peft_model_state_dict(encoder, state, adapter_name=name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if ".lora_" in k]
    if unexpected:
        raise ValueError(f"{prefix} has no layer for {unexpected[0]!r}")


def _set_scales(networks: dict[str, Any], active: dict[str, list[tuple[str, float]]], main: str) -> None:
    """Activate each network's adapters with their LoRA's scale (scale 0 adds exactly nothing)."""
    from diffusers.utils import set_weights_and_activate_adapters

    for prefix, pairs in active.items():
        if not pairs:
            continue
        names, scales = [n for n, _ in pairs], [s for _, s in pairs]
        if prefix == main:
            networks[prefix].set_adapters(names, weights=scales)
        else:
            set_weights_and_activate_adapters(networks[prefix], names, scales)
