"""Widening a trained UNet (`sdedit train --init-from RUN --widths k x RUN's`): the wide network computes the same
function, its copies are not symmetric, and a widened run trains, resumes and is used by `sdedit edit`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import UNet2DModel

from sdedit import load_model
from sdedit.frontends.cli import main
from sdedit.research.training import TrainConfig, initial_weights
from sdedit.research.widening import widen_weights, widened_config, widening_factor

# Two levels with attention at 8x8 and the mid block's attention: every kind of layer the trainer builds.
SOURCE = TrainConfig(size=16, widths=(16, 24), attn_res=(8,), layers_per_block=2, norm_groups=8)


def source_network(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    net = UNet2DModel(**SOURCE.unet_config()).eval()
    with torch.no_grad():  # non-zero everywhere (diffusers zero-inits some layers), so every path counts
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def widened(net: UNet2DModel, k: int) -> UNet2DModel:
    config = widened_config(dict(net.config), k)
    wide = UNet2DModel(**{key: v for key, v in config.items() if not key.startswith("_")}).eval()
    shapes = {name: tuple(v.shape) for name, v in wide.state_dict().items()}
    wide.load_state_dict(widen_weights(net.state_dict(), shapes, k, seed=1))
    return wide


@pytest.mark.parametrize("k", [2, 3])
def test_widened_network_computes_the_same_function(k):
    net = source_network()
    wide = widened(net, k)
    assert sum(p.numel() for p in wide.parameters()) > 2.5 * sum(p.numel() for p in net.parameters())
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 17, 400, 999])
    with torch.no_grad():
        want, got = net(x, t).sample, wide(x, t).sample
    assert want.abs().mean() > 0.1
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_without_the_embedding_and_attention_corrections_it_would_not_be_the_same():
    """The two non-obvious rules matter: the timestep frequencies and the queries' 1/sqrt(k)."""
    net, k = source_network(), 2
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([5, 700])
    with torch.no_grad():
        want = net(x, t).sample
        for broken in ("freq_shift", "to_q"):
            wide = widened(net, k)
            if broken == "freq_shift":
                config = {**dict(wide.config), "freq_shift": net.config.freq_shift}
                other = UNet2DModel(**{key: v for key, v in config.items() if not key.startswith("_")}).eval()
                other.load_state_dict(wide.state_dict())
                wide = other
            else:
                for name, p in wide.named_parameters():
                    if "to_q" in name:
                        p.mul_(k**0.5)
            assert (wide(x, t).sample - want).abs().max() > 1e-3, broken


def test_copies_share_each_output_but_split_their_inputs_unevenly():
    net, k = source_network(), 2
    wide = widened(net, k)
    old = net.state_dict()["down_blocks.0.resnets.1.conv1.weight"]
    new = wide.state_dict()["down_blocks.0.resnets.1.conv1.weight"]
    # Both copies of an output channel read the same source row; their input columns add up to the source's.
    torch.testing.assert_close(new.unflatten(1, (-1, k)).sum(2)[0::2], old)
    torch.testing.assert_close(new.unflatten(1, (-1, k)).sum(2)[1::2], old)
    # ... by fractions that differ between the copies, so training can tell them apart.
    assert not torch.allclose(new[:, 0::2], new[:, 1::2])
    assert not torch.allclose(new[0::2], new[1::2])


def test_widening_factor_is_a_whole_multiple_of_every_level():
    source = {"block_out_channels": [32, 64, 64, 64]}
    assert widening_factor(source, [64, 128, 128, 128]) == 2
    assert widening_factor(source, [96, 192, 192, 192]) == 3
    for widths in ([32, 64, 64, 64], [64, 128, 128, 64], [48, 96, 96, 96], [64, 128, 128], [16, 32, 32, 32]):
        assert widening_factor(source, widths) is None, widths


def test_a_widened_run_trains_resumes_and_edits(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "imgs"
    data.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(6):
        pixels = (torch.rand(16, 16, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(data / f"{i}.png")
    common = ["--data", str(data), "--size", "16", "--attn-res", "8", "--layers-per-block", "1", "--batch-size",
              "2", "-q"]
    base, wide = tmp_path / "base", tmp_path / "wide"
    assert main(["train", "-o", str(base), *common, "--widths", "16,16", "--max-steps", "2"]) == 0
    cfg, weights = initial_weights(TrainConfig(data=str(data), size=16, widths=(32, 32), attn_res=(8,),
                                               layers_per_block=1, init_from=str(base)))
    assert (cfg.freq_shift, cfg.time_embedding_dim) == (2, 64)
    source = UNet2DModel.from_pretrained(str(base)).eval()
    net = UNet2DModel(**cfg.unet_config()).eval()
    net.load_state_dict(weights)
    x, t = torch.randn(2, 3, 16, 16, generator=gen), torch.tensor([3, 900])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t).sample, source(x, t).sample, atol=2e-5, rtol=1e-4)

    assert main(["train", "-o", str(wide), *common, "--widths", "32,32", "--max-steps", "1", "--init-from",
                 str(base)]) == 0
    assert main(["train", "-o", str(wide), *common, "--widths", "32,32", "--max-steps", "2", "--init-from",
                 str(base), "--resume"]) == 0
    config = json.loads((wide / "config.json").read_text())
    assert (config["block_out_channels"], config["freq_shift"], config["time_embedding_dim"]) == ([32, 32], 2, 64)
    assert config["_sdedit"]["trained_steps"] == 2
    model = load_model(str(wide), device="cpu")  # the lean network takes the widened embedding
    assert type(model.denoiser_net.unet).__name__ == "DDPMUNet"
    out = tmp_path / "out"
    image = next(data.iterdir())
    assert main(["edit", str(image), "--model", str(wide), "--steps", "2", "--seed", "0", "-o", str(out), "-q"]) == 0
    assert len(list(out.glob("*.png"))) == 1
    capsys.readouterr()
    # Not one whole multiple for every level: one line, exit 2, nothing made.
    assert main(["train", "-o", str(tmp_path / "bad"), *common, "--widths", "32,48", "--max-steps", "1",
                 "--init-from", str(base)]) == 2
    assert "differs" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # A source whose config is not a network: one line, exit 2, nothing made, no traceback.
    for i, change in enumerate([{"block_out_channels": ["a", 16]}, {"block_out_channels": [0, 0]},
                                {"freq_shift": "x"}, {"freq_shift": True}, {"time_embedding_dim": -3}]):
        source = tmp_path / f"source{i}"
        shutil.copytree(base, source)
        config = json.loads((source / "config.json").read_text())
        (source / "config.json").write_text(json.dumps({**config, **change}))
        assert main(["train", "-o", str(tmp_path / "bad"), *common, "--widths", "32,32", "--max-steps", "1",
                     "--init-from", str(source)]) == 2, change
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--init-from" in err and not (tmp_path / "bad").exists(), (change, err)
