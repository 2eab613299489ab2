"""Tiny random-weight diffusers pipelines saved to a folder, built offline (no hub), for tests."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

VOCAB = "solve the maze walk from green start to red goal a".split()


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in VOCAB:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_wan_transformer(**overrides):
    from diffusers import WanTransformer3DModel

    config = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )
    return WanTransformer3DModel(**{**config, **overrides}).eval()


def tiny_cogvideox_transformer(max_text_seq_length: int = 16):
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=16,
        num_layers=2,
        sample_width=4,
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=max_text_seq_length,
    ).eval()


def tiny_ltx_transformer(channels: int = 8):
    from diffusers import LTXVideoTransformer3DModel

    return LTXVideoTransformer3DModel(
        in_channels=channels,
        out_channels=channels,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=2,
        caption_channels=16,
    ).eval()


def tiny_hunyuan_transformer():
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_single_layers=2,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        text_embed_dim=16,
        pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4),
    ).eval()


def _tiny_clip():
    """Wan 2.1 I2V's image encoder and processor in miniature (32 px, 16 patches + class token)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=16,
    )).eval()  # fmt: skip
    return encoder, CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def build_tiny_wan(folder: Path, image_to_video: bool = False, two_experts: bool = False, unipc: bool = False,
                   image_encoder: bool = False) -> Path:  # fmt: skip
    """A tiny Wan 2.1 pipeline, or Wan 2.2 (high- and low-noise experts) with ``two_experts``;
    ``unipc``: the multistep scheduler released Wan pipelines ship (flow sigmas, shift 3); ``image_encoder``
    (image-to-video): Wan 2.1 I2V's CLIP image tokens, attended to by every block's cross-attention."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=16, num_layers=1, num_heads=2, d_ff=32, d_kv=8)
    ).eval()
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).eval()
    clip = dict(image_dim=16, added_kv_proj_dim=16) if image_encoder else {}
    transformer = tiny_wan_transformer(in_channels=12 if image_to_video else 4, **clip)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    if unipc:
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    if image_to_video:
        pipe = WanImageToVideoPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            scheduler=scheduler,
            transformer=transformer,
            **dict(zip(("image_encoder", "image_processor"), _tiny_clip() if image_encoder else (None, None))),
        )
    if image_to_video and two_experts:
        torch.manual_seed(1)
        pipe = WanImageToVideoPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer,
            transformer_2=tiny_wan_transformer(in_channels=12), boundary_ratio=0.875, image_processor=None,
            image_encoder=None,
        )  # fmt: skip
    elif not image_to_video:
        experts = {}
        if two_experts:
            torch.manual_seed(1)
            experts = {"transformer_2": tiny_wan_transformer(in_channels=4), "boundary_ratio": 0.875}
        pipe = WanPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            transformer=transformer,
            vae=vae,
            scheduler=scheduler,
            **experts,
        )
    pipe.save_pretrained(folder)
    return folder


def write_samples(folder: Path, n: int = 2, size: int = 32) -> Path:
    """VBVR-style sample folders: prompt.txt and first_frame.png."""
    rng = np.random.default_rng(0)
    for i in range(n):
        sample = folder / f"sample_{i:03d}"
        sample.mkdir(parents=True)
        (sample / "prompt.txt").write_text("solve the maze" if i % 2 == 0 else "walk from green start to red goal")
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(sample / "first_frame.png")
    return folder


def _t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=16, num_layers=1, num_heads=2, d_ff=32, d_kv=8)
    ).eval()


def build_tiny_cogvideox(folder: Path) -> Path:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    vae = AutoencoderKLCogVideoX(
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
    transformer = tiny_cogvideox_transformer()
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing")
    CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=_t5(tokenizer), vae=vae, transformer=transformer, scheduler=scheduler
    ).save_pretrained(folder)
    return folder


def build_tiny_ltx(folder: Path) -> Path:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
    )

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
    transformer = tiny_ltx_transformer()
    LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        vae=vae,
        text_encoder=_t5(tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    ).save_pretrained(folder)
    return folder


def build_tiny_hunyuan(folder: Path) -> Path:
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    tokenizer, tokenizer_2 = _tokenizer(), _tokenizer()
    llama = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).eval()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2),
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=8,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        )
    ).eval()
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
    ).eval()
    transformer = tiny_hunyuan_transformer()
    HunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=clip,
        tokenizer_2=tokenizer_2,
    ).save_pretrained(folder)
    return folder


BUILDERS = {
    "wan": build_tiny_wan,
    "cogvideox": build_tiny_cogvideox,
    "ltx": build_tiny_ltx,
    "hunyuanvideo": build_tiny_hunyuan,
}


def save_tiny_testbed(folder: Path, config: dict, num_steps: int | None = None) -> Path:
    """A random testbed transformer (torch seed 0) saved as a weights folder, with its sampling.json."""
    import json

    from interp.models import testbed

    torch.manual_seed(0)
    testbed.build_transformer(config).eval().save_pretrained(folder, safe_serialization=True)
    if num_steps is not None:
        (Path(folder) / "sampling.json").write_text(json.dumps({"num_steps": num_steps}))
    return Path(folder)


def family_inputs(family: str, folder: Path, size: int = 32, frames: int = 9):
    """(adapter, latent shape, noise, conditioning) of one video on a tiny pipeline of ``family`` saved to
    ``folder``, in float32 (a 16-token prompt, seed 0)."""
    import torch

    from interp.models.base import PipelineSpec
    from interp.models.loading import load_pipeline_adapter

    adapter = load_pipeline_adapter(BUILDERS[family](folder), PipelineSpec(height=size, width=size,
                                                                           num_frames=frames), "float32")  # fmt: skip
    shape = adapter.pipeline_latent_shape(size, size, frames)
    noise = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = adapter.pipeline_conditioning(["solve the maze"], [None], noise, "", size, size, frames, 16)
    return adapter, shape, noise, cond
