"""Single-file checkpoints: a tiny pipeline written in the original Stable Diffusion layout (key mapping below,
made here) loads through diffusers' from_single_file with a local config and edits exactly as its folder does."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdedit import InputError, edit, load_model
from sdedit.frontends.cli import main
from sdedit.loader import is_text_conditioned

from .tiny_sd import make_tiny_sd, make_tiny_sdxl

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel's tensors under the original LDM names (model.diffusion_model.*)."""
    n = unet.config.layers_per_block
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, value in unet.state_dict().items():
        head, _, param = key.rpartition(".")
        if head in fixed:
            new = f"{fixed[head]}.{param}"
        elif m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            side, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
            index = 1 + i * (n + 1) + j if side == "down" else i * (n + 1) + j
            part = "0" if kind == "resnets" else "1"
            if kind == "resnets":
                rest = re.sub(r"^(\w+)", lambda r: _RESNET[r[1]], rest)
            new = f"{'input_blocks' if side == 'down' else 'output_blocks'}.{index}.{part}.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{1 + int(m[1]) * (n + 1) + n}.0.op.{m[2]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            attn = "CrossAttn" in unet.config.up_block_types[int(m[1])]
            new = f"output_blocks.{int(m[1]) * (n + 1) + n}.{2 if attn else 1}.conv.{m[2]}"
        elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(\w+)(.*)", key):
            if m[1] == "resnets":
                new = f"middle_block.{2 * int(m[2])}.{_RESNET[m[3]]}{m[4]}"
            else:
                new = f"middle_block.1.{m[3]}{m[4]}"
        else:
            raise AssertionError(f"no original name for {key}")
        out[f"model.diffusion_model.{new}"] = value
    return out


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    """An AutoencoderKL's tensors under the original names (first_stage_model.*; attention as 1x1 convolutions)."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        if m := re.match(r"(\w+)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", new):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        out[f"first_stage_model.{new}"] = value
    return out


def clip_to_original(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text encoder in transformers' layout under an original prefix (SD1's, SDXL's first embedder)."""
    return {f"{prefix}text_model.{k.removeprefix('text_model.')}": v for k, v in encoder.state_dict().items()
            if not k.endswith("position_ids")}


def open_clip_to_original(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A projecting CLIP text encoder in OpenCLIP's layout (fused in_proj, c_fc/c_proj, text_projection transposed)."""
    state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    out = {f"{prefix}token_embedding.weight": state["embeddings.token_embedding.weight"],
           f"{prefix}positional_embedding": state["embeddings.position_embedding.weight"],
           f"{prefix}ln_final.weight": state["final_layer_norm.weight"],
           f"{prefix}ln_final.bias": state["final_layer_norm.bias"],
           f"{prefix}text_projection": state["text_projection.weight"].T.contiguous()}
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for i in range(encoder.config.num_hidden_layers):
        layer = f"encoder.layers.{i}."
        block = f"{prefix}transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[f"{block}attn.in_proj_{p}"] = torch.cat([state[f"{layer}self_attn.{q}_proj.{p}"] for q in "qkv"])
            for ours, theirs in names.items():
                out[f"{block}{theirs}.{p}"] = state[f"{layer}{ours}.{p}"]
    return out


def config_only(folder: Path, target: Path) -> Path:
    """A copy of a diffusers folder without its weights: configs and tokenizers only."""
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return target


@pytest.fixture(scope="module")
def sd1_single(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    pipe = make_tiny_sd(root / "sd")
    state = {**unet_to_original(pipe.unet), **vae_to_original(pipe.vae),
             **clip_to_original(pipe.text_encoder, "cond_stage_model.transformer.")}
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "tiny-sd1.safetensors"))
    return root / "sd", root / "tiny-sd1.safetensors", config_only(root / "sd", root / "sd-config"), state


def outputs(model, img: Image.Image) -> np.ndarray:
    return np.asarray(edit(model, img, prompt="a red barn", t0=0.6, steps=3, seed=0, progress=False,
                           num_samples=2)[1], float)


def test_sd1_single_file_edits_as_its_folder_does(sd1_single):
    folder, file, config, _ = sd1_single
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    single = load_model(file, config=config, device="cpu", precision="fp32")
    assert single.info["format"] == "single-file" and single.info["config"] == str(config)
    assert is_text_conditioned(file)  # the web app shows its prompt box
    diff = np.abs(outputs(single, img) - outputs(load_model(folder, device="cpu", precision="fp32"), img)).max()
    assert diff == 0  # the networks hold the same tensors, so the pictures are the same, pixel for pixel
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(single, name).state_dict(), getattr(load_model(folder, device="cpu"), name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_sdxl_single_file_edits_as_its_folder_does(tmp_path):
    pipe = make_tiny_sdxl(tmp_path / "xl", hidden_2=48)
    state = {**unet_to_original(pipe.unet), **vae_to_original(pipe.vae),
             **clip_to_original(pipe.text_encoder, "conditioner.embedders.0.transformer."),
             **open_clip_to_original(pipe.text_encoder_2, "conditioner.embedders.1.model.")}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "xl.safetensors"))
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    single = load_model(tmp_path / "xl.safetensors", config=config_only(tmp_path / "xl", tmp_path / "xl-config"),
                        device="cpu", precision="fp32")
    folder = load_model(tmp_path / "xl", device="cpu", precision="fp32")
    assert single.info["family"] == "stable-diffusion-xl"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(single, name).state_dict(), getattr(folder, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert np.array_equal(outputs(single, img), outputs(folder, img))


def test_single_file_errors_name_the_file_and_what_to_pass(sd1_single, tmp_path, capsys):
    folder, file, config, state = sd1_single
    with pytest.raises(InputError, match=r"tiny-sd1.safetensors: a Stable Diffusion 1.x single-file checkpoint "
                                         r"needs --config.*--config sd1.5"):
        load_model(file, device="cpu")
    save_file({"some.tensor": torch.zeros(2)}, str(tmp_path / "junk.safetensors"))
    with pytest.raises(InputError, match="junk.safetensors: its tensors match no known checkpoint layout"):
        load_model(tmp_path / "junk.safetensors", config=config)
    no_vae = {k: v.contiguous() for k, v in state.items() if not k.startswith("first_stage_model.")}
    save_file(no_vae, str(tmp_path / "no-vae.safetensors"))
    with pytest.raises(InputError, match="no-vae.safetensors: holds no VAE"):
        load_model(tmp_path / "no-vae.safetensors", config=config)
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.ckpt")
    with pytest.raises(InputError, match=r"model.ckpt: .* from .safetensors only"):
        load_model(tmp_path / "model.ckpt", config=config)
    with pytest.raises(InputError, match="not a diffusers SDXL pipeline folder"):
        xl = {k.replace("cond_stage_model.", "conditioner.embedders.0."): v for k, v in state.items()}
        xl["conditioner.embedders.1.model.positional_embedding"] = torch.zeros(16, 48)
        save_file({k: v.contiguous() for k, v in xl.items()}, str(tmp_path / "xl.safetensors"))
        load_model(tmp_path / "xl.safetensors", config=config)
    img = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (90, 120, 60)).save(img)
    assert main(["edit", str(img), "--model", str(file), "--prompt", "x", "-o", str(tmp_path / "o")]) == 2
    assert "needs --config" in capsys.readouterr().err
    assert main(["edit", str(img), "--model", str(file), "--config", str(config), "--prompt", "x", "--steps", "2",
                 "-q", "-o", str(tmp_path / "o")]) == 0
