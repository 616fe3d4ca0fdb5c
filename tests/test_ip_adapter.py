"""IP-Adapter (an image as a prompt) on Stable Diffusion 1.x and SDXL: tiny random adapters and CLIP image encoders
built here, diffusers' img2img pipelines with `load_ip_adapter` as reference; scale 0, the reference image's effect,
a ControlNet beside it, and the one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sdedit import edit, load_model
from sdedit.errors import InputError
from sdedit.loading.ip_adapter import IPAdapterSpec, add_ip_adapters
from sdedit.settings import RunSettings

from .helpers import blocks_picture, ddim_on_grid
from .tiny_sd import make_tiny_controlnet, make_tiny_sd, make_tiny_sdxl

EMBED_DIM = 16  # the tiny image encoder's projection width


def make_image_encoder(folder: Path, seed: int = 0, projection_dim: int = EMBED_DIM) -> None:
    """A tiny CLIPVisionModelWithProjection (32 px images), saved with safetensors."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              image_size=32, patch_size=8, projection_dim=projection_dim)
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder, safe_serialization=True)


def make_ip_adapter(folder: Path, unet, *, seed: int = 0, embed_dim: int = EMBED_DIM, std: float = 0.3) -> Path:
    """A random base IP-Adapter for a UNet in the original flat layout (image_proj.*, ip_adapter.N.to_k_ip/to_v_ip
    numbered 1, 3, 5, ... over the UNet's cross-attention layers in its processors' order), with a tiny image encoder
    in image_encoder/ beside it; its path."""
    gen = torch.Generator().manual_seed(seed)
    cross = int(unet.config.cross_attention_dim)
    modules = dict(unet.named_modules())
    cross_layers = [modules[n.removesuffix(".processor")] for n in unet.attn_processors if "attn2" in n]
    state = {"image_proj.proj.weight": torch.randn(4 * cross, embed_dim, generator=gen) * std,
             "image_proj.proj.bias": torch.randn(4 * cross, generator=gen) * std,
             "image_proj.norm.weight": 1.0 + 0.1 * torch.randn(cross, generator=gen),
             "image_proj.norm.bias": 0.1 * torch.randn(cross, generator=gen)}
    for i, attn in enumerate(cross_layers):
        for part in ("to_k_ip", "to_v_ip"):
            shape = attn.to_k.weight.shape  # (hidden, cross): the decoupled keys and values mirror the text ones
            state[f"ip_adapter.{2 * i + 1}.{part}.weight"] = torch.randn(*shape, generator=gen) * std
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "ip.safetensors")
    make_image_encoder(folder / "image_encoder", seed, embed_dim)
    return folder / "ip.safetensors"


def picture(size=(64, 64), seed=0) -> Image.Image:
    return blocks_picture(size, seed)


def reference_images() -> tuple[Image.Image, Image.Image]:
    """Two clearly different reference images (random texture, and a smooth gradient)."""
    rng = np.random.default_rng(7)
    first = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    ramp = np.linspace(0, 255, 40, dtype=np.uint8)
    second = Image.fromarray(np.stack([np.tile(ramp, (48, 1)), np.tile(ramp[::-1], (48, 1)),
                                       np.full((48, 40), 90, np.uint8)], axis=2))
    return first, second


@pytest.fixture(scope="module")
def sd_ip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd-ip")
    pipe = make_tiny_sd(folder / "sd")
    make_tiny_controlnet(folder / "cn", pipe.unet)
    return folder / "sd", make_ip_adapter(folder / "ip", pipe.unet), folder / "cn"


@pytest.fixture(scope="module")
def sdxl_ip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sdxl-ip")
    pipe = make_tiny_sdxl(folder / "sdxl")
    return folder / "sdxl", make_ip_adapter(folder / "ip", pipe.unet, seed=1)


def with_adapter(folder: Path, adapter: Path, image, scale: float = 1.0, **kw):
    model = load_model(folder, device="cpu", precision="fp32", **kw)
    add_ip_adapters(model, [IPAdapterSpec(str(adapter), scale, image)])
    return model


