"""Qwen-Image in the VE contract: parity with diffusers' QwenImageImg2ImgPipeline, masks, loading and the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sdedit import edit, load_model
from sdedit.families.qwen_image import QwenImageModel
from sdedit.settings import RunSettings

from .helpers import ddim_on_grid, flow_sigmas, random_image as photo, transformer_lora
from .tiny_sd import make_tiny_qwen_image


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen") / "tiny-qwen-image"
    return folder, make_tiny_qwen_image(folder)


def test_matches_diffusers_qwen_image_img2img_with_true_cfg(qwen_folder):
    folder, pipe = qwen_folder
    model = load_model(folder, device="cpu", precision="fp32")
    assert isinstance(model, QwenImageModel) and model.recommended_guidance == 4.0
    img = photo((64, 48), seed=3)
    strength, n, w, prompt, negative = 0.6, 10, 4.0, "a red barn", "blurry"

    def theirs(text: str, seed: int = 0) -> np.ndarray:
        return pipe(text, negative_prompt=negative, true_cfg_scale=w, image=img, strength=strength,
                    num_inference_steps=n, height=48, width=64, generator=torch.Generator().manual_seed(seed),
                    output_type="np").images[0]

    ref = theirs(prompt)
    start = int(n - n * strength)  # the pipeline's first step (get_timesteps)
    sigmas = flow_sigmas(pipe.scheduler.sigmas[start:])  # the last call's grid: shifted for 12 tokens, to 0.02
    ours = ddim_on_grid(model, img, sigmas, RunSettings(prompt=prompt, negative_prompt=negative, guidance=w))
    diff = np.abs(ours - ref).max()
    other_prompt, other_seed = (np.abs(x - ref).max() for x in (theirs("a snowy mountain"), theirs(prompt, seed=1)))
    print(f"Qwen-Image parity: {diff:.2e}; another prompt {other_prompt:.2e}, another seed {other_seed:.2e}")
    assert diff <= 5e-6, diff  # measured 4.2e-7 (fp32, torch 2.13, AMD EPYC CPU): float32 rounding only
    assert other_prompt > 20 * diff and other_seed > 20 * diff


def test_resolution_dependent_shift_matches_the_scheduler(qwen_folder):
    from diffusers import FlowMatchEulerDiscreteScheduler

    folder, pipe = qwen_folder
    model = load_model(folder, device="cpu")
    n, (w, h) = 8, (256, 192)
    tokens = (w // 16) * (h // 16)
    c = pipe.scheduler.config
    mu = c.base_shift + (c.max_shift - c.base_shift) * (tokens - c.base_image_seq_len) / (
        c.max_image_seq_len - c.base_image_seq_len)
    plain = FlowMatchEulerDiscreteScheduler.from_config(c, shift_terminal=None)  # the shift without the grid stretch
    plain.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    u = torch.linspace(1, 1 / n, n).double()
    s = model.schedule_for((w, h)).shift
    assert torch.allclose(s * u / (1 + (s - 1) * u), plain.sigmas[:n].double(), atol=1e-6)


def test_masked_edit_keeps_unmasked_pixels_at_a_non_square_size(qwen_folder):
    folder, _ = qwen_folder
    model = load_model(folder, device="cpu")
    img = photo((70, 50), seed=2)  # snapped to 64x48 (multiples of VAE 8 x packing 2), returned at 70x50
    mask = Image.new("L", img.size, 0)
    mask.paste(255, (10, 10, 40, 30))
    out = edit(model, img, mask=mask, prompt="a lighthouse", t0=0.7, steps=3, seed=3, num_samples=2, progress=False)
    keep = np.asarray(mask) == 0
    for o in out:
        a = np.asarray(o.convert("RGB"))
        assert a.shape[:2] == (50, 70) and (a[keep] == np.asarray(img)[keep]).all()
        assert not (a[~keep] == np.asarray(img)[~keep]).all()
    again = edit(model, img, mask=mask, prompt="a lighthouse", t0=0.7, steps=3, seed=3, num_samples=2, progress=False)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out, again))  # reproducible by seed


def test_cli_edit_on_a_qwen_image_folder(qwen_folder, tmp_path):
    folder, _ = qwen_folder
    photo((64, 48)).save(tmp_path / "in.png")
    r = subprocess.run([sys.executable, "-m", "sdedit", "edit", str(tmp_path / "in.png"), "--model", str(folder),
                        "--prompt", "x", "--steps", "2", "-q", "-o", str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_edit_variants_are_refused_with_one_line(qwen_folder, tmp_path):
    import json
    import shutil

    from sdedit.errors import InputError

    folder, _ = qwen_folder
    other = tmp_path / "edit"
    shutil.copytree(folder, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "QwenImageEditPipeline"}))
    with pytest.raises(InputError, match="QwenImageEditPipeline"):
        load_model(other, device="cpu")


def test_a_qwen_image_lora_made_here_changes_the_output_and_scale_zero_does_not(qwen_folder, tmp_path):
    folder, pipe = qwen_folder
    transformer_lora(pipe, tmp_path / "qwen-lora.safetensors")
    img = photo((64, 48), seed=1)

    def run(loras: list[str]) -> np.ndarray:
        model = load_model(folder, device="cpu", precision="fp32", loras=loras)
        return np.asarray(edit(model, img, prompt="x", steps=3, seed=0, progress=False)[0], float)

    base = run([])
    assert np.abs(run([str(tmp_path / "qwen-lora.safetensors")]) - base).mean() > 0.05  # (a tiny random network)
    assert np.array_equal(run([f"{tmp_path / 'qwen-lora.safetensors'}:0"]), base)


def test_configs_are_checked_before_any_weights_are_allocated(qwen_folder, tmp_path):
    import json
    import shutil

    from sdedit.errors import InputError

    folder, _ = qwen_folder
    huge = tmp_path / "huge"
    shutil.copytree(folder, huge)
    cfg = json.loads((huge / "transformer" / "config.json").read_text())
    cfg.update(num_layers=4000, attention_head_dim=256, num_attention_heads=24)  # ~ a few hundred billion
    (huge / "transformer" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="billion parameters"):
        load_model(huge, device="cpu")
