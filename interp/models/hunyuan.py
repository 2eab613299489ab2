"""HunyuanVideo adapter.

Mirrors diffusers' ``HunyuanVideoPipeline`` step: one call with embedded guidance (the guidance
scale enters the model as a conditioning input), optionally a second, unconditional call for true
classifier-free guidance. Sites ``blocks.K`` run over both block lists in depth order: the
dual-stream ``transformer_blocks`` first, then the single-stream ``single_transformer_blocks``;
either kind's output site holds its video tokens. Sub-module sites exist on dual-stream blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from activations.axes import parse_site
from interp.models.base import (
    ForwardCall,
    PipelineSpec,
    VideoDiTAdapter,
    check_video_size,
    input_dtype,
    video_to_uint8,
)
from interp.models.registry import register


@dataclass
class HunyuanConditioning:
    prompt_embeds: torch.Tensor
    prompt_attention_mask: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None  # with true_cfg_scale > 1: true guidance
    negative_prompt_attention_mask: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.prompt_embeds.shape[0]


@register("HunyuanVideoPipeline")
class HunyuanVideoAdapter(VideoDiTAdapter):
    name = "hunyuanvideo"
    blocks_attr = "transformer_blocks"
    attention_text = "after"  # the self-attention runs on the joint stream
    sub_modules = {"attn1": "attn", "ffn": "ff"}

    def __init__(
        self,
        transformer: torch.nn.Module,
        scheduler,
        guidance_scale: float = 6.0,
        true_cfg_scale: float = 1.0,
        vae=None,
        pipeline=None,
    ):
        self.transformer = transformer
        self.scheduler_class = type(scheduler)
        self.scheduler_config = scheduler.config
        self.guidance_scale = guidance_scale
        self.true_cfg_scale = true_cfg_scale
        self.vae = vae
        self.pipeline = pipeline

    @classmethod
    def from_pipeline(cls, pipe, spec: PipelineSpec | None = None) -> HunyuanVideoAdapter:
        scale = 6.0 if spec is None or spec.guidance_scale is None else spec.guidance_scale
        true_cfg = 1.0 if spec is None or spec.true_cfg_scale is None else spec.true_cfg_scale
        return cls(pipe.transformer, pipe.scheduler, scale, true_cfg, pipe.vae, pipe)

    def make_scheduler(self, shift: float | None = None):
        return self.scheduler_class.from_config(self.scheduler_config)

    def set_timesteps(self, scheduler, num_steps: int, device=None) -> None:
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1], device=device)

    def num_blocks(self, expert: str | None = None) -> int:
        return len(self.transformer.transformer_blocks) + len(self.transformer.single_transformer_blocks)

    def block_path(self, index: int, expert: str | None = None) -> str:
        n_dual = len(self.transformer.transformer_blocks)
        if index < n_dual:
            return f"transformer_blocks.{index}"
        return f"single_transformer_blocks.{index - n_dual}"

    def text_rows(self, site: str) -> str | None:
        """The single-stream blocks run on ``[video; text]``; their sub-modules' outputs (where a
        diffusers version returns them joined) carry the text rows after the video rows."""
        _, index, sub = parse_site(site)
        return "after" if sub is not None and index >= len(self.transformer.transformer_blocks) else None

    def token_grid(self, latent_shape: tuple[int, ...], expert: str | None = None) -> tuple[int, int, int]:
        cfg = self.transformer.config
        _, t, h, w = latent_shape[-4:]
        return (t // cfg.patch_size_t, h // cfg.patch_size, w // cfg.patch_size)

    def forward_calls(self, latents: torch.Tensor, timestep: torch.Tensor, cond: HunyuanConditioning):
        dtype = input_dtype(self.transformer)
        batch = latents.shape[0]
        guidance = torch.tensor([self.guidance_scale] * batch, dtype=dtype, device=latents.device) * 1000.0
        common = {
            "hidden_states": latents.to(dtype),
            "timestep": timestep.expand(batch).to(latents.dtype),
            "guidance": guidance,
            "return_dict": False,
        }
        cond_kwargs = {
            **common,
            "encoder_hidden_states": cond.prompt_embeds,
            "encoder_attention_mask": cond.prompt_attention_mask,
            "pooled_projections": cond.pooled_prompt_embeds,
        }
        calls = [ForwardCall(self.transformer, (), cond_kwargs)]
        if self.true_cfg_scale > 1 and cond.negative_prompt_embeds is not None:
            uncond_kwargs = {
                **common,
                "encoder_hidden_states": cond.negative_prompt_embeds,
                "encoder_attention_mask": cond.negative_prompt_attention_mask,
                "pooled_projections": cond.negative_pooled_prompt_embeds,
            }
            calls.append(ForwardCall(self.transformer, (), uncond_kwargs, branches={"uncond": slice(None)}))
        return calls

    def combine(self, calls: list[ForwardCall], outputs: list[torch.Tensor]) -> torch.Tensor:
        if len(outputs) == 1:
            return outputs[0]
        return outputs[1] + self.true_cfg_scale * (outputs[0] - outputs[1])

    # -- through the pipeline ---------------------------------------------------------------------
    def pipeline_latent_shape(self, height: int, width: int, num_frames: int) -> tuple[int, ...]:
        pipe = self.pipeline
        t_scale, s_scale = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        frames = check_video_size(num_frames, height, width, t_scale, s_scale * self.transformer.config.patch_size)
        return (self.transformer.config.in_channels, frames, height // s_scale, width // s_scale)

    def pipeline_conditioning(
        self, prompts, images, noise, negative_prompt, height, width, num_frames, max_sequence_length
    ) -> HunyuanConditioning:
        pipe = self.pipeline
        pe, pooled, mask = pipe.encode_prompt(
            prompts, None, max_sequence_length=max_sequence_length, device=noise.device
        )
        cond = HunyuanConditioning(pe, mask, pooled)
        if self.true_cfg_scale > 1 and negative_prompt is not None:
            ne, npooled, nmask = pipe.encode_prompt(
                [negative_prompt] * len(prompts), None, max_sequence_length=max_sequence_length, device=noise.device
            )
            cond.negative_prompt_embeds, cond.negative_prompt_attention_mask = ne, nmask
            cond.negative_pooled_prompt_embeds = npooled
        return cond

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents to RGB videos (B, T, H, W, 3) uint8 with the pipeline's VAE."""
        if self.vae is None:
            raise ValueError("decoding needs the pipeline's VAE")
        video = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        return video_to_uint8(video)

    def normalise_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled by the VAE's scaling factor, as the pipeline's decode undoes."""
        return z * self.vae.config.scaling_factor
