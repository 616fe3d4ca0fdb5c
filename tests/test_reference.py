"""The original DDPM network, reproduced: the released checkpoint layout loads strictly and matches its outputs."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file

from sdedit import InputError, load_model
from sdedit.loading.checkpoints import read_state_dict
from sdedit.loading.released_format import map_key

from .conftest import DATA


def test_denoise_matches_original_network(tiny_model):
    expected = torch.load(DATA / "tiny_expected.pt", weights_only=True)
    assert sorted(expected) == [0, 99, 499, 999]
    for step, ref in expected.items():
        sigma = torch.full((ref["x"].shape[0],), ref["sigma"])
        # The schedule puts step t exactly at the reference sigma.
        assert tiny_model.schedule.sigmas[step].item() == pytest.approx(ref["sigma"], rel=1e-12)
        with torch.no_grad():
            d = tiny_model.denoise(ref["x"], sigma)
            eps = (ref["x"] - d) / ref["sigma"]
        # eps to 1e-4; D = x - sigma * eps to 1e-4 relative to sigma (float32 eps times sigma up to 157).
        assert (eps - ref["eps"]).abs().max().item() < 1e-4
        assert (d - ref["denoised"]).abs().max().item() < 1e-4 * max(1.0, ref["sigma"])


def test_the_script_that_made_the_reference_still_makes_it():
    """tests/data/make_tiny_expected.py rebuilds tiny_expected.pt: the same inputs bit for bit, the original network's
    outputs to float32 rounding (bit for bit on the CPU that made it; --check compares exactly)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tiny_expected", DATA / "make_tiny_expected.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    made = script.expected(script.load_network(DATA / "tiny.ckpt", DATA / "tiny.yml"))
    committed = torch.load(DATA / "tiny_expected.pt", weights_only=True)
    assert sorted(made) == sorted(committed)
    for t, ref in committed.items():
        assert made[t]["sigma"] == ref["sigma"] and torch.equal(made[t]["x"], ref["x"])
        assert (made[t]["eps"] - ref["eps"]).abs().max().item() < 1e-5


def test_same_weights_as_safetensors_and_in_wrappers(tmp_path, tiny_model):
    sd = torch.load(DATA / "tiny.ckpt", weights_only=True)
    save_file(dict(sd), str(tmp_path / "tiny.safetensors"))
    torch.save([{"module." + k: v for k, v in sd.items()}, {}, 1, 2, sd], tmp_path / "ddim.pth")
    x = torch.randn(1, 3, 32, 32)
    sigma = torch.tensor([0.7])
    with torch.no_grad():
        ref = tiny_model.denoise(x, sigma)
        for name in ("tiny.safetensors", "ddim.pth"):
            m = load_model(tmp_path / name, config=DATA / "tiny.yml", device="cpu", precision="fp32")
            assert torch.equal(m.denoise(x, sigma), ref)


def test_config_found_beside_checkpoint(tmp_path):
    shutil.copy(DATA / "tiny.ckpt", tmp_path / "net.ckpt")
    with pytest.raises(InputError, match="needs --config"):
        load_model(tmp_path / "net.ckpt")
    shutil.copy(DATA / "tiny.yml", tmp_path / "net.yml")
    assert load_model(tmp_path / "net.ckpt").resolution == 32


@pytest.mark.parametrize("damage, message", [
    ("drop", "missing 1 tensor"),
    ("extra", "unexpected tensor 'down.9.block.0.conv1.weight'"),
    ("shape", "tensor 'conv_in.weight' has shape"),
])
def test_loading_is_strict(tmp_path, damage, message):
    sd = dict(torch.load(DATA / "tiny.ckpt", weights_only=True))
    if damage == "drop":
        del sd["mid.attn_1.q.weight"]
    elif damage == "extra":
        sd["down.9.block.0.conv1.weight"] = torch.zeros(1)
    else:
        sd["conv_in.weight"] = torch.zeros(32, 3, 5, 5)
    torch.save(sd, tmp_path / "bad.ckpt")
    with pytest.raises(InputError, match=message):
        load_model(tmp_path / "bad.ckpt", config=DATA / "tiny.yml")


class Payload:
    """A pickle that runs code when loaded: it would create a file."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("suffix", [".ckpt", ".pth", ".bin"])
def test_pickled_code_is_refused_not_run(tmp_path, suffix):
    sentinel = tmp_path / "pwned"
    bad = tmp_path / f"evil{suffix}"
    with open(bad, "wb") as f:
        pickle.dump({"conv_in.weight": Payload(str(sentinel))}, f)
    torch.save({"w": Payload(str(sentinel))}, tmp_path / f"evil_zip{suffix}")
    for path in (bad, tmp_path / f"evil_zip{suffix}"):
        with pytest.raises(InputError, match="pickled code is refused"):
            read_state_dict(path)
    assert not sentinel.exists()


def test_every_key_of_the_256_layout_maps():
    rows = [ln.split("\t") for ln in (DATA / "ddpm-checkpoint-keys-256.tsv").read_text().splitlines()
            if ln and not ln.startswith("#")]
    assert len(rows) == 450
    from diffusers import UNet2DModel

    from sdedit.loading.presets import PRESETS

    with torch.device("meta"):
        unet = UNet2DModel(**PRESETS["church"].arch.unet_config())
    target = unet.state_dict()
    mapped = {map_key(k, 6): shape for k, shape in rows}
    assert set(mapped) == set(target)
    for key, shape in mapped.items():
        want = tuple(target[key].shape)
        got = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
        assert got[: len(want)] == want, key
    assert round(sum(t.numel() for t in target.values()) / 1e6, 2) == 113.67
