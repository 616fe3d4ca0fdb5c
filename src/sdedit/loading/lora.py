"""LoRA files: `PATH_OR_HUB_ID[:SCALE]` parsed once, and resolved to a local safetensors file (never a pickle)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, ModelUnavailableError
from ..files import printable
from .hub import is_repo_id

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' training scripts and the Hub use


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: where it is and how strongly (scale 0 = as if absent)."""

    source: str  # a .safetensors file, a folder holding pytorch_lora_weights.safetensors, or a Hub id
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """'PATH_OR_HUB_ID' or 'PATH_OR_HUB_ID:SCALE' (the scale is whatever follows the last colon, if a number)."""
        source, sep, tail = text.rpartition(":")
        if sep and source:
            try:
                scale = float(tail)
            except ValueError:
                return cls(text)
            if not math.isfinite(scale):
                raise InputError(f"--lora {printable(text)}: the scale must be a finite number")
            return cls(source, scale)
        return cls(text)


def lora_file(spec: LoraSpec) -> Path:
    """The local safetensors file of a LoRA (downloaded into the Hub cache for a Hub id)."""
    given = Path(spec.source).expanduser()
    path = given / LORA_FILE if given.is_dir() else given
    local = os.path.lexists(given) or given.suffix.lower() in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
    if local and not path.is_file():
        raise InputError(f"LoRA not found: {printable(path)}" + (f" (the folder has no {LORA_FILE})"
                                                                if given.is_dir() else ""))
    if path.is_file():
        if path.suffix != ".safetensors":
            raise InputError(f"{printable(path)}: LoRA weights are read from .safetensors files only "
                             f"(pickled .bin/.pt files can hold code)")
        return path
    if not is_repo_id(spec.source):
        raise InputError(f"LoRA not found: {printable(spec.source)} (a .safetensors file, a folder with {LORA_FILE}, "
                         f"or a Hub id)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(spec.source, LORA_FILE))
    except LocalEntryNotFoundError:
        raise ModelUnavailableError(f"LoRA {spec.source} is not in the Hugging Face cache and the Hub cannot be "
                                    f"reached") from None
    except (EntryNotFoundError, RepositoryNotFoundError):
        raise InputError(f"LoRA {spec.source}: no {LORA_FILE} in that Hub repository") from None


def apply_loras(network: object, specs: list[LoraSpec], state_dict_reader: object, prefix: str) -> list[str]:
    """Load each LoRA's layers for `network` (diffusers' format conversion, PEFT adapters) and set their scales.

    state_dict_reader: a diffusers LoRA loader mixin class whose lora_state_dict reads (and converts)
    the file; prefix: the network's key prefix in it ('unet', 'transformer').  Returns the keys of
    other networks found in the files and not applied (the text encoders' LoRA layers).
    """
    from ..loading.checkpoints import LOAD_ERRORS, first_line

    names, skipped = [], []
    for i, spec in enumerate(specs):
        path = lora_file(spec)
        try:
            loaded = state_dict_reader.lora_state_dict(str(path))  # type: ignore[attr-defined]
            state, alphas = (loaded[0], loaded[1]) if isinstance(loaded, tuple) else (loaded, None)
            mine = {k: v for k, v in state.items() if k.startswith(prefix + ".")}
            skipped += [k for k in state if not k.startswith(prefix + ".")]
            if not mine:
                raise ValueError(f"no {prefix} layers in it")
            name = f"lora{i}"
            network.load_lora_adapter(mine, network_alphas=alphas, adapter_name=name,  # type: ignore[attr-defined]
                                      prefix=prefix)
        except LOAD_ERRORS as e:
            raise InputError(f"{printable(path)}: not a LoRA for this model: {first_line(e)}") from None
        names.append(name)
    network.set_adapters(names, weights=[spec.scale for spec in specs])  # type: ignore[attr-defined]
    return skipped
