"""LTX-Video adapter.

Mirrors diffusers' ``LTXPipeline`` step: latents are packed token sequences (batch, tokens,
channels), both guidance halves go in one call (rows [unconditional, conditional]), and the
flow-matching schedule uses sigmas linspace(1, 1/n, n) shifted by ``mu`` from the sequence length.
The latent grid (frames, h, w) is fixed per adapter since packed latents do not carry it.

``LTXImageToVideoPipeline`` (``LTXI2VAdapter``) holds the first latent frame's tokens clean: they are
the image latent, at timestep 0 (``t * (1 - conditioning_mask)`` per token), and never stepped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from interp.models.base import (
    ForwardCall,
    PipelineSpec,
    VideoDiTAdapter,
    batched_guidance_branches,
    check_video_size,
    combine_batched_guidance,
    video_to_uint8,
)
from interp.models.registry import register
from interp.models.wan import CleanTokensCall, hold_clean_output, hold_clean_x0, holding_clean


@dataclass
class LTXConditioning:
    prompt_embeds: torch.Tensor
    prompt_attention_mask: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    negative_prompt_attention_mask: torch.Tensor | None = None
    image_latents: torch.Tensor | None = None  # I2V: (B, tokens of the first latent frame, C), packed

    @property
    def batch_size(self) -> int:
        return self.prompt_embeds.shape[0]


@register("LTXPipeline")
class LTXAdapter(VideoDiTAdapter):
    name = "ltx"
    latent_frame_axis = None  # packed (tokens, C) latents: no frame axis
    latent_channel_axis = 1
    blocks_attr = "transformer_blocks"
    sub_modules = {"attn1": "attn1", "attn2": "attn2", "ffn": "ff"}

    def __init__(
        self,
        transformer: torch.nn.Module,
        scheduler,
        latent_grid: tuple[int, int, int],
        guidance_scale: float = 3.0,
        frame_rate: int = 25,
        temporal_compression: int = 8,
        spatial_compression: int = 32,
        vae=None,
        pipeline=None,
    ):
        self.transformer = transformer
        self.scheduler_class = type(scheduler)
        self.scheduler_config = scheduler.config
        self.latent_grid = tuple(int(v) for v in latent_grid)
        self.guidance_scale = guidance_scale
        self.rope_interpolation_scale = (temporal_compression / frame_rate, spatial_compression, spatial_compression)
        self.vae = vae
        self.pipeline = pipeline

    @classmethod
    def from_pipeline(cls, pipe, spec: PipelineSpec | None = None) -> LTXAdapter:
        spec = (spec or PipelineSpec()).resolved(pipe)
        height, width, num_frames = spec.height, spec.width, spec.num_frames
        guidance_scale = 3.0 if spec.guidance_scale is None else spec.guidance_scale
        t_scale, s_scale = pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio
        # The LTX pipelines refuse sizes not divisible by 32 whatever the VAE's compression (check_inputs).
        frames = check_video_size(num_frames, height, width, t_scale, math.lcm(32, s_scale))
        grid = (frames, height // s_scale, width // s_scale)
        return cls(
            pipe.transformer,
            pipe.scheduler,
            grid,
            guidance_scale,
            temporal_compression=t_scale,
            spatial_compression=s_scale,
            vae=pipe.vae,
            pipeline=pipe,
        )

    def make_scheduler(self, shift: float | None = None):
        return self.scheduler_class.from_config(self.scheduler_config)

    def set_timesteps(self, scheduler, num_steps: int, device=None) -> None:
        cfg = scheduler.config
        seq_len = int(np.prod(self.latent_grid))
        slope = (cfg.get("max_shift", 1.15) - cfg.get("base_shift", 0.5)) / (
            cfg.get("max_image_seq_len", 4096) - cfg.get("base_image_seq_len", 256)
        )
        mu = seq_len * slope + cfg.get("base_shift", 0.5) - slope * cfg.get("base_image_seq_len", 256)
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        scheduler.set_timesteps(sigmas=sigmas, mu=mu, device=device)

    def token_grid(self, latent_shape: tuple[int, ...], expert: str | None = None) -> tuple[int, int, int]:
        p = self.transformer.config.patch_size
        p_t = self.transformer.config.patch_size_t
        f, h, w = self.latent_grid
        return (f // p_t, h // p, w // p)

    def forward_calls(self, latents: torch.Tensor, timestep: torch.Tensor, cond: LTXConditioning):
        batch = latents.shape[0]
        guided = cond.negative_prompt_embeds is not None
        hidden = torch.cat([latents] * 2) if guided else latents
        prompt = torch.cat([cond.negative_prompt_embeds, cond.prompt_embeds]) if guided else cond.prompt_embeds
        mask = (
            torch.cat([cond.negative_prompt_attention_mask, cond.prompt_attention_mask])
            if guided
            else cond.prompt_attention_mask
        )
        f, h, w = self.latent_grid
        kwargs = {
            "hidden_states": hidden.to(prompt.dtype),
            "encoder_hidden_states": prompt,
            "timestep": self.model_timestep(hidden, timestep),
            "encoder_attention_mask": mask,
            "num_frames": f,
            "height": h,
            "width": w,
            "rope_interpolation_scale": self.rope_interpolation_scale,
            "return_dict": False,
        }
        return [ForwardCall(self.transformer, (), kwargs, None, batched_guidance_branches(batch, guided))]

    def model_timestep(self, hidden: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return timestep.expand(hidden.shape[0])

    def combine(self, calls: list[ForwardCall], outputs: list[torch.Tensor]) -> torch.Tensor:
        return combine_batched_guidance(calls[0], outputs[0], self.guidance_scale)

    # -- through the pipeline ---------------------------------------------------------------------
    def pipeline_latent_shape(self, height: int, width: int, num_frames: int) -> tuple[int, ...]:
        """Packed latents: (tokens, channels x patch volume)."""
        cfg = self.transformer.config
        return (int(np.prod(self.token_grid(()))), cfg.in_channels)

    def pipeline_conditioning(
        self, prompts, images, noise, negative_prompt, height, width, num_frames, max_sequence_length
    ) -> LTXConditioning:
        guided = negative_prompt is not None
        pe, pm, ne, nm = self.pipeline.encode_prompt(
            prompts,
            [negative_prompt] * len(prompts) if guided else None,
            guided,
            max_sequence_length=max_sequence_length,
            device=noise.device,
        )
        return LTXConditioning(pe, pm, ne if guided else None, nm if guided else None)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Packed latents to RGB videos (B, T, H, W, 3) uint8, as the pipeline does at decode timestep 0."""
        if self.vae is None or self.pipeline is None:
            raise ValueError("decoding needs the adapter built from a pipeline (LTXAdapter.from_pipeline)")
        pipe, vae, cfg = self.pipeline, self.vae, self.transformer.config
        f, h, w = self.latent_grid
        z = pipe._unpack_latents(latents, f, h, w, cfg.patch_size, cfg.patch_size_t)
        z = pipe._denormalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        timestep = torch.zeros(z.shape[0], device=z.device) if vae.config.timestep_conditioning else None
        video = vae.decode(z.to(vae.dtype), timestep, return_dict=False)[0]
        return video_to_uint8(video)

    def normalise_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised and packed into tokens as the pipeline holds them (``_normalize_latents``, ``_pack_latents``)."""
        pipe, vae, cfg = self.pipeline, self.vae, self.transformer.config
        z = pipe._normalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        return pipe._pack_latents(z, cfg.patch_size, cfg.patch_size_t)


@register("LTXImageToVideoPipeline")
class LTXI2VAdapter(LTXAdapter):
    """``LTXImageToVideoPipeline``: the first latent frame's tokens are the image latent, at timestep
    0, and the scheduler steps only the other frames. The model input here has the image latent on
    those tokens whatever the latents hold there, and ``HoldCleanTokens`` sets them to it after each
    step, so the sampled latents equal the pipeline's given ``latents=`` noise whose first frame is
    the image latent (the pipeline takes passed latents as they are; it mixes the image in only when
    it draws the noise itself). The image latent is sampled from the VAE posterior as the pipeline
    does, with ``torch.Generator().manual_seed(image_latent_seed)``."""

    name = "ltx-i2v"
    image_latent_seed = 0

    @property
    def clean_tokens(self) -> int:
        cfg = self.transformer.config
        if cfg.patch_size_t != 1:
            raise ValueError("LTX image-to-video holds the first frame's tokens clean: it needs patch_size_t 1")
        _, h, w = self.latent_grid
        return (h // cfg.patch_size) * (w // cfg.patch_size)

    @property
    def clean_index(self) -> tuple:
        return (slice(None), slice(0, self.clean_tokens))  # packed (B, tokens, C): frame 0 comes first

    def make_scheduler(self, shift: float | None = None):
        return holding_clean(super().make_scheduler(shift), self.clean_index)

    def clean_latent_frames(self, latent_shape: tuple[int, ...]) -> list[int]:
        return [0]

    def condition_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        return (self.clean_tokens, self.transformer.config.in_channels)

    def condition_latent(self, conditioning: LTXConditioning) -> torch.Tensor | None:
        return conditioning.image_latents

    def model_timestep(self, hidden: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(hidden.shape[:2], dtype=torch.float32, device=hidden.device)
        mask[:, : self.clean_tokens] = 1.0  # the pipeline's packed conditioning_mask
        return timestep.expand(hidden.shape[0]).unsqueeze(-1) * (1 - mask)

    def forward_calls(self, latents: torch.Tensor, timestep: torch.Tensor, cond: LTXConditioning):
        if cond.image_latents is None:
            raise ValueError("LTX image-to-video needs the first-frame latent (pipeline_conditioning)")
        n = self.clean_tokens
        latents = torch.cat([cond.image_latents.to(latents), latents[:, n:]], 1)
        return [CleanTokensCall(c.transformer, c.args, c.kwargs, c.expert, c.branches, cond.image_latents)
                for c in super().forward_calls(latents, timestep, cond)]  # fmt: skip

    def combine(self, calls: list[ForwardCall], outputs: list[torch.Tensor]) -> torch.Tensor:
        return hold_clean_output(calls, super().combine(calls, outputs), self.clean_index)

    def x0_hat(self, latents, output, timestep, sigma, scheduler) -> torch.Tensor:
        return hold_clean_x0(super().x0_hat(latents, output, timestep, sigma, scheduler), output, self.clean_index)

    def pipeline_conditioning(
        self, prompts, images, noise, negative_prompt, height, width, num_frames, max_sequence_length
    ) -> LTXConditioning:
        if any(image is None for image in images):
            raise ValueError("image-to-video needs a first_frame.png in every sample")
        cond = super().pipeline_conditioning(
            prompts, images, noise, negative_prompt, height, width, num_frames, max_sequence_length
        )
        pipe = self.pipeline
        image = pipe.video_processor.preprocess(images, height=height, width=width)
        image = image.to(noise.device, dtype=cond.prompt_embeds.dtype)
        generator = torch.Generator().manual_seed(self.image_latent_seed)
        channels = self.transformer.config.in_channels
        mixed, _ = pipe.prepare_latents(
            image, noise.shape[0], channels, height, width, num_frames, torch.float32, noise.device, generator
        )  # the first frame's tokens are the image latent: init * 1 + noise * 0
        cond.image_latents = mixed[:, : self.clean_tokens].contiguous()
        return cond