def run(model, img, **kw):
    kw = {"t0": 0.6, "steps": 4, "sampler": "ddim", "seed": 3, "prompt": "a barn", "progress": False, **kw}
    return np.asarray(edit(model, img, **kw)[0]).astype(int)


def diffusers_grid(model, scheduler, n_steps: int, strength: float) -> torch.Tensor:
    """diffusers' img2img step grid as our VE sigmas (its strength snapped to whole steps, ending at t = 0's sigma)."""
    scheduler.set_timesteps(n_steps)
    ts = scheduler.timesteps[n_steps - int(n_steps * strength):].long()
    return torch.cat([model.schedule.sigmas[ts], model.schedule.sigmas[:1]]).float()


def parity(model, ref_pipe, img, ip_img, other_embeds, negative, **pipe_kw) -> tuple[float, float]:
    """Max |ours - diffusers| over [0, 1] images, then the same with the model's reference embeddings replaced by
    another image's (other_embeds)."""
    strength, n_steps, w, prompt = 0.6, 6, 3.0, "a red barn"
    ref = ref_pipe(prompt, image=img, ip_adapter_image=ip_img, strength=strength, num_inference_steps=n_steps,
                   guidance_scale=w, negative_prompt=negative, generator=torch.Generator().manual_seed(0),
                   output_type="np", eta=0.0, **pipe_kw).images[0]
    sigmas = diffusers_grid(model, ref_pipe.scheduler, n_steps, strength)
    settings = RunSettings(prompt=prompt, negative_prompt=negative or "", guidance=w)
    controls = [pipe_kw["control_image"]] if "control_image" in pipe_kw else ()
    diff = float(np.abs(ddim_on_grid(model, img, sigmas, settings, controls) - ref).max())
    model.image_embeds = other_embeds
    apart = float(np.abs(ddim_on_grid(model, img, sigmas, settings, controls) - ref).max())
    return diff, apart


def test_matches_diffusers_img2img_with_ip_adapter_on_its_own_step_grid(sd_ip):
    """Same components, reference image, strength, DDIM, guidance and generator as diffusers' img2img pipeline with
    `load_ip_adapter` and `ip_adapter_image`: the same images; another reference image gives clearly other ones."""
    from diffusers import StableDiffusionImg2ImgPipeline

    sd, adapter, _ = sd_ip
    first, second = reference_images()
    model = with_adapter(sd, adapter, first)
    other = with_adapter(sd, adapter, second).image_embeds
    ref_pipe = StableDiffusionImg2ImgPipeline.from_pretrained(sd)
    ref_pipe.load_ip_adapter(str(adapter.parent), subfolder="", weight_name=adapter.name)
    diff, apart = parity(model, ref_pipe, picture(seed=1), first, other, "")
    print(f"SD IP-Adapter parity: {diff:.2e}; another reference image: {apart:.2e}")
    assert diff < 1e-3 and apart > 50 * max(diff, 1e-6), (diff, apart)
    assert model.info["ip_adapters"] == [f"{adapter}:1"] and model.info["ip_images"] == ["image"]


def test_sdxl_matches_diffusers_with_ip_adapter(sdxl_ip):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    sdxl, adapter = sdxl_ip
    first, second = reference_images()
    model = with_adapter(sdxl, adapter, first)
    other = with_adapter(sdxl, adapter, second).image_embeds
    ref_pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(sdxl)
    ref_pipe.load_ip_adapter(str(adapter.parent), subfolder="", weight_name=adapter.name)
    diff, apart = parity(model, ref_pipe, picture((64, 48), seed=1), first, other, None)
    print(f"SDXL IP-Adapter parity: {diff:.2e}; another reference image: {apart:.2e}")
    assert diff < 1e-3 and apart > 50 * max(diff, 1e-6), (diff, apart)


