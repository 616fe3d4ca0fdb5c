"""LoRA: a tiny adapter made here changes the output, scale 0 is no LoRA, two compose, bad files are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdedit import InputError, edit, load_model
from sdedit.frontends.cli import main
from sdedit.loading.lora import LoraSpec

from .tiny_sd import make_tiny_sd


@pytest.fixture(scope="module")
def sd_with_loras(tmp_path_factory):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    root = tmp_path_factory.mktemp("lora")
    pipe = make_tiny_sd(root / "sd")
    files = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        unet = type(pipe.unet).from_config(pipe.unet.config)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                    init_lora_weights=False))  # random A and B: the adapter does something
        state = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}
        path = root / f"lora{seed}.safetensors"
        save_file(state, str(path))
        files.append(path)
    return root / "sd", files


def text_encoder_lora(encoder, seed: int, prefix: str = "text_encoder") -> dict[str, torch.Tensor]:
    """Random LoRA layers (PEFT) on a CLIP text encoder's attention, keyed as diffusers saves them."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    encoder = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                                 target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]),
                                      type(encoder)(encoder.config))
    return {f"{prefix}.{k}": v.contiguous() for k, v in get_peft_model_state_dict(encoder).items()}


@pytest.fixture(scope="module")
def text_loras(sd_with_loras, tmp_path_factory):
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    folder, (a, _) = sd_with_loras
    root = tmp_path_factory.mktemp("te-lora")
    text = text_encoder_lora(CLIPTextModel.from_pretrained(folder / "text_encoder"), 3)
    save_file(text, str(root / "text.safetensors"))
    save_file({**load_file(str(a)), **text}, str(root / "both.safetensors"))
    return folder, a, root / "text.safetensors", root / "both.safetensors"


def run(model, img: Image.Image) -> np.ndarray:
    return np.asarray(edit(model, img, prompt="a red barn", t0=0.6, steps=3, seed=0, progress=False)[0], float)


def test_lora_changes_output_scale_zero_is_none_and_two_compose(sd_with_loras):
    folder, (a, b) = sd_with_loras
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    base = run(load_model(folder, device="cpu", precision="fp32"), img)
    with_a = run(load_model(folder, device="cpu", precision="fp32", loras=[f"{a}:1.0"]), img)
    zero = run(load_model(folder, device="cpu", precision="fp32", loras=[f"{a}:0"]), img)
    both = run(load_model(folder, device="cpu", precision="fp32", loras=[str(a), f"{b}:1"]), img)
    a_only = run(load_model(folder, device="cpu", precision="fp32", loras=[str(a), f"{b}:0"]), img)
    assert np.abs(with_a - base).mean() > 1  # the adapter changes the picture
    assert np.array_equal(zero, base)  # scale 0 is no LoRA
    assert np.array_equal(a_only, with_a) and np.abs(both - with_a).mean() > 1  # B adds to A


def test_text_encoder_loras_apply_and_scale_zero_is_none(text_loras):
    folder, unet_only, text_only, both = text_loras
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8))

    def load(*loras):
        return load_model(folder, device="cpu", precision="fp32", loras=list(loras))

    base_model, text_model = load(), load(f"{text_only}:1")
    base = run(base_model, img)
    emb = base_model.encode_prompt("a red barn").context
    assert (text_model.encode_prompt("a red barn").context - emb).abs().max() > 1e-3  # the encoder has changed
    assert np.abs(run(text_model, img) - base).mean() > 1  # and so has the picture
    assert np.array_equal(run(load(f"{text_only}:0"), img), base)  # scale 0 is no LoRA, bit for bit
    assert np.array_equal(run(load(f"{both}:0"), img), base)
    with_both, with_unet = load(str(both)), load(str(unet_only))
    assert torch.equal(with_both.encode_prompt("a red barn").context, text_model.encode_prompt("a red barn").context)
    out_both = run(with_both, img)
    assert np.abs(out_both - run(with_unet, img)).mean() > 1 and np.abs(out_both - run(text_model, img)).mean() > 1
    assert np.array_equal(out_both, run(load(str(unet_only), str(text_only)), img))  # one file = its two halves
    assert "lora_text_encoder_layers_skipped" not in with_both.info


def test_lora_in_the_cli_and_in_metadata(sd_with_loras, tmp_path, capsys):
    folder, (a, _) = sd_with_loras
    Image.new("RGB", (48, 32), (90, 120, 60)).save(tmp_path / "in.png")
    assert main(["edit", str(tmp_path / "in.png"), "--model", str(folder), "--prompt", "x", "--steps", "2",
                 "--lora", f"{a}:0.5", "-o", str(tmp_path / "o")]) == 0
    from sdedit import read_settings

    path = capsys.readouterr().out.split()[0]
    assert read_settings(path)["loras"] == [f"{a}:0.5"]


def test_bad_loras_are_input_errors(sd_with_loras, tmp_path, capsys):
    folder, _ = sd_with_loras
    pickle_lora = tmp_path / "lora.bin"
    pickle_lora.write_bytes(b"\x80\x04K\x01.")
    junk = tmp_path / "junk.safetensors"
    save_file({"text_model.x": torch.zeros(2)}, str(junk))
    (tmp_path / "empty-folder").mkdir()
    for bad, message in ((pickle_lora, ".safetensors files only"), (tmp_path / "none.safetensors", "not found"),
                         (junk, "not a LoRA for this model"), (tmp_path / "empty-folder", "the folder has no"),
                         ("some/path.safetensors", "not found")):
        with pytest.raises(InputError, match=message):
            load_model(folder, device="cpu", loras=[str(bad)])
    assert LoraSpec.parse("owner/name:0.25") == LoraSpec("owner/name", 0.25)
    assert LoraSpec.parse("C:/x.safetensors") == LoraSpec("C:/x.safetensors", 1.0)
    assert main(["edit", str(tmp_path / "none.png"), "--lora", "x.safetensors", "-o", str(tmp_path / "o")]) == 2
    with pytest.raises(InputError, match="LoRA is supported"):
        load_model("landscapes", loras=[str(junk)])
