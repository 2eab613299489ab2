"""Tiny random-weight image-to-video pipelines saved to a folder, built offline (no hub), for tests:
Wan 2.2 TI2V (``expand_timesteps``), CogVideoX image-to-video (1.0, and 1.5 with ``ofs`` and temporal
patches), LTX-Video image-to-video."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tiny_pipelines import _t5, _tokenizer, tiny_ltx_transformer, tiny_wan_transformer


def first_frame(size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def build_tiny_wan_ti2v(folder: Path, image_to_video: bool = True) -> Path:
    """Wan 2.2 TI2V in miniature: the Wan 2.2 VAE layout (residual blocks, 2x2 patchified input,
    16x spatial compression), one transformer, ``expand_timesteps``, UniPC with flow sigmas as shipped."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=16, num_layers=1, num_heads=2, d_ff=32, d_kv=8)
    ).eval()
    vae = AutoencoderKLWan(
        base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=16,
        latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 0.8, 1.0, 1.2],
    ).eval()  # fmt: skip
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    parts = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler)
    transformer = tiny_wan_transformer(in_channels=4)
    if image_to_video:
        pipe = WanImageToVideoPipeline(
            **parts, transformer=transformer, image_processor=None, image_encoder=None, expand_timesteps=True
        )
    else:
        pipe = WanPipeline(**parts, transformer=transformer, expand_timesteps=True)
    pipe.save_pretrained(folder)
    return folder


def _cogvideox_vae():
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    ).eval()


def tiny_cogvideox_i2v_transformer(v15: bool):
    """CogVideoX-5b-I2V (learned positional embeddings and RoPE) or CogVideoX1.5-5B-I2V (temporal
    patches of 2, ``ofs`` embedding, RoPE only) in miniature; 8 input channels: noisy + image latent."""
    from diffusers import CogVideoXTransformer3DModel

    version = (
        dict(patch_size_t=2, ofs_embed_dim=8, use_learned_positional_embeddings=False, patch_bias=False)
        if v15
        else dict(use_learned_positional_embeddings=True)
    )
    return CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,  # RoPE splits it 4 + 6 + 6 over (t, h, w)
        in_channels=8,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=16,
        num_layers=2,
        sample_width=4,
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
        use_rotary_positional_embeddings=True,
        **version,
    ).eval()


def build_tiny_cogvideox_i2v(folder: Path, v15: bool = False) -> Path:
    from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    vae = _cogvideox_vae()
    transformer = tiny_cogvideox_i2v_transformer(v15)
    scheduler = CogVideoXDDIMScheduler(
        prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True
    )
    CogVideoXImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=_t5(tokenizer), vae=vae, transformer=transformer, scheduler=scheduler
    ).save_pretrained(folder)
    return folder


def build_tiny_ltx_i2v(folder: Path) -> Path:
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXImageToVideoPipeline

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    ).eval()
    LTXImageToVideoPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        vae=vae,
        text_encoder=_t5(tokenizer),
        tokenizer=tokenizer,
        transformer=tiny_ltx_transformer(),
    ).save_pretrained(folder)
    return folder
