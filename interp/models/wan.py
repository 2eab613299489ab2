"""Wan 2.1 (text- and image-to-video) and Wan 2.2 (two experts) adapter.

Mirrors diffusers' ``WanPipeline`` / ``WanImageToVideoPipeline`` step: the conditional call, then
the unconditional one (classifier-free guidance), on ``transformer`` for timesteps at or above
``boundary_ratio * 1000`` (Wan 2.2's high-noise expert, sites ``high.blocks.K``) and on
``transformer_2`` below it (low-noise expert, ``low.blocks.K``). Wan 2.1 has one transformer and
sites ``blocks.K``. Image-to-video concatenates the mask and the encoded first frame.

Wan 2.2 TI2V (``expand_timesteps`` in the pipeline config, e.g. Wan2.2-TI2V-5B) is ``WanTI2VAdapter``:
per-token timesteps, and in image-to-video (``WanImageToVideoPipeline``) the first latent frame held
clean: the model sees the image latent there at timestep 0 and the sampled latent ends with it.
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
        """The adapter of a Wan pipeline: ``WanTI2VAdapter`` when its config has ``expand_timesteps``."""
        scale = 5.0 if spec is None or spec.guidance_scale is None else spec.guidance_scale
        boundary = getattr(pipe.config, "boundary_ratio", None)
        transformer_2 = getattr(pipe, "transformer_2", None) if boundary is not None else None
        args = (pipe.transformer, transformer_2, boundary, scale, None, pipe.vae, pipe, pipe.scheduler)
        if getattr(pipe.config, "expand_timesteps", False):
            target = cls if issubclass(cls, WanTI2VAdapter) else WanTI2VAdapter
            return target(*args, image_to_video=type(pipe).__name__ == "WanImageToVideoPipeline")
        return WanAdapter(*args) if issubclass(cls, WanTI2VAdapter) else cls(*args)

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

    def check_prompt_tokens(self, max_sequence_length: int) -> None:
        # Wan 2.1 I2V's cross-attention takes the last 512 context tokens as the text, the rest as the image's
        # (``WanAttnProcessor``): any other count splits them at the wrong token
        if self.transformer.config.added_kv_proj_dim is not None and max_sequence_length != 512:
            raise ValueError(f"--max-sequence-length {max_sequence_length}: Wan image-to-video with image tokens "
                             "needs 512 (its attention splits image from text tokens 512 from the end)")  # fmt: skip

    def attention_context(self, site: str) -> tuple[str, ...]:
        # Wan I2V's cross-attention attends to the image encoder's tokens first, in a kernel call of its own
        # (``WanAttnProcessor``: keys from ``add_k_proj``), then to the text
        context = super().attention_context(site)
        if context and getattr(self.site_module(site), "add_k_proj", None) is not None:
            return ("image", "text")
        return context

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

    def model_input(self, latents: torch.Tensor, conditioning: WanConditioning) -> torch.Tensor:
        """What the transformer takes as ``hidden_states`` (float32; cast to its dtype by the caller)."""
        return latents if conditioning.condition is None else torch.cat([latents, conditioning.condition], 1)

    def model_timestep(self, latents: torch.Tensor, timestep: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
        return timestep.expand(latents.shape[0])

    def forward_calls(self, latents: torch.Tensor, timestep: torch.Tensor, conditioning: WanConditioning):
        expert = self.expert_at(timestep)
        model = self.transformers()[expert]
        common = {
            "hidden_states": self.model_input(latents, conditioning).to(input_dtype(model)),
            "timestep": self.model_timestep(latents, timestep, model),
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
    def encode(self, prompts: list[str], negative_prompt: str | None = "", max_sequence_length: int = 512):
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
            processed = pipe.video_processor.preprocess(images, height=height, width=width)
            processed = processed.to(noise.device, dtype=torch.float32)
            prepared = pipe.prepare_latents(
                processed, noise.shape[0], noise.shape[1], height, width, num_frames, torch.float32, noise.device,
                None, noise.clone(),
            )  # fmt: skip
            cond.condition = prepared[1]  # Wan 2.1: mask + first-frame latent; TI2V: the first-frame latent
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

    def normalise_latents(self, z: torch.Tensor) -> torch.Tensor:
        """(z - latents_mean) / latents_std, as Wan's image-to-video pipeline normalises its condition latent."""
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(z)
        std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(z)
        return (z - mean) / std


# -- tokens held clean (Wan 2.2 TI2V and LTX-Video image-to-video's first frame) ------------------
@dataclass
class CleanTokensCall(ForwardCall):
    """A transformer call of a model that holds some latent tokens clean: ``clean`` is their value
    (the image latent, float32), which ``combine`` returns there in place of a velocity."""

    clean: torch.Tensor | None = None


