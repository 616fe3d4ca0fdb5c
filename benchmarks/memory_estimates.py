"""Full-size families' networks, built on the meta device from their published configs: exact parameter counts per
network, the largest single layer, and the GPU memory each --offload mode needs for weights (an estimate: no GPU ran).

Configs are those of the Hub repos' config.json files (architecture fields only; defaults elsewhere), cross-checked
against the model cards' headline counts:
  SD 1.5   stable-diffusion-v1-5/stable-diffusion-v1-5: unet/, vae/, text_encoder/ (CLIP ViT-L/14); card "860M UNet,
           123M text encoder"
  SD 2.1   stabilityai/stable-diffusion-2-1: unet/ (linear projections, heads 5/10/20/20, context 1024), text_encoder/
           (OpenCLIP ViT-H text tower, 23 layers as diffusers stores it)
  SDXL     stabilityai/stable-diffusion-xl-base-1.0: unet/ (transformer depth 1/2/10, context 2048), text_encoder/
           (CLIP-L), text_encoder_2/ (OpenCLIP bigG with projection); paper: "2.6B UNet, 817M text encoders"
  SD3.5    stabilityai/stable-diffusion-3.5-medium and -large: transformer/ (MMDiT-X 24 layers with dual attention
           in 0-12; MMDiT 38 layers), vae/ (16 channels), CLIP-L and CLIP-G with projections, T5 v1.1 XXL encoder;
           cards: "2.5B" (medium) and "8.1B" (large)
  FLUX.1   black-forest-labs/FLUX.1-dev and -schnell: transformer/ (19 double + 38 single blocks, 24 heads of 128,
           guidance embedding in dev only), vae/ (16 channels), CLIP-L, T5 v1.1 XXL encoder; card: "12 billion"
  Qwen-Image  Qwen/Qwen-Image: transformer/ (diffusers' QwenImageTransformer2DModel defaults: 60 layers, 24 heads of
           128, joint dim 3584), vae/ (AutoencoderKLQwenImage defaults, base 96, z 16), text_encoder/ (Qwen2.5-VL-7B:
           28 layers of 3584, 4 KV heads, vocabulary 152064, untied head, 32-block vision tower of 1280); card "20B
           MMDiT"; Qwen2.5-VL-7B's card 8.29B
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Builder = Callable[[], nn.Module]


def clip_l(projection: bool = False) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                         projection_dim=768, vocab_size=49408, max_position_embeddings=77)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def clip_h() -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                        num_hidden_layers=23, projection_dim=512, vocab_size=49408,
                                        max_position_embeddings=77, hidden_act="gelu"))


def clip_g() -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                                                      num_hidden_layers=32, projection_dim=1280, vocab_size=49408,
                                                      max_position_embeddings=77, hidden_act="gelu"))


def t5_xxl() -> nn.Module:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
                                   feed_forward_proj="gated-gelu"))


def vae(latent_channels: int) -> nn.Module:
    from diffusers import AutoencoderKL

    blocks = 4
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                         down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
                         use_quant_conv=latent_channels == 4, use_post_quant_conv=latent_channels == 4)


def unet(kind: str) -> nn.Module:
    from diffusers import UNet2DConditionModel

    if kind == "sd15":
        return UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
    if kind == "sd21":
        return UNet2DConditionModel(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                    use_linear_projection=True)
    return UNet2DConditionModel(  # SDXL base
        block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)


def sd3(size: str) -> nn.Module:
    from diffusers import SD3Transformer2DModel

    if size == "large":
        return SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                                     num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                                     pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
                                     qk_norm="rms_norm")
    return SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                                 num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                 pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                                 dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")


def flux(guidance: bool) -> nn.Module:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                  attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                  pooled_projection_dim=768, guidance_embeds=guidance)


def qwen_image() -> nn.Module:
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel()  # the defaults are the released 20B configuration


def qwen_vae() -> nn.Module:
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage()


def qwen25_vl_7b() -> nn.Module:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision,
                                                               tie_word_embeddings=False))


# family -> (network name -> builder), the main network first; text encoders in the order they run
FAMILIES: dict[str, dict[str, Builder]] = {
    "SD 1.5": {"unet": lambda: unet("sd15"), "vae": lambda: vae(4), "text_encoder": clip_l},
    "SD 2.1": {"unet": lambda: unet("sd21"), "vae": lambda: vae(4), "text_encoder": clip_h},
    "SDXL base": {"unet": lambda: unet("sdxl"), "vae": lambda: vae(4), "text_encoder": clip_l, "text_encoder_2": clip_g},
    "SD3.5 medium": {"transformer": lambda: sd3("medium"), "vae": lambda: vae(16),
                     "text_encoder": lambda: clip_l(True), "text_encoder_2": clip_g, "text_encoder_3": t5_xxl},
    "SD3.5 large": {"transformer": lambda: sd3("large"), "vae": lambda: vae(16),
                    "text_encoder": lambda: clip_l(True), "text_encoder_2": clip_g, "text_encoder_3": t5_xxl},
    "FLUX.1 dev": {"transformer": lambda: flux(True), "vae": lambda: vae(16), "text_encoder": clip_l,
                   "text_encoder_2": t5_xxl},
    "FLUX.1 schnell": {"transformer": lambda: flux(False), "vae": lambda: vae(16), "text_encoder": clip_l,
                       "text_encoder_2": t5_xxl},
    "Qwen-Image": {"transformer": qwen_image, "vae": qwen_vae, "text_encoder": qwen25_vl_7b},
}


def largest_layer(net: nn.Module) -> int:
    """Parameters of the largest module holding weights of its own: what sequential offload streams in at once."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in net.modules())


