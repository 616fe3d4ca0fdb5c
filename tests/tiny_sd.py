"""A tiny random Stable Diffusion pipeline built offline (UNet, VAE, CLIP text encoder, tokenizer), for tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


def tiny_tokenizer(folder: Path, max_length: int = 16):
    """A CLIP tokenizer with one token per byte (and per byte ending a word) and no merges."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": 2 * len(chars), "<|endoftext|>": 2 * len(chars) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def make_tiny_sd(folder: Path, *, prediction_type: str = "epsilon", seed: int = 0, in_channels: int = 4):
    """Save a tiny StableDiffusionImg2ImgPipeline (random weights, safetensors) in folder; return the pipeline.

    in_channels=9: an inpainting UNet, saved and returned as a StableDiffusionInpaintPipeline.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, \
        StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(folder.parent / f"{folder.name}-tokenizer-src")
    unet = UNet2DConditionModel(sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=8, sample_size=64)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                                num_attention_heads=4, num_hidden_layers=2,
                                                max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    kind = StableDiffusionImg2ImgPipeline if in_channels == 4 else StableDiffusionInpaintPipeline
    pipe = kind(vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return pipe


def make_tiny_sdxl(folder: Path, *, seed: int = 0, hidden_2: int = 32, in_channels: int = 4):
    """Save a tiny StableDiffusionXLImg2ImgPipeline (two text encoders, pooled embeddings, size conditioning).

    hidden_2: the second encoder's width (SDXL's differ; single-file loading tells them apart by it).
    in_channels=9: an inpainting UNet, saved and returned as a StableDiffusionXLInpaintPipeline.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLImg2ImgPipeline, \
        StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(folder.parent / f"{folder.name}-tokenizer-src")

    def text_config(hidden_size=32, **extra):
        return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=37,
                              num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)

    unet = UNet2DConditionModel(sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=32 + hidden_2,
                                norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.13025)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    kind = StableDiffusionXLImg2ImgPipeline if in_channels == 4 else StableDiffusionXLInpaintPipeline
    pipe = kind(vae=vae.eval(), text_encoder=CLIPTextModel(text_config()).eval(),
                text_encoder_2=CLIPTextModelWithProjection(text_config(hidden_2, projection_dim=32)).eval(),
                tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet.eval(), scheduler=scheduler,
                requires_aesthetics_score=False)
    pipe.save_pretrained(folder)
    return pipe


def make_tiny_sd3(folder: Path, *, seed: int = 0):
    """Save a tiny StableDiffusion3Img2ImgPipeline (flow-matching transformer, two CLIP encoders, no T5)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, \
        StableDiffusion3Img2ImgPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(folder.parent / f"{folder.name}-tokenizer-src")

    def clip():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=16, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()

    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32,
                                        pooled_projection_dim=64, out_channels=4, pos_embed_max_size=16)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=8, sample_size=64, shift_factor=0.0609,
                        scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    pipe = StableDiffusion3Img2ImgPipeline(transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(
        shift=3.0), vae=vae.eval(), text_encoder=clip(), tokenizer=tokenizer, text_encoder_2=clip(),
        tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(folder)
    return pipe


def make_tiny_flux(folder: Path, *, seed: int = 0, guidance_embeds: bool = True, fill: bool = False):
    """Save a tiny FluxImg2ImgPipeline (packed latents, CLIP pooled + T5 tokens, resolution-dependent shift).

    fill=True: a FLUX.1 Fill transformer (packed latents + packed masked-image latents + packed 8x8 mask),
    saved and returned as a FluxFillPipeline.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxImg2ImgPipeline, \
        FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(folder.parent / f"{folder.name}-tokenizer-src")
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=16,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id)).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                 num_heads=4, pad_token_id=tokenizer.pad_token_id)).eval()
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16 + (16 + 4 * 64 if fill else 0), out_channels=16,
                                         num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                         guidance_embeds=guidance_embeds).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=8, sample_size=64, shift_factor=0.0609,
                        scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    kind = FluxFillPipeline if fill else FluxImg2ImgPipeline
    pipe = kind(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tokenizer, text_encoder_2=t5,
                tokenizer_2=tokenizer, transformer=transformer)
    pipe.save_pretrained(folder)
    return pipe


def tiny_qwen_tokenizer():
    """A byte-level Qwen2 tokenizer (one token per byte, no merges) with the chat template's special tokens."""
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_byte_chars())}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab.update({s: len(vocab) + i for i, s in enumerate(specials)})
    return Qwen2Tokenizer(vocab=vocab, merges=[], additional_special_tokens=specials[1:])