class HoldCleanTokens:
    """Scheduler mixin: after each step the latents at ``clean_index`` are set to the model output
    there, which the adapters that hold tokens clean fill with the clean latent (an x0 prediction).

    So the sampled latents end with the condition frame, as the diffusers pipelines' own final
    latents do. The step of every other token is untouched (diffusers' flow schedulers update each
    element on its own), so they match the pipelines bit for bit.
    """

    clean_index: tuple | None = None

    def step(self, model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
        out = super().step(model_output, timestep, sample, *args, return_dict=return_dict, **kwargs)
        if self.clean_index is None:
            return out
        prev = (out.prev_sample if return_dict else out[0]).clone()
        prev[self.clean_index] = model_output[self.clean_index].to(prev.dtype)
        if return_dict:
            out.prev_sample = prev
            return out
        return (prev, *out[1:])


_HOLDING: dict[type, type] = {}


def holding_clean(scheduler, clean_index: tuple):
    """A fresh copy of ``scheduler`` (same config) whose steps hold the tokens at ``clean_index`` clean."""
    base = type(scheduler)
    if not issubclass(base, HoldCleanTokens):
        if base not in _HOLDING:
            name = f"HoldClean{base.__name__}"
            _HOLDING[base] = globals()[name] = type(name, (HoldCleanTokens, base), {"__module__": __name__})
        base = _HOLDING[base]
    fresh = base.from_config(scheduler.config)
    fresh.clean_index = clean_index
    return fresh


def hold_clean_output(calls: list[ForwardCall], velocity: torch.Tensor, clean_index: tuple) -> torch.Tensor:
    """The velocity with the clean tokens' values in their place (what ``HoldCleanTokens`` imposes)."""
    clean = getattr(calls[0], "clean", None)
    if clean is None:
        return velocity
    velocity = velocity.clone()
    velocity[clean_index] = clean.to(velocity)
    return velocity


def hold_clean_x0(x0: torch.Tensor, output: torch.Tensor, clean_index: tuple | None) -> torch.Tensor:
    """x0_hat with the clean tokens' estimate set to their clean value."""
    if clean_index is None:
        return x0
    x0 = x0.clone()
    x0[clean_index] = output[clean_index]
    return x0


class WanTI2VAdapter(WanAdapter):
    """Wan 2.2 TI2V, mirroring the pipelines' ``expand_timesteps`` branch: the timestep is per token,
    ``first_frame_mask[0][0][:, ::p, ::p] * t`` (0 on the first frame's tokens in image-to-video), and
    the model input is ``(1 - mask) * image_latent + mask * latents``. The pipeline keeps stepping the
    first frame but replaces it with the image latent at the end; here it is the image latent from
    the first step on (``HoldCleanTokens``), which changes no other frame, so the scheduler must come
    from ``make_scheduler``. ``WanPipeline`` with ``expand_timesteps`` is text-to-video: every token at
    t, nothing held clean. Served through ``WanAdapter``'s registration (``from_pipeline`` picks it)."""

    CLEAN = (slice(None), slice(None), slice(0, 1))  # (B, C, T, H, W): the first latent frame

    def __init__(self, *args, image_to_video: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_to_video = image_to_video
        self.name = "wan2.2-ti2v"

    @property
    def clean_index(self) -> tuple | None:
        return self.CLEAN if self.image_to_video else None

    def make_scheduler(self, shift: float | None = None):
        scheduler = super().make_scheduler(shift)
        return holding_clean(scheduler, self.clean_index) if self.image_to_video else scheduler

    def clean_latent_frames(self, latent_shape: tuple[int, ...]) -> list[int]:
        return [0] if self.image_to_video else []

    def condition_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """Image-to-video keeps the first frame's latent, (C, 1, H, W)."""
        return (latent_shape[0], 1, *latent_shape[2:]) if self.image_to_video else None

    def _check(self, conditioning: WanConditioning) -> None:
        if self.image_to_video and conditioning.condition is None:
            raise ValueError("Wan 2.2 TI2V image-to-video needs the first-frame latent (pipeline_conditioning)")

    def frame_mask(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipelines' mask, (1, 1, T, H, W) float32: 0 on the frame held clean, 1 elsewhere."""
        mask = torch.ones(1, 1, *latents.shape[2:], dtype=torch.float32, device=latents.device)
        if self.image_to_video:
            mask[:, :, 0] = 0
        return mask

    def model_input(self, latents: torch.Tensor, conditioning: WanConditioning) -> torch.Tensor:
        self._check(conditioning)
        if not self.image_to_video:
            return latents
        mask = self.frame_mask(latents)
        return (1 - mask) * conditioning.condition + mask * latents

    def model_timestep(self, latents: torch.Tensor, timestep: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
        _, p_h, p_w = model.config.patch_size
        per_token = (self.frame_mask(latents)[0][0][:, ::p_h, ::p_w] * timestep).flatten()
        return per_token.unsqueeze(0).expand(latents.shape[0], -1)

    def forward_calls(self, latents: torch.Tensor, timestep: torch.Tensor, conditioning: WanConditioning):
        calls = super().forward_calls(latents, timestep, conditioning)
        if not self.image_to_video:
            return calls
        return [CleanTokensCall(c.transformer, c.args, c.kwargs, c.expert, c.branches, conditioning.condition)
                for c in calls]  # fmt: skip

    def combine(self, calls: list[ForwardCall], outputs: list[torch.Tensor]) -> torch.Tensor:
        return hold_clean_output(calls, super().combine(calls, outputs), self.CLEAN)

    def x0_hat(self, latents, output, timestep, sigma, scheduler) -> torch.Tensor:
        x0 = super().x0_hat(latents, output, timestep, sigma, scheduler)
        return hold_clean_x0(x0, output, self.clean_index)