def count(builder: Builder) -> dict[str, int]:
    """Parameters and largest layer of one network, built on the meta device (no memory, no download)."""
    with torch.device("meta"):
        net = builder()
    return {"parameters": sum(p.numel() for p in net.parameters()), "largest_layer": largest_layer(net)}


# family -> (side in pixels, tokens x width of the main network's widest activations, guidance branches per call):
# UNets at their first stage (latent side^2 positions x 320 channels), transformers over image (side/16)^2 plus
# text tokens (SD3 333 = 77 CLIP + 256 T5; FLUX T5 512 dev / 256 schnell; Qwen-Image at most 1024 prompt tokens, its
# true CFG runs the two branches one after the other) x hidden size (heads x head dim)
SHAPES: dict[str, tuple[int, int, int]] = {
    "SD 1.5": (512, 64 * 64 * 320, 2), "SD 2.1": (768, 96 * 96 * 320, 2), "SDXL base": (1024, 128 * 128 * 320, 2),
    "SD3.5 medium": (1024, (4096 + 333) * 1536, 2), "SD3.5 large": (1024, (4096 + 333) * 2432, 2),
    "FLUX.1 dev": (1024, (4096 + 512) * 3072, 1), "FLUX.1 schnell": (1024, (4096 + 256) * 3072, 1),
    "Qwen-Image": (1024, (4096 + 1024) * 3072, 1),
}


def activations(family: str) -> dict[str, float]:
    """A rough activation allowance in GiB (not measured): the main network at bf16 keeps about 32 tensors of
    tokens x width per branch alive (attention through SDPA, no tokens^2 matrix); the fp32 VAE decoder about three
    256-channel tensors at full resolution in its last stages."""
    side, tokens_width, branches = SHAPES[family]
    return {"main": 32 * tokens_width * 2 * branches / 2**30, "vae": 3 * 256 * side * side * 4 / 2**30}


def estimate(family: str, networks: dict[str, dict[str, int]], weight_bytes: int = 2,
             vae_bytes: int = 4) -> dict[str, Any]:
    """Estimated peak GPU GiB per offload mode, the VAE's weights at fp32 (sdedit runs it so), the rest at
    weight_bytes (bf16/fp16): none = every network + the largest activations; model = the worst of (a network +
    its own activations), one network resident at a time; sequential = the largest layer + the largest activations."""
    def size(name: str, n: int) -> float:
        return n * (vae_bytes if name == "vae" else weight_bytes) / 2**30

    whole = {k: size(k, v["parameters"]) for k, v in networks.items()}
    act = activations(family)
    main = next(iter(networks))
    own = {k: w + (act["main"] if k == main else act["vae"] if k == "vae" else 0.0) for k, w in whole.items()}
    layer = max(size(k, v["largest_layer"]) for k, v in networks.items())
    return {"none": sum(whole.values()) + max(act.values()), "model": max(own.values()),
            "sequential": layer + max(act.values()), "networks_gib": whole, "activations_gib": act,
            "largest_layer_gib": layer}