def make_tiny_qwen_image(folder: Path, *, seed: int = 0):
    """Save a tiny QwenImageImg2ImgPipeline (Qwen2.5-VL text encoder, causal 3-D VAE, packed-latent transformer)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageImg2ImgPipeline, \
        QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = tiny_qwen_tokenizer()
    n = len(tokenizer)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=n, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0], window_size=28, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        image_token_id=n + 1, video_token_id=n + 2, vision_start_token_id=n + 3, vision_end_token_id=n + 4)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    z = 4
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=z, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
                                 latents_std=[1.5, 0.8, 2.0, 1.2]).eval()
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=4 * z, out_channels=z, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                              axes_dims_rope=(4, 6, 6)).eval()
    # Qwen-Image's own scheduler settings (its scheduler_config.json)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                                base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                                                time_shift_type="exponential")
    pipe = QwenImageImg2ImgPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                    transformer=transformer)
    pipe.save_pretrained(folder)
    return pipe


def make_tiny_controlnet(folder: Path, unet, *, seed: int = 1, std: float = 0.05, hint: float = 1.0,
                         union: bool = False):
    """Save a ControlNetModel made from a UNet (ControlNetModel.from_unet) with its zero-initialised output
    convolutions given random weights (std; the control image's embedding `hint`, so that the image matters), so
    that it acts; return it."""
    from diffusers import ControlNetModel, ControlNetUnionModel

    torch.manual_seed(seed)
    net = (ControlNetUnionModel if union else ControlNetModel).from_unet(
        unet, conditioning_embedding_out_channels=(8, 8, 8, 16))
    if union:  # its type transformer sized for the tiny UNet (diffusers' defaults are SDXL's 320 channels)
        width = unet.config.block_out_channels[0]
        cfg = {k: v for k, v in net.config.items() if not k.startswith("_")}
        net = ControlNetUnionModel.from_config({**cfg, "num_trans_channel": width, "num_proj_channel": width,
                                                "num_trans_head": 2})
    with torch.no_grad():
        extra = [net.spatial_ch_projs] if union else []  # the union model's zero-initialised type projection
        randomise([*net.controlnet_down_blocks, net.controlnet_mid_block, *extra], std)
        for conv in net.controlnet_cond_embedding.modules():  # a hint embedding that follows the image's layout
            if isinstance(conv, torch.nn.Conv2d):
                fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
                conv.weight.normal_(0.0, (2.0 / fan_in) ** 0.5 * (hint if conv is net.controlnet_cond_embedding.conv_out
                                                                 else 1.0))
                conv.bias.zero_()
    net.eval().save_pretrained(folder)
    return net


def make_tiny_flux_controlnet(folder: Path, transformer, *, seed: int = 1, std: float = 0.05, hint: float = 0.3,
                              num_mode: int | None = None, pixel_hints: bool = False, **changes):
    """Save a FluxControlNetModel made from a FLUX transformer (FluxControlNetModel.from_transformer; InstantX-style:
    it takes the control image's latents) with one double and one single block, its zero-initialised output layers
    given random weights (std) and its control-latent embedding too (hint), so that it acts; return it.
    num_mode: a union ControlNet with that many control types; pixel_hints: an XLabs-style one (input_hint_block);
    changes: config overrides (fresh weights then)."""
    from diffusers import FluxControlNetModel

    torch.manual_seed(seed)
    tf = transformer.config
    base = FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=1,
                                                attention_head_dim=tf.attention_head_dim,
                                                num_attention_heads=tf.num_attention_heads)
    # the same without the transformer's out_channels (a ControlNet's config has none), with a union's mode
    # embedding or a hint block where asked
    cfg = {k: v for k, v in base.config.items() if not k.startswith("_") and k != "out_channels"}
    cfg.update(num_mode=num_mode, conditioning_embedding_channels=16 if pixel_hints else None, **changes)
    net = FluxControlNetModel.from_config(cfg)
    if not changes:
        net.load_state_dict(base.state_dict(), strict=False)
    randomise([*net.controlnet_blocks, *net.controlnet_single_blocks], std)
    randomise([net.controlnet_x_embedder], hint)
    net.eval().save_pretrained(folder)
    return net


def make_tiny_sd3_controlnet(folder: Path, transformer, *, style: str = "instantx", seed: int = 1, std: float = 0.05,
                             hint: float = 0.3, **changes):
    """Save an SD3ControlNetModel for the tiny SD3 transformer with one block, its zero-initialised output layers
    and control-latent embedding given random weights (std, hint) so that it acts; return it.  style 'instantx':
    its own patch embedding, text and zero pooled embeddings (force_zeros_for_pooled_projection); 'sd35': SD3.5's
    layout (no text, the transformer's patch embedding, the pooled embedding, the VAE's shift)."""
    from diffusers import SD3ControlNetModel

    torch.manual_seed(seed)
    tf = transformer.config
    cfg = {"sample_size": tf.sample_size, "patch_size": tf.patch_size, "in_channels": tf.in_channels, "num_layers": 1,
           "attention_head_dim": tf.attention_head_dim, "num_attention_heads": tf.num_attention_heads,
           "joint_attention_dim": tf.joint_attention_dim, "caption_projection_dim": tf.caption_projection_dim,
           "pooled_projection_dim": tf.pooled_projection_dim, "out_channels": tf.out_channels,
           "pos_embed_max_size": tf.pos_embed_max_size}
    if style == "sd35":
        cfg.update(joint_attention_dim=None, use_pos_embed=False, force_zeros_for_pooled_projection=False)
    net = SD3ControlNetModel(**{**cfg, **changes})
    randomise(net.controlnet_blocks, std)
    randomise([net.pos_embed_input], hint)
    net.eval().save_pretrained(folder)
    return net


def randomise(modules, std: float) -> None:
    """Normal(0, std) weights for a ControlNet's zero-initialised layers, so that it acts."""
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.normal_(0.0, std)


def make_tiny_flux_kontext(folder: Path, *, seed: int = 0):
    """Save a tiny FluxKontextPipeline: make_tiny_flux's components (same seed, same weights) under Kontext's class."""
    import shutil

    from diffusers import FluxKontextPipeline

    pipe = make_tiny_flux(folder, seed=seed)
    shutil.rmtree(folder)  # saved again below, as a FluxKontextPipeline
    kontext = FluxKontextPipeline(**{k: v for k, v in pipe.components.items() if k in ("scheduler", "vae",
                                     "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")})
    kontext.save_pretrained(folder)
    return kontext
