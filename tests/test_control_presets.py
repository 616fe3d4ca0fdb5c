"""ControlNet and IP-Adapter presets: their table, and finding them in the Hugging Face cache without a network."""

from __future__ import annotations

import pytest

from sdedit.errors import InputError, ModelUnavailableError
from sdedit.loading.hub import control_preset_folder, hub_control_snapshot
from sdedit.loading.presets import (BUNDLED_MODELS, CONTROL_FAMILIES, CONTROL_PRESETS, PIPELINE_PRESETS, PRESETS,
                                    control_preset, control_table)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of this test's own, the Hub unreachable (offline)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hub"


def cache_files(cache, repo_id: str, files: list[str]) -> None:
    """Lay out files of one snapshot of a repository as huggingface_hub's cache does."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for f in files:
        path = repo / "snapshots" / COMMIT / f
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")


def test_presets_apply_to_a_known_family_and_have_what_they_need():
    kinds = {c.kind for c in CONTROL_PRESETS.values()}
    assert kinds == {"controlnet", "ip-adapter"}
    for name, c in CONTROL_PRESETS.items():
        assert c.name == name and name == name.lower() and " " not in name
        assert c.family in CONTROL_FAMILIES
        assert c.download.startswith("~") and "GB" in c.download and c.licence
        if c.kind == "ip-adapter":
            assert c.family in ("stable-diffusion", "stable-diffusion-xl")  # diffusers' loaders for SD 1.x and SDXL
            assert c.weight_name.endswith(".safetensors") and c.subfolder and "/" in c.image_encoder
            assert not c.model_class and not c.modes
        else:
            assert c.model_class in ("ControlNetModel", "ControlNetUnionModel", "SD3ControlNetModel",
                                     "FluxControlNetModel")
            assert (c.control == "union") == bool(c.modes)
    assert {CONTROL_PRESETS[n].family for n in ("sd15-scribble", "sd15-canny", "sd15-ip-adapter")} == \
        {"stable-diffusion"}
    assert CONTROL_PRESETS["sdxl-union"].model_class == "ControlNetUnionModel"
    assert CONTROL_PRESETS["flux-union"].family == "flux"


def test_the_model_classes_are_diffusers_classes():
    import diffusers

    for c in CONTROL_PRESETS.values():
        if c.model_class:
            assert hasattr(diffusers, c.model_class), c.model_class


def test_control_names_are_disjoint_from_every_other_preset():
    others = [*PRESETS, *PIPELINE_PRESETS, *BUNDLED_MODELS]
    assert not set(CONTROL_PRESETS) & set(others)


def test_only_configs_and_safetensors_are_fetched():
    for c in CONTROL_PRESETS.values():
        assert c.files and all(f.endswith((".json", ".safetensors")) for f in c.files), c.name
        assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) or ".fp16." in f for f in c.files)
    # the SDXL union repository also holds a 2.5 GB 'promax' variant at its root: exact names keep it out
    assert CONTROL_PRESETS["sdxl-union"].files == ("config.json", "diffusion_pytorch_model.safetensors")
    assert CONTROL_PRESETS["sd15-ip-adapter"].files == (
        "models/ip-adapter_sd15.safetensors", "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors")


def test_the_table_lists_each_preset_once_with_its_gated_marker():
    lines = control_table()
    assert lines[0].split()[:2] == ["name", "applies"]
    for c in CONTROL_PRESETS.values():
        rows = [line for line in lines if line.split()[0] == c.name]
        assert len(rows) == 1, c.name
        assert c.family in rows[0] and c.download in rows[0] and c.licence in rows[0]
        assert ("gated" in rows[0]) == c.gated
    assert any(c.gated for c in CONTROL_PRESETS.values()) and not all(c.gated for c in CONTROL_PRESETS.values())
    assert any("3 canny" in line for line in lines)  # the union modes, at their indices


def test_control_preset_checks_the_name_and_the_family():
    assert control_preset("sd15-canny", "stable-diffusion") is CONTROL_PRESETS["sd15-canny"]
    with pytest.raises(InputError, match="unknown control preset 'sd15-scribbles'.*sd15-scribble"):
        control_preset("sd15-scribbles")
    with pytest.raises(InputError, match=r"sdxl-union is a controlnet for stable-diffusion-xl .*this model is flux"):
        control_preset("sdxl-union", "flux")


@pytest.mark.parametrize("download", [False, True])
def test_an_uncached_preset_offline_is_one_line_with_the_download_hint(hf_cache, download):
    with pytest.raises(ModelUnavailableError) as e:
        control_preset_folder("sd15-scribble", "stable-diffusion", download=download)
    message = str(e.value)
    assert "\n" not in message
    assert "sd15-scribble (lllyasviel/control_v11p_sd15_scribble) is not in the Hugging Face cache" in message
    assert "run `sdedit download sd15-scribble` once with network access" in message
    assert ("HF_HUB_OFFLINE is set" in message) == download


def test_a_cached_preset_resolves_to_its_folder_offline(hf_cache):
    cache_files(hf_cache, "lllyasviel/control_v11p_sd15_scribble",
                ["config.json", "diffusion_pytorch_model.safetensors"])
    folder = control_preset_folder("sd15-scribble")
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file()
    assert folder.name == COMMIT


def test_a_partly_cached_preset_is_not_taken_for_a_cached_one(hf_cache):
    # sd15-ip-adapter was fetched; the SDXL adapter of the same repository was not, nor its image encoder
    cache_files(hf_cache, "h94/IP-Adapter", list(CONTROL_PRESETS["sd15-ip-adapter"].files))
    folder = hub_control_snapshot(CONTROL_PRESETS["sd15-ip-adapter"])
    assert (folder / "models" / "ip-adapter_sd15.safetensors").is_file()
    with pytest.raises(ModelUnavailableError, match="sdxl-ip-adapter .* not in the Hugging Face cache.*"
                                                    "`sdedit download sdxl-ip-adapter`"):
        hub_control_snapshot(CONTROL_PRESETS["sdxl-ip-adapter"])
    # the ViT-H SDXL adapter shares the cached encoder, but its own weight file is still missing
    with pytest.raises(ModelUnavailableError, match="sdxl-ip-adapter-vit-h"):
        control_preset_folder("sdxl-ip-adapter-vit-h", "stable-diffusion-xl")
