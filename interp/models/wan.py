"""Wan 2.1 (text- and image-to-video) and Wan 2.2 (two experts) adapter.

Mirrors diffusers' ``WanPipeline`` / ``WanImageToVideoPipeline`` step: the conditional call, then
the unconditional one (classifier-free guidance), on ``transformer`` for timesteps at or above
``boundary_ratio * 1000`` (Wan 2.2's high-noise expert, sites ``high.blocks.K``) and on
``transformer_2`` below it (low-noise expert, ``low.blocks.K``). Wan 2.1 has one transformer and
sites ``blocks.K``. Image-to-video concatenates the mask and the encoded first frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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
class WanConditioning:
    prompt_embeds: torch.Tensor  # (B, L, text_dim)
    negative_prompt_embeds: torch.Tensor | None = None  # None: no guidance
    condition: torch.Tensor | None = None  # I2V: (B, 4 + C, T, H, W) mask and first-frame latent
    image_embeds: torch.Tensor | None = None  # Wan 2.1 I2V CLIP image embedding

    @property
    def batch_size(self) -> int:
        return self.prompt_embeds.shape[0]


@register("WanPipeline", "WanImageToVideoPipeline")
class WanAdapter(VideoDiTAdapter):
    name = "wan"
    blocks_attr = "blocks"

    def __init__(
        self,
        transformer: torch.nn.Module,
        transformer_2: torch.nn.Module | None = None,
        boundary_ratio: float | None = None,
        guidance_scale: float = 5.0,
        guidance_scale_2: float | None = None,
        vae: torch.nn.Module | None = None,
        pipeline=None,
        scheduler=None,
    ):
        if (transformer_2 is None) != (boundary_ratio is None):
            raise ValueError("Wan 2.2 needs both transformer_2 and boundary_ratio; Wan 2.1 neither")
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.boundary_timestep = None if boundary_ratio is None else boundary_ratio * 1000
        self.guidance_scale = guidance_scale
        self.guidance_scale_2 = guidance_scale if guidance_scale_2 is None else guidance_scale_2
        self.vae = vae
        self.pipeline = pipeline
        self.scheduler = scheduler  # the pipeline's (UniPC with flow sigmas for released Wan models)
        self.name = "wan2.2" if transformer_2 is not None else "wan2.1"

    @classmethod
    def from_pipeline(cls, pipe, spec: PipelineSpec | None = None) -> WanAdapter:
        scale = 5.0 if spec is None or spec.guidance_scale is None else spec.guidance_scale
        boundary = getattr(pipe.config, "boundary_ratio", None)
        transformer_2 = getattr(pipe, "transformer_2", None) if boundary is not None else None
        if getattr(pipe.config, "expand_timesteps", False):
            raise ValueError("Wan 2.2 TI2V (expand_timesteps) is not supported by this adapter yet")
        return cls(pipe.transformer, transformer_2, boundary, scale, None, pipe.vae, pipe, pipe.scheduler)

    def make_scheduler(self, shift: float | None = None):
        """A fresh copy of the pipeline's scheduler; without one, flow-matching Euler with ``shift``."""
        if self.scheduler is not None and shift is None:
            return type(self.scheduler).from_config(self.scheduler.config)
        return super().make_scheduler(shift)

    # -- the model ------------------------------------------------------------------------------
    def transformers(self) -> dict[str | None, torch.nn.Module]:
        if self.transformer_2 is None:
            return {None: self.transformer}
        return {"high": self.transformer, "low": self.transformer_2}

    def expert_at(self, timestep: torch.Tensor) -> str | None:
        if self.transformer_2 is None:
            return None
        return "high" if float(timestep) >= self.boundary_timestep else "low"

    def token_grid(self, latent_shape: tuple[int, ...], expert: str | None = None) -> tuple[int, int, int]:
        p_t, p_h, p_w = self.transformers()[expert].config.patch_size
        _, t, h, w = latent_shape[-4:]
        return (t // p_t, h // p_h, w // p_w)

    def condition_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """Image-to-video models take a (mask + first-frame latent) beside the noisy latent."""
        cfg = self.transformer.config
        extra = int(cfg.in_channels) - int(cfg.out_channels)
        return (extra, *latent_shape[1:]) if extra > 0 else None

    def condition_latent(self, conditioning: WanConditioning) -> torch.Tensor | None:
        return conditioning.condition

    def forward_calls(self, latents: torch.Tensor, timestep: torch.Tensor, conditioning: WanConditioning):
        expert = self.expert_at(timestep)
        model = self.transformers()[expert]
        dtype = input_dtype(model)
        model_input = latents if conditioning.condition is None else torch.cat([latents, conditioning.condition], 1)
        common = {
            "hidden_states": model_input.to(dtype),
            "timestep": timestep.expand(latents.shape[0]),
            "encoder_hidden_states_image": conditioning.image_embeds,
            "return_dict": False,
        }
        calls = [ForwardCall(model, (), {**common, "encoder_hidden_states": conditioning.prompt_embeds}, expert)]
        if conditioning.negative_prompt_embeds is not None:
            uncond = {**common, "encoder_hidden_states": conditioning.negative_prompt_embeds}
            calls.append(ForwardCall(model, (), uncond, expert, branches={"uncond": slice(None)}))
        return calls

    def combine(self, calls: list[ForwardCall], outputs: list[torch.Tensor]) -> torch.Tensor:
        cond = outputs[0].float()
        if len(outputs) == 1:
            return cond
        scale = self.guidance_scale if calls[0].expert in (None, "high") else self.guidance_scale_2
        uncond = outputs[1].float()
        return uncond + scale * (cond - uncond)

    # -- inputs and outputs through the pipeline --------------------------------------------------
    def encode(self, prompts: list[str], negative_prompt: str | None = "", max_sequence_length: int = 226):
        """Prompt embeddings with the pipeline's text encoder (guidance off when negative_prompt is None)."""
        if self.pipeline is None:
            raise ValueError("encoding prompts needs the adapter built from a pipeline (WanAdapter.from_pipeline)")
        guided = negative_prompt is not None
        pos, neg = self.pipeline.encode_prompt(
            prompts,
            negative_prompt=[negative_prompt] * len(prompts) if guided else None,
            do_classifier_free_guidance=guided,
            max_sequence_length=max_sequence_length,
            device=next(self.transformer.parameters()).device,
        )
        return WanConditioning(pos, neg if guided else None)

    def pipeline_latent_shape(self, height: int, width: int, num_frames: int) -> tuple[int, ...]:
        pipe = self.pipeline
        t_scale, s_scale = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        p_h = self.transformer.config.patch_size[1]
        frames = check_video_size(num_frames, height, width, t_scale, s_scale * p_h)
        return (pipe.vae.config.z_dim, frames, height // s_scale, width // s_scale)

    def pipeline_conditioning(
        self,
        prompts: list[str],
        images: list,
        noise: torch.Tensor,
        negative_prompt: str | None,
        height: int,
        width: int,
        num_frames: int,
        max_sequence_length: int,
    ) -> WanConditioning:
        """Text (and, for image-to-video, first-frame) conditioning through the pipeline's encoders."""
        pipe = self.pipeline
        cond = self.encode(prompts, negative_prompt, max_sequence_length)
        if type(pipe).__name__ == "WanImageToVideoPipeline":
            if any(image is None for image in images):
                raise ValueError("image-to-video needs a first_frame.png in every sample")
            if getattr(pipe, "image_encoder", None) is not None:
                cond.image_embeds = pipe.encode_image(images, noise.device)
            processed = pipe.video_processor.preprocess(images, height=height, width=width).to(noise.device)
            _, cond.condition = pipe.prepare_latents(
                processed,
                noise.shape[0],
                noise.shape[1],
                height,
                width,
                num_frames,
                torch.float32,
                noise.device,
                None,
                noise.clone(),
            )
        return cond

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents to RGB videos (B, T, H, W, 3) uint8 with the pipeline's VAE (Wan's latent normalisation)."""
        if self.vae is None:
            raise ValueError("decoding needs the pipeline's VAE")
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(latents)
        std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(latents)
        video = self.vae.decode((latents * std + mean).to(self.vae.dtype), return_dict=False)[0]
        return video_to_uint8(video)