def test_with_a_controlnet_the_embeddings_reach_the_unet_only(sd_ip):
    """IP-Adapter and ControlNet together give diffusers' ControlNet img2img pipeline's images (which passes the image
    embeddings to the UNet and not to the ControlNet)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

    sd, adapter, cn = sd_ip
    first, second = reference_images()
    model = with_adapter(sd, adapter, first, controlnets=[str(cn)])
    other = with_adapter(sd, adapter, second, controlnets=[str(cn)]).image_embeds
    ref_pipe = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        sd, controlnet=ControlNetModel.from_pretrained(cn), safety_checker=None, requires_safety_checker=False)
    ref_pipe.load_ip_adapter(str(adapter.parent), subfolder="", weight_name=adapter.name)
    diff, apart = parity(model, ref_pipe, picture(seed=1), first, other, "", control_image=picture(seed=2),
                         controlnet_conditioning_scale=1.0)
    print(f"SD IP-Adapter + ControlNet parity: {diff:.2e}; another reference image: {apart:.2e}")
    assert diff < 1e-3 and apart > 50 * max(diff, 1e-6), (diff, apart)


def test_scale_zero_is_no_adapter_and_the_reference_image_matters(sd_ip):
    sd, adapter, _ = sd_ip
    first, second = reference_images()
    img = picture(seed=1)
    plain = run(load_model(sd, device="cpu", precision="fp32"), img)
    zero = with_adapter(sd, adapter, first, 0.0)
    assert zero.image_embeds == [] and zero.info["ip_adapters"] == [f"{adapter}:0"]
    assert np.array_equal(run(zero, img), plain)  # bit for bit: nothing was loaded
    one = run(with_adapter(sd, adapter, first), img)
    assert np.abs(one - plain).max() > 10
    assert np.abs(run(with_adapter(sd, adapter, second), img) - one).max() > 10
    assert np.abs(run(with_adapter(sd, adapter, first, 0.5), img) - one).max() > 3


def test_sdxl_runs_and_the_adapter_acts(sdxl_ip):
    sdxl, adapter = sdxl_ip
    first, _ = reference_images()
    img = picture((64, 48), seed=1)
    plain = run(load_model(sdxl, device="cpu", precision="fp32"), img)
    model = with_adapter(sdxl, adapter, first)
    out = run(model, img)
    assert out.shape == plain.shape and np.abs(out - plain).max() > 10
    assert model.denoise(torch.zeros(1, 4, 6, 8), torch.tensor([1.0])).shape == (1, 4, 6, 8)


def test_refusals_are_one_line(sd_ip, sdxl_ip, tmp_path):
    sd, adapter, _ = sd_ip
    _, xl_adapter = sdxl_ip
    first, _ = reference_images()
    model = load_model(sd, device="cpu", precision="fp32")
    cases = [
        (IPAdapterSpec(str(xl_adapter), 1.0, first), "another model"),  # an SDXL adapter on SD 1.5
        (IPAdapterSpec(str(adapter), 1.0, tmp_path / "missing.png"), "IP-Adapter image"),
        (IPAdapterSpec(str(adapter), 1.0, None), "reference image"),
        (IPAdapterSpec(str(tmp_path / "nope.safetensors"), 1.0, first), "not found"),
        (IPAdapterSpec("sdxl-ip-adapter", 1.0, first), "stable-diffusion-xl"),  # refused before any download
        (IPAdapterSpec("sd15-scribble", 1.0, first), "ControlNet"),
    ]
    pickle = tmp_path / "ip.bin"
    pickle.write_bytes(b"not read")
    cases.append((IPAdapterSpec(str(pickle), 1.0, first), "safetensors files only"))
    plus = tmp_path / "plus" / "ip.safetensors"
    plus.parent.mkdir()
    save_file({"image_proj.latents": torch.zeros(1, 4, 8), "ip_adapter.1.to_k_ip.weight": torch.zeros(2, 2)}, plus)
    cases.append((IPAdapterSpec(str(plus), 1.0, first), "Plus"))
    narrow = make_ip_adapter(tmp_path / "narrow", model.unet)
    make_image_encoder(narrow.parent / "image_encoder", projection_dim=8)  # embeddings the adapter cannot take
    cases.append((IPAdapterSpec(str(narrow), 1.0, first), "width 16; its image encoder"))
    lone = tmp_path / "lone" / "ip.safetensors"
    lone.parent.mkdir()
    lone.write_bytes(adapter.read_bytes())
    cases.append((IPAdapterSpec(str(lone), 1.0, first), "no CLIP image encoder"))
    cases.append((IPAdapterSpec(str(adapter), float("inf"), first), "finite"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    cases.append((IPAdapterSpec(str(adapter), 1.0, broken), "IP-Adapter image"))
    for spec, words in cases:
        with pytest.raises(InputError, match=words) as e:
            add_ip_adapters(model, [spec])
        assert "\n" not in str(e.value)
    assert "ip_adapters" not in model.info and model.unet.config.encoder_hid_dim_type is None  # left as it was
    with pytest.raises(InputError, match="an IP-Adapter for another model") as e:
        add_ip_adapters(model, [IPAdapterSpec(str(xl_adapter), 0.0, first)])  # checked even at scale 0
    assert str(xl_adapter) in str(e.value)
    with pytest.raises(InputError, match="Stable Diffusion 1.x/2.x and SDXL"):
        add_ip_adapters(load_model("landscapes", device="cpu"), [IPAdapterSpec(str(adapter), 1.0, first)])


def test_spec_parses_model_and_scale():
    assert IPAdapterSpec.parse("a/b.safetensors:0.5", "r.png") == IPAdapterSpec("a/b.safetensors", 0.5, "r.png")
    assert IPAdapterSpec.parse("sd15-ip-adapter") == IPAdapterSpec("sd15-ip-adapter")
    assert IPAdapterSpec.parse("C:/x/ip.safetensors").source == "C:/x/ip.safetensors"
    with pytest.raises(InputError, match="finite"):
        IPAdapterSpec.parse("ip.safetensors:nan")


def test_command_line(sd_ip, tmp_path):
    """`sdedit edit --ip-adapter A --ip-image R`: changes the output, records the adapter; A:0 is the plain run bit
    for bit; a missing reference image or a pixel model is one line and exit 2."""
    import json
    import subprocess
    import sys

    sd, adapter = sd_ip[0], sd_ip[1]
    picture(seed=1).save(tmp_path / "in.png")
    reference_images()[0].save(tmp_path / "ref.png")

    def cli(out, *extra):
        return subprocess.run([sys.executable, "-m", "sdedit", "edit", str(tmp_path / "in.png"), "--prompt", "a barn",
                               "--steps", "3", "--seed", "1", "-o", str(tmp_path / out), "-q", *extra],
                              capture_output=True, text=True)

    runs = {name: cli(name, "--model", str(sd), *extra) for name, extra in (
        ("plain", ()), ("ip", ("--ip-adapter", str(adapter), "--ip-image", str(tmp_path / "ref.png"))),
        ("zero", ("--ip-adapter", f"{adapter}:0", "--ip-image", str(tmp_path / "ref.png"))))}
    assert all(r.returncode == 0 for r in runs.values()), [r.stderr for r in runs.values()]
    files = {name: next((tmp_path / name).glob("*.png")) for name in runs}
    pixels = {name: np.asarray(Image.open(f)) for name, f in files.items()}
    assert np.array_equal(pixels["zero"], pixels["plain"]) and not np.array_equal(pixels["ip"], pixels["plain"])
    assert json.loads(Image.open(files["ip"]).info["sdedit"])["ip_images"] == ["ref.png"]
    for extra in (("--model", str(sd), "--ip-adapter", str(adapter)),
                  ("--ip-adapter", str(adapter), "--ip-image", str(tmp_path / "ref.png"))):
        r = cli("bad", *extra)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_an_image_encoder_of_an_absurd_image_size_is_refused(tmp_path):
    """The reference image is resized to the encoder's image_size: a hostile config cannot make it gigabytes."""
    import json

    from sdedit.loading.ip_adapter import encoder_width

    make_image_encoder(tmp_path / "enc")
    config = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert encoder_width(tmp_path / "enc") == config["projection_dim"]
    config["image_size"] = 65536
    (tmp_path / "enc" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="image_size 65536"):
        encoder_width(tmp_path / "enc")
