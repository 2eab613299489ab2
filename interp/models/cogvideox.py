"""CogVideoX adapter (text-to-video; image-to-video by concatenated image latents).

Mirrors diffusers' ``CogVideoXPipeline`` step: both guidance halves in one batched call (rows
[unconditional, conditional]), a DDIM-family scheduler with v-prediction, so x0_hat is
sqrt(a) x_t - sqrt(1 - a) v with a = alpha_bar_t (not the flow-matching formula). Latents are laid
out (batch, frames, channels, h, w). Sites ``blocks.K`` are ``transformer_blocks[K]``'s video tokens.

``CogVideoXImageToVideoPipeline`` (``CogVideoXI2VAdapter``) concatenates the first frame's latent
(then zeros) to the noisy latent on the channel axis; CogVideoX 1.5 also passes ``ofs`` = 2. CogVideoX
1.5's temporal patches need a latent frame count divisible by ``patch_size_t``: like the pipelines,
the latents carry padding frames at the front, which ``decode`` drops.
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
    batched_guidance_branches,
    check_video_size,
    combine_batched_guidance,
    input_dtype,
    video_to_uint8,
)
from interp.models.registry import register


@dataclass
class CogVideoXConditioning:
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    image_latents: torch.Tensor | None = None  # I2V: (B, T, C, h, w) concatenated on the channel axis (dim 2)
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None  # from the pipeline when the model uses RoPE

    @property
    def batch_size(self) -> int:
        return self.prompt_embeds.shape[0]


@register("CogVideoXPipeline")
class CogVideoXAdapter(VideoDiTAdapter):
    name = "cogvideox"
    prediction = "v"  # DDIM-family v-prediction: x0_hat from the scheduler's alphas
    latent_frame_axis = 0  # latents are (T, C, H, W)
    latent_channel_axis = 1
    blocks_attr = "transformer_blocks"
    attention_text = "before"  # the self-attention runs on the joint stream
    sub_modules = {"attn1": "attn1", "ffn": "ff"}

    def __init__(
        self,
        transformer: torch.nn.Module,
        scheduler,
        guidance_scale: float = 6.0,
        vae=None,
        pipeline=None,
        num_frames: int | None = None,
    ):
        if hasattr(scheduler, "step") and "old_pred_original_sample" in scheduler.step.__code__.co_varnames:
            raise ValueError("CogVideoXDPMScheduler is a two-step solver; use CogVideoXDDIMScheduler with this adapter")
        self.transformer = transformer
        self.scheduler_config = scheduler.config
        self.scheduler_class = type(scheduler)
        self.guidance_scale = guidance_scale
        self.vae = vae
        self.pipeline = pipeline
        self.num_frames = num_frames  # the video's frame count, to drop CogVideoX 1.5's padding frames on decode

    @classmethod
    def from_pipeline(cls, pipe, spec: PipelineSpec | None = None) -> CogVideoXAdapter:
        spec = (spec or PipelineSpec()).resolved(pipe)
        scale = 6.0 if spec.guidance_scale is None else spec.guidance_scale
        return cls(pipe.transformer, pipe.scheduler, scale, pipe.vae, pipe, spec.num_frames)

    def make_scheduler(self, shift: float | None = None):
        return self.scheduler_class.from_config(self.scheduler_config)

    def text_rows(self, site: str) -> str | None:
        """A block's feed-forward runs on the joint stream ``[text; video]`` (its attention and the
        block return the video stream apart)."""
        return "before" if parse_site(site)[2] == "ffn" else None

    def token_grid(self, latent_shape: tuple[int, ...], expert: str | None = None) -> tuple[int, int, int]:
        frames, _, h, w = latent_shape[-4:]
        p = self.transformer.config.patch_size
        p_t = self.transformer.config.patch_size_t or 1
        return (frames // p_t, h // p, w // p)

    def forward_calls(self, latents: torch.Tensor, timestep: torch.Tensor, cond: CogVideoXConditioning):
        batch = latents.shape[0]
        guided = cond.negative_prompt_embeds is not None
        hidden = torch.cat([latents] * 2) if guided else latents
        if cond.image_latents is not None:
            image = torch.cat([cond.image_latents] * 2) if guided else cond.image_latents
            hidden = torch.cat([hidden, image], dim=2)
        prompt = torch.cat([cond.negative_prompt_embeds, cond.prompt_embeds]) if guided else cond.prompt_embeds
        kwargs = {
            "hidden_states": hidden.to(input_dtype(self.transformer)),
            "encoder_hidden_states": prompt,
            "timestep": timestep.expand(hidden.shape[0]),
            "image_rotary_emb": cond.image_rotary_emb,
            **self.extra_inputs(latents, cond),
            "return_dict": False,
        }
        return [ForwardCall(self.transformer, (), kwargs, None, batched_guidance_branches(batch, guided))]

    def extra_inputs(self, latents: torch.Tensor, cond: CogVideoXConditioning) -> dict:
        """Further transformer inputs (the image-to-video adapter's ``ofs``)."""
        return {}

    def combine(self, calls: list[ForwardCall], outputs: list[torch.Tensor]) -> torch.Tensor:
        return combine_batched_guidance(calls[0], outputs[0], self.guidance_scale)

    def x0_hat(self, latents, output, timestep, sigma, scheduler) -> torch.Tensor:
        alpha_bar = scheduler.alphas_cumprod[int(timestep)].to(latents)
        if scheduler.config.prediction_type == "v_prediction":
            return alpha_bar.sqrt() * latents - (1 - alpha_bar).sqrt() * output
        return (latents - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()

    # -- through the pipeline ---------------------------------------------------------------------
    latent_channels_divisor = 1  # image-to-video: the transformer takes noisy and image latents

    def padding_frames(self, latent_frames: int) -> int:
        """Frames CogVideoX 1.5's pipelines add to make the latent divide into temporal patches."""
        p_t = self.transformer.config.patch_size_t
        return p_t - latent_frames % p_t if p_t and latent_frames % p_t else 0

    def pipeline_latent_shape(self, height: int, width: int, num_frames: int) -> tuple[int, ...]:
        """(frames, C, h, w), the frames with CogVideoX 1.5's padding frames."""
        pipe = self.pipeline
        t_scale, s_scale = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        p = self.transformer.config.patch_size
        frames = check_video_size(num_frames, height, width, t_scale, s_scale * p)
        channels = self.transformer.config.in_channels // self.latent_channels_divisor
        return (frames + self.padding_frames(frames), channels, height // s_scale, width // s_scale)

    def pipeline_conditioning(
        self, prompts, images, noise, negative_prompt, height, width, num_frames, max_sequence_length
    ) -> CogVideoXConditioning:
        pipe = self.pipeline
        guided = negative_prompt is not None
        device = noise.device
        pos, neg = pipe.encode_prompt(
            prompts,
            [negative_prompt] * len(prompts) if guided else None,
            guided,
            max_sequence_length=max_sequence_length,
            device=device,
        )
        rotary = None
        if self.transformer.config.use_rotary_positional_embeddings:
            rotary = pipe._prepare_rotary_positional_embeddings(height, width, noise.shape[1], device)
        return CogVideoXConditioning(pos, neg if guided else None, image_rotary_emb=rotary)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(B, frames, C, h, w) latents to RGB videos (B, T, H, W, 3) uint8 with the pipeline's VAE."""
        if self.vae is None:
            raise ValueError("decoding needs the pipeline's VAE")
        frames = latents.shape[1]
        if self.transformer.config.patch_size_t:
            if self.num_frames is None:
                raise ValueError("decoding CogVideoX 1.5 latents needs num_frames (CogVideoXAdapter.from_pipeline)")
            frames = (self.num_frames - 1) // self.vae.config.temporal_compression_ratio + 1
            if latents.shape[1] != frames + self.padding_frames(frames):
                raise ValueError(f"latents have {latents.shape[1]} frames, not those of {self.num_frames} frames")
        latents = latents[:, latents.shape[1] - frames :]  # the pipelines' padding frames come first
        z = latents.permute(0, 2, 1, 3, 4) / self.vae.config.scaling_factor
        video = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
        return video_to_uint8(video)

    def normalise_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled by the VAE's scaling factor, frames before channels (B, F, C, h, w), as the pipeline holds them."""
        if self.transformer.config.patch_size_t:
            raise ValueError("CogVideoX 1.5 pads its latents with frames a video does not have: encoding videos is "
                             "not wired for it yet")  # fmt: skip
        return (z * self.vae.config.scaling_factor).permute(0, 2, 1, 3, 4)


@register("CogVideoXImageToVideoPipeline")
class CogVideoXI2VAdapter(CogVideoXAdapter):
    """``CogVideoXImageToVideoPipeline``: the first frame's VAE latent (scaled, then zero frames) on the
    channel axis beside the noisy latent, and ``ofs`` = 2 for models with an ofs embedding (1.5).

    The pipeline samples that latent from the VAE posterior with the call's ``generator``; here it is
    sampled with ``torch.Generator().manual_seed(image_latent_seed)``, so a pipeline call with
    ``generator=torch.Generator().manual_seed(image_latent_seed)`` and ``latents=`` the same noise
    samples the same video.
    """

    name = "cogvideox-i2v"
    latent_channels_divisor = 2
    image_latent_seed = 0

    def extra_inputs(self, latents: torch.Tensor, cond: CogVideoXConditioning) -> dict:
        return {"ofs": latents.new_full((1,), 2.0)} if self.transformer.config.ofs_embed_dim else {}

    def condition_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        return tuple(latent_shape)  # the image latent has the latent's layout

    def condition_latent(self, conditioning: CogVideoXConditioning) -> torch.Tensor | None:
        return conditioning.image_latents

    def pipeline_conditioning(
        self, prompts, images, noise, negative_prompt, height, width, num_frames, max_sequence_length
    ) -> CogVideoXConditioning:
        if any(image is None for image in images):
            raise ValueError("image-to-video needs a first_frame.png in every sample")
        cond = super().pipeline_conditioning(
            prompts, images, noise, negative_prompt, height, width, num_frames, max_sequence_length
        )
        pipe, dtype = self.pipeline, cond.prompt_embeds.dtype
        t_scale = pipe.vae_scale_factor_temporal
        padded = num_frames + self.padding_frames((num_frames - 1) // t_scale + 1) * t_scale
        image = pipe.video_processor.preprocess(images, height=height, width=width).to(noise.device, dtype=dtype)
        generator = torch.Generator().manual_seed(self.image_latent_seed)
        _, cond.image_latents = pipe.prepare_latents(
            image, noise.shape[0], noise.shape[2], padded, height, width, dtype, noise.device, generator, noise.clone()
        )
        return cond
