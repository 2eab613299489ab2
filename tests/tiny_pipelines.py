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


def build_tiny_wan(folder: Path, image_to_video: bool = False) -> Path:
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
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
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=12 if image_to_video else 4,
        out_channels=4,
        text_dim=16,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    if image_to_video:
        pipe = WanImageToVideoPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            scheduler=scheduler,
            transformer=transformer,
            image_processor=None,
            image_encoder=None,
        )
    else:
        pipe = WanPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler
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
