"""The lean DDPM network equals diffusers' UNet2DModel: same parameter names, same outputs, for the configs it takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from sdedit.families.ddpm_unet import DDPMUNet, fits
from sdedit.loading.presets import bundled_path
from sdedit.loading.released_format import read_config

from .conftest import DATA

CONFIGS = {
    "bundled": json.loads((bundled_path("landscapes") / "config.json").read_text()),
    "released tiny.yml": read_config(DATA / "tiny.yml")[0].unet_config(),
    "plain defaults, padding 1": dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                                      down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                      up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
                                      norm_num_groups=8, freq_shift=0, flip_sin_to_cos=True),
    "a widened run's embedding": dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                                      down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                      up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
                                      norm_num_groups=8, freq_shift=2, flip_sin_to_cos=False, time_embedding_dim=48),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_parameters_and_outputs_as_diffusers(name):
    config = {k: v for k, v in CONFIGS[name].items() if not k.startswith("_")}
    assert fits(config)
    torch.manual_seed(0)
    reference = UNet2DModel(**config).eval()
    lean = DDPMUNet(config).eval()
    state = reference.state_dict()
    assert set(lean.state_dict()) == set(state)
    lean.load_state_dict(state, strict=True)
    size = config["sample_size"]
    x = torch.randn(3, 3, size, size)
    t = torch.tensor([0.0, 250.5, 999.0])
    with torch.inference_mode():
        want = reference(x, t).sample
        got = lean(x, t).sample
        one = lean(x[:1], t[:1]).sample
        scalar = lean(x, torch.tensor(17.25)).sample
        want_scalar = reference(x, torch.tensor(17.25)).sample
    assert (got - want).abs().max().item() < 2e-5 * max(1.0, want.abs().max().item())
    assert (one - want[:1]).abs().max().item() < 2e-5 * max(1.0, want.abs().max().item())
    assert (scalar - want_scalar).abs().max().item() < 2e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("change", [{"time_embedding_type": "fourier"}, {"center_input_sample": True},
                                    {"attention_head_dim": 8}, {"class_embed_type": "timestep"},
                                    {"resnet_time_scale_shift": "scale_shift"},
                                    {"down_block_types": ["SkipDownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                                                          "DownBlock2D"]}])
def test_other_configs_go_to_diffusers(change):
    assert not fits({**CONFIGS["bundled"], **change})


def test_the_bundled_model_loads_without_importing_diffusers_models():
    import subprocess
    import sys

    code = ("import sys; from sdedit import load_model; m = load_model('landscapes'); "
            "print(type(m.denoiser_net.unet).__name__, any(k.startswith(('diffusers.models', 'transformers')) "
            "for k in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).parent)
    assert r.stdout.split() == ["DDPMUNet", "False"], r.stderr
