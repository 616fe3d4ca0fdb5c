"""The Hugging Face Hub: fetching diffusers repositories into huggingface_hub's cache (safetensors only), offline-aware."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import InputError, ModelUnavailableError
from ..files import printable
from .presets import ControlPreset, control_preset

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def is_repo_id(text: str) -> bool:
    """Whether text has the shape of a Hub repository id, OWNER/NAME (no paths, no '..')."""
    return bool(_REPO_ID.match(text)) and ".." not in text and not text.endswith(".")


def check_repo_id(text: str) -> str:
    """A Hub repository id, or an InputError saying what one looks like."""
    if not is_repo_id(text):
        raise InputError(f"{printable(text)!r} is not a Hub repository id (OWNER/NAME: letters, digits, '-', '_', '.')")
    return text


HUB_PROBE_TIMEOUT_S = 3.0  # one connection attempt; without it an unreachable Hub costs a minute of retries


def hub_reachable() -> bool:
    """Whether one TCP connection to the Hub's endpoint opens within HUB_PROBE_TIMEOUT_S (offline mode: False)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    if not url.hostname:
        return False
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def offline_note() -> str:
    """Why the Hub was not asked, for messages."""
    return " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else \
        f" (no connection to it within {HUB_PROBE_TIMEOUT_S:g} s)"


def hub_snapshot(repo_id: str, *, what: str) -> Path:
    """Download (or find in huggingface_hub's cache) the files of a diffusers UNet2DModel repo; its local folder."""
    check_repo_id(repo_id)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    local = not hub_reachable()  # the cache only: fail at once, not after retries

    def fetch(*names: str) -> Path | None:
        # The first of the alternatives that exists; offline, one that is cached.
        unreachable: LocalEntryNotFoundError | None = None
        for n in names:
            try:
                return Path(hf_hub_download(repo_id, n, local_files_only=local))
            except LocalEntryNotFoundError as e:
                unreachable = e
            except EntryNotFoundError:
                continue
        if unreachable is not None:
            raise unreachable
        return None

    try:
        config = fetch("unet/config.json", "config.json")
        if config is None:
            raise InputError(f"{what}: {repo_id} has no UNet2DModel config.json")
        sub = "unet/" if config.parent.name == "unet" else ""
        fetch(f"{sub}diffusion_pytorch_model.safetensors", f"{sub}diffusion_pytorch_model.bin")
        fetch("scheduler/scheduler_config.json", "scheduler_config.json")
    except LocalEntryNotFoundError:
        raise ModelUnavailableError(
            f"{what} ({repo_id}) is not in the Hugging Face cache and the Hub cannot be reached{offline_note()}; "
            f"run `sdedit download {what}` once with network access, or use a local checkpoint (sdedit: --model PATH, main.py: --ckpt PATH)"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(f"{what}: no such model repository on the Hub: {repo_id}") from None
    return config.parent.parent if sub else config.parent


PIPELINE_FILES = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/*", "tokenizer_2/*", "tokenizer_3/*",
                  *(f"{part}/{pattern}" for part in ("unet", "vae", "transformer", "text_encoder", "text_encoder_2",
                                                     "text_encoder_3") for pattern in ("*.json", "*.safetensors"))]


def hub_pipeline_snapshot(repo_id: str) -> Path | None:
    """The local folder of a Stable Diffusion-style Hub repo (safetensors weights only), or None if it is not one."""
    check_repo_id(repo_id)
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    local = not hub_reachable()
    try:
        hf_hub_download(repo_id, "model_index.json", local_files_only=local)
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError):
        return None  # not a pipeline, or unreachable: hub_snapshot reports which
    # the default-precision weights only: "*.fp16.safetensors" variants beside them would double the download
    return Path(snapshot_download(repo_id, allow_patterns=PIPELINE_FILES, ignore_patterns=["*.fp16.*", "*.bin"],
                                  local_files_only=local))


def hub_control_snapshot(preset: ControlPreset, *, download: bool = True) -> Path:
    """The local folder of a ControlNet or IP-Adapter preset (its configs and safetensors only): cache or download."""
    check_repo_id(preset.repo_id)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    local = not download or not hub_reachable()
    what = f"{preset.name} ({preset.repo_id})"
    try:
        folder: Path | None = Path(snapshot_download(preset.repo_id, allow_patterns=list(preset.files),
                                                     local_files_only=local))
    except LocalEntryNotFoundError:  # not cached (offline), or a cached snapshot that lacks requested files
        folder = None
    except GatedRepoError:
        raise ModelUnavailableError(f"{what} is gated: accept its licence on the Hub, then `huggingface-cli login` "
                                    f"(or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ModelUnavailableError(f"{what}: no such repository on the Hub (or it is private)") from None
    missing = [f for f in preset.files if folder is None or not (folder / f).is_file()]
    if folder is not None and not missing:
        return folder
    if local:
        unreachable = f" and the Hub cannot be reached{offline_note()}" if download else ""
        raise ModelUnavailableError(f"{what} is not in the Hugging Face cache{unreachable}; run "
                                    f"`sdedit download {preset.name}` once with network access")
    if folder is None:
        raise ModelUnavailableError(f"{what} could not be fetched (the connection failed); run "
                                    f"`sdedit download {preset.name}` again")
    raise ModelUnavailableError(f"{what}: the repository has no {', '.join(missing)}")


def control_preset_folder(name: str, family: str | None = None, *, download: bool = False) -> Path:
    """The local folder of a control preset (--controlnet NAME, --ip-adapter NAME): the cache only unless download."""
    return hub_control_snapshot(control_preset(name, family), download=download)


def is_cached(repo_id: str) -> bool:
    """Whether a repo's UNet config is in huggingface_hub's cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, n), str) for n in ("unet/config.json", "config.json"))




CONFIG_FILES = ["model_index.json", "scheduler/*.json", "tokenizer/*", "tokenizer_2/*",
                *(f"{part}/config.json" for part in ("unet", "vae", "text_encoder", "text_encoder_2"))]


def hub_config_snapshot(repo_id: str) -> Path:
    """The local folder of a pipeline's configs and tokenizers only (no weights): the cache, or a small download."""
    check_repo_id(repo_id)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=CONFIG_FILES, local_files_only=not hub_reachable()))
    except LocalEntryNotFoundError:
        raise ModelUnavailableError(f"the configs of {repo_id} are not in the Hugging Face cache and the Hub cannot be "
                                    f"reached{offline_note()}; give --config a local diffusers folder instead") from None
    except (GatedRepoError, RepositoryNotFoundError):
        raise InputError(f"{repo_id}: no such Hub repository, or it is gated (log in first)") from None
