"""diffusers folders (DDPM epsilon and NCSN++ score networks), Hub ids and presets, all without network."""

from __future__ import annotations

import json
import time

import pytest
import torch
from diffusers import UNet2DModel

from sdedit import InputError, ModelUnavailableError, PRESETS, load_model
from sdedit.engine.schedules import DiscreteVPSchedule, VESchedule

SMALL = dict(sample_size=16, block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8,
             down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def save_folder(tmp_path, unet, scheduler: dict, safe: bool = True, sub: bool = False):
    root = tmp_path / "model"
    unet_dir = root / "unet" if sub else root
    unet.save_pretrained(unet_dir, safe_serialization=safe)
    sched_dir = root / "scheduler" if sub else root
    sched_dir.mkdir(parents=True, exist_ok=True)
    (sched_dir / "scheduler_config.json").write_text(json.dumps(scheduler))
    return root


@pytest.mark.parametrize("safe, sub", [(True, False), (False, True)])
def test_ddpm_folder_is_the_eps_denoiser(tmp_path, safe, sub):
    torch.manual_seed(0)
    unet = UNet2DModel(**SMALL).eval()
    sched = {"_class_name": "DDPMScheduler", "beta_start": 2e-4, "beta_end": 0.03, "num_train_timesteps": 500}
    model = load_model(save_folder(tmp_path, unet, sched, safe, sub), device="cpu", precision="fp32")
    assert isinstance(model.schedule, DiscreteVPSchedule) and model.schedule.num_steps == 500
    assert model.resolution == 16
    t = 321
    sigma = model.schedule.sigmas[t].item()
    x = torch.randn(2, 3, 16, 16) * (1 + sigma)
    with torch.no_grad():
        got = model.denoise(x, torch.full((2,), sigma))
        alpha_bar = 1 / (1 + sigma**2)
        want = x - sigma * unet(x * alpha_bar**0.5, torch.full((2,), t)).sample
    assert (got - want).abs().max().item() < 1e-4 * (1 + sigma)


def test_ncsnpp_folder_is_the_score_denoiser(tmp_path):
    torch.manual_seed(0)
    cfg = dict(SMALL, time_embedding_type="fourier", flip_sin_to_cos=True, center_input_sample=True,
               down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
               up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"))
    unet = UNet2DModel(**cfg).eval()
    sched = {"_class_name": "ScoreSdeVeScheduler", "sigma_min": 0.01, "sigma_max": 348.0}
    model = load_model(save_folder(tmp_path, unet, sched), device="cpu", precision="fp32")
    assert isinstance(model.schedule, VESchedule)
    # Contract units: data in [-1, 1], so sigma(t) is twice the network's [0, 1]-data sigma.
    assert model.sigma(1.0) == pytest.approx(2 * 348.0) and model.sigma(0.0) == pytest.approx(0.02)
    x = torch.rand(1, 3, 16, 16) * 2 - 1 + 0.6 * torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        got = model.denoise(x, torch.tensor([0.6]))
        x01, s01 = (x + 1) / 2, 0.3
        score = unet(x01, torch.tensor([s01])).sample  # diffusers divides by sigma: this is the score
        want = 2 * (x01 + s01**2 * score) - 1
    assert torch.allclose(got, want, atol=1e-5)


def test_folder_with_missing_weights_is_a_clear_error(tmp_path):
    unet = UNet2DModel(**SMALL)
    root = save_folder(tmp_path, unet, {})
    (root / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(InputError, match="no diffusion_pytorch_model"):
        load_model(root)


@pytest.mark.parametrize("name", ["church", "ffhq-ve", "google/ddpm-ema-bedroom-256"])
def test_missing_model_offline_is_one_line_naming_it(name):
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as e:
        load_model(name)
    msg = str(e.value)
    assert "\n" not in msg and name in msg and "sdedit download" in msg
    assert time.perf_counter() - start < 5


def test_presets_record_source_schedule_and_scale():
    assert {"church", "bedroom", "celebahq", "church-ve", "celebahq-ve", "ffhq-ve", "ffhq1024-ve"} <= set(PRESETS)
    for p in PRESETS.values():
        assert p.repo_id.startswith("google/")
        assert (p.family == "vp") == (p.arch is not None) == (p.data_range == "[-1,1]")
        assert (p.family == "ve") == (p.sigma_max is not None)


def test_unknown_model_is_input_error():
    with pytest.raises(InputError, match="no such model"):
        load_model("./nope/not-here.ckpt")
