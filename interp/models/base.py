"""What every model adapter provides, so one sampler and one tracer serve all model families.

An adapter turns (latents, timestep, conditioning) into the transformer calls of one denoising
step (``forward_calls``), and their outputs into the velocity (``combine``). Classifier-free
guidance is explicit: Wan calls the transformer twice (conditional, then unconditional),
CogVideoX and LTX batch both halves in one call; each call says which batch rows are which branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from activations.axes import block_site, parse_site

SUB_MODULES = ("attn1", "attn2", "ffn")  # in execution order inside a block


@dataclass
class ForwardCall:
    transformer: torch.nn.Module
    args: tuple
    kwargs: dict = field(default_factory=dict)
    expert: str | None = None  # which transformer of a multi-expert model (Wan 2.2: "high"/"low")
    branches: dict[str, slice] = field(default_factory=lambda: {"cond": slice(None)})  # batch rows per branch

    def run(self) -> torch.Tensor:
        return first_tensor(self.transformer(*self.args, **self.kwargs))


def input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a transformer takes its latents in: its input embedding's, since some modules stay fp32."""
    for name in ("patch_embedding", "patch_embed", "x_embedder", "proj_in"):
        module = getattr(model, name, None)
        if module is not None:
            return next(module.parameters()).dtype
    return next(model.parameters()).dtype


def video_to_uint8(video: torch.Tensor):
    """A VAE's decoded (B, C, T, H, W) video in [-1, 1] as (B, T, H, W, 3) uint8 numpy, as pipelines postprocess."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def check_video_size(num_frames: int, height: int, width: int, temporal: int, spatial: int) -> int:
    """Validate a pipeline's video size; returns the number of latent frames."""
    if (num_frames - 1) % temporal:
        raise ValueError(f"num_frames - 1 must be a multiple of {temporal}, got {num_frames}")
    if height % spatial or width % spatial:
        raise ValueError(f"height and width must be multiples of {spatial}")
    return (num_frames - 1) // temporal + 1


def batched_guidance_branches(batch: int, guided: bool) -> dict[str, slice]:
    """Rows of a call that batches both guidance halves, [unconditional, conditional] (CogVideoX, LTX)."""
    return {"uncond": slice(0, batch), "cond": slice(batch, 2 * batch)} if guided else {"cond": slice(None)}


def combine_batched_guidance(call: ForwardCall, output: torch.Tensor, scale: float) -> torch.Tensor:
    out = output.float()
    if "uncond" not in call.branches:
        return out
    uncond, cond = out.chunk(2)
    return uncond + scale * (cond - uncond)


def first_tensor(output) -> torch.Tensor:
    """Module outputs come as tensors, tuples (CogVideoX blocks) or model-output objects."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "sample"):
        return output.sample
    return output[0]


@dataclass
class PipelineSpec:
    """What an adapter needs to know of a run beyond the pipeline itself (LTX plans its timesteps
    from the video size); ``guidance_scale`` None keeps the family's default; ``true_cfg_scale``:
    HunyuanVideo's true classifier-free guidance (None: 1.0, off, as its pipeline's default)."""

    height: int | None = None  # None: what the pipeline's own call uses (``resolved``)
    width: int | None = None
    num_frames: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None

    def resolved(self, pipe) -> PipelineSpec:
        """The video size the pipeline's own call would use where this spec leaves it None: its signature's
        defaults (Wan 480x832, 81 frames; LTX 512x704, 161; HunyuanVideo 720x1280, 129), or where those are
        None, as its call computes them (CogVideoX: the transformer's sample size times the VAE's factor)."""
        import inspect

        params = inspect.signature(type(pipe).__call__).parameters
        config = pipe.transformer.config
        scale = getattr(pipe, "vae_scale_factor_spatial", 1)

        def default(name: str, sample: str, factor: int):
            value = getattr(self, name)
            if value is None:
                value = params[name].default if name in params else None
            if value is None and sample in config:
                value = config[sample] * factor
            if value is None:
                raise ValueError(f"{type(pipe).__name__} has no default {name}: give --{name.replace('_', '-')}")
            return int(value)

        return replace(self, height=default("height", "sample_height", scale), width=default("width", "sample_width",
                       scale), num_frames=default("num_frames", "sample_frames", 1))  # fmt: skip


PREDICTIONS = ("flow", "v", "eps")  # what the transformer predicts: flow velocity, v (DDIM-family), noise


class VideoDiTAdapter:
    """The whole protocol a model family fills in; a subclass is one small file (``interp/models/``),
    registered there for the pipeline classes it serves (``interp.models.registry.register``).

    Required: ``forward_calls``, ``token_grid`` and (for pipeline families) ``from_pipeline``,
    ``pipeline_latent_shape``, ``pipeline_conditioning``, ``decode``. The rest has defaults: one
    call and its output as the velocity (``combine``), flow matching (``prediction``, ``x0_hat``),
    ``scheduler.set_timesteps`` (``set_timesteps``), flow-matching Euler (``make_scheduler``).
    """

    name = "base"
    blocks_attr = "blocks"
    prediction = "flow"
    # A task model (the testbed: "maze") takes task instances, not prompts and frames, and has a verifier
    # and sampling ``defaults``; None: a pipeline (``interp.sources.SourceConfig`` asks this, nothing else).
    task: str | None = None
    # Where a block's self-attention keys hold text rows beside the video tokens (a joint stream): "before",
    # "after" or None (``interp.execution.attention_kernel.TokenLayout``).
    attention_text: str | None = None
    is_skeleton = False  # built from configs alone on the meta device (``interp.models.loading``): cannot run
    pipeline_spec: PipelineSpec | None = None  # a pipeline's run settings, its video size resolved (set on load)
    latent_frame_axis: int | None = 1  # axis of the frames in one video's latent (C, T, H, W); None: packed
    latent_channel_axis: int = 0  # axis of the channels in one video's latent: the features of a latent position
    # Index into a batch of latents of the tokens the model holds clean (an image-to-video first frame); None: none.
    clean_index: tuple | None = None
    # Canonical sub-module names (sites ``blocks.K.attn1`` ...) -> this family's attribute names.
    sub_modules: dict[str, str] = {"attn1": "attn1", "attn2": "attn2", "ffn": "ffn"}

    @classmethod
    def from_pipeline(cls, pipe, spec: PipelineSpec | None = None) -> VideoDiTAdapter:
        """The adapter of a loaded diffusers pipeline of this family."""
        raise NotImplementedError(f"{cls.__name__} does not wrap diffusers pipelines")

    def _needs_pipeline(self, what: str):
        raise NotImplementedError(f"{type(self).__name__} has no {what}: it is not built from a diffusers pipeline")

    def pipeline_latent_shape(self, height: int, width: int, num_frames: int) -> tuple[int, ...]:
        """Shape of one video's latent for a video of this size."""
        self._needs_pipeline("pipeline_latent_shape")

    def pipeline_default(self, name: str):
        """A default of the wrapped diffusers pipeline's ``__call__`` (what calling the pipeline would use),
        e.g. ``max_sequence_length``: Wan 512, CogVideoX 226, LTX 128, HunyuanVideo 256."""
        import inspect

        pipe = getattr(self, "pipeline", None)
        if pipe is None:
            self._needs_pipeline("pipeline_default")
        return inspect.signature(type(pipe).__call__).parameters[name].default

    def check_prompt_tokens(self, max_sequence_length: int) -> None:
        """Refuse a prompt-token count this model's attention cannot read right (default: any will do)."""

    def pipeline_conditioning(
        self, prompts, images, noise, negative_prompt, height, width, num_frames, max_sequence_length
    ):
        """Text (and image) conditioning of a batch through the pipeline's encoders."""
        self._needs_pipeline("pipeline_conditioning")

    def decode(self, latents: torch.Tensor):
        """Latents to RGB videos (B, T, H, W, 3) uint8."""
        self._needs_pipeline("decode")

    def encode_video(self, frames: np.ndarray, height: int, width: int) -> torch.Tensor:
        """RGB frames (T, H, W, 3) uint8 to the clean latent (1, *latent) a generation of this video would end at:
        resized to ``height`` x ``width`` by the pipeline's video processor, encoded by its VAE (the posterior's
        mode: ``retrieve_latents(..., sample_mode="argmax")``), normalised as the family's pipeline normalises
        latents (``normalise_latents``: the inverse of ``decode``)."""
        from PIL import Image

        pipe = getattr(self, "pipeline", None)
        if pipe is None or getattr(self, "vae", None) is None:
            self._needs_pipeline("video encoder")
        video = pipe.video_processor.preprocess_video([Image.fromarray(f) for f in frames], height, width)
        with torch.no_grad():
            z = self.vae.encode(video.to(self.vae.device, self.vae.dtype)).latent_dist.mode()
        return self.normalise_latents(z.float())

    def normalise_latents(self, z: torch.Tensor) -> torch.Tensor:
        """The VAE's latents (B, C, F, h, w) as this family's sampler holds them."""
        raise ValueError(f"{type(self).__name__}: encoding videos is not wired for this family yet")

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def set_timesteps(self, scheduler, num_steps: int, device=None) -> None:
        """Prepare ``scheduler`` for ``num_steps`` steps as this family's pipeline does."""
        scheduler.set_timesteps(num_steps, device=device)

    def x0_hat(self, latents: torch.Tensor, output: torch.Tensor, timestep, sigma: float, scheduler) -> torch.Tensor:
        """The clean-sample estimate of a step; flow matching: x_s = (1 - s) x0 + s noise, v = noise - x0."""
        return latents - sigma * output

    def forward_calls(self, latents: torch.Tensor, timestep: torch.Tensor, conditioning) -> list[ForwardCall]:
        raise NotImplementedError

    def combine(self, calls: list[ForwardCall], outputs: list[torch.Tensor]) -> torch.Tensor:
        """Velocity from the calls' outputs; default: the single call's output."""
        return outputs[0]

    def pixel_box(self, cell: tuple[int, int], cells: tuple[int, int], frame: tuple[int, int]) -> tuple[float, ...]:
        """(top, left, height, width) in a decoded frame of ``frame`` (height, width) pixels of the token ``cell``
        (row, column) on a grid of ``cells``: a VAE maps a latent patch to an even block of pixels."""
        sy, sx = frame[0] / cells[0], frame[1] / cells[1]
        return cell[0] * sy, cell[1] * sx, sy, sx

    def token_grid(self, latent_shape: tuple[int, ...], expert: str | None = None) -> tuple[int, int, int]:
        """(frames, h, w) of the transformer's tokens for a latent of shape (C, T, H, W)."""
        raise NotImplementedError

    def transformers(self) -> dict[str | None, torch.nn.Module]:
        """Transformers by expert name (None for single-expert models)."""
        return {None: self.transformer}

    def attention_context(self, site: str) -> tuple[str, ...]:
        """The key groups a cross-attention site attends to, one attention-kernel call each, in call order
        (``blocks.K.attn2``: the text); () for a self-attention or a family without cross-attention."""
        return ("text",) if parse_site(site)[2] == "attn2" and "attn2" in self.sub_modules else ()

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, conditioning) -> torch.Tensor:
        calls = self.forward_calls(latents, timestep, conditioning)
        return self.combine(calls, [call.run() for call in calls])

    def condition_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """Shape of one video's conditioning latent kept in a store (None: the adapter keeps none)."""
        return None

    def clean_latent_frames(self, latent_shape: tuple[int, ...]) -> list[int]:
        """Latent frames the model holds clean rather than denoising (Wan 2.2 TI2V's first frame); the
        store records them so probes and analyses can exclude those tokens. Default: none."""
        return []

    def condition_latent(self, conditioning) -> torch.Tensor | None:
        """The batch's conditioning as a latent of ``condition_shape`` (probes' input-only control)."""
        return None

    def make_scheduler(self, shift: float | None = None):
        """The scheduler this model samples with (default: flow-matching Euler)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0 if shift is None else shift)

    # -- sites ----------------------------------------------------------------------------------
    def num_blocks(self, expert: str | None = None) -> int:
        return len(getattr(self.transformers()[expert], self.blocks_attr))

    def hidden_size(self, expert: str | None = None) -> int:
        cfg = self.transformers()[expert].config
        return int(cfg.num_attention_heads * cfg.attention_head_dim)

    def site_names(self, layers: list[int], subs: tuple[str, ...] = ()) -> list[str]:
        """Names of block outputs (and chosen sub-modules) for every expert, in execution order."""
        names = []
        for expert in self.transformers():
            for layer in layers:
                names.extend(block_site(layer, sub, expert) for sub in subs)
                names.append(block_site(layer, None, expert))
        return names

    def block_path(self, index: int, expert: str | None = None) -> str:
        """Module path of block ``index`` inside its transformer (override for several block lists)."""
        return f"{self.blocks_attr}.{index}"

    def site_path(self, site: str) -> tuple[str | None, str]:
        """(expert, module path inside that expert's transformer) of a site; ValueError if none."""
        expert, index, sub = parse_site(site)
        experts = self.transformers()
        if expert not in experts:
            raise ValueError(f"site {site!r}: this model's experts are {[e for e in experts if e] or 'none'}")
        n_blocks = self.num_blocks(expert)
        if index >= n_blocks:
            raise ValueError(f"site {site!r}: block {index} is out of range, the model has {n_blocks} blocks")
        path = self.block_path(index, expert)
        if sub is not None:
            attr = self.sub_modules.get(sub)
            if attr is None or not hasattr(experts[expert].get_submodule(path), attr):
                raise ValueError(
                    f"site {site!r}: this block has no sub-module {sub!r} (known here: {sorted(self.sub_modules)})"
                )
            path = f"{path}.{attr}"
        return expert, path

    def text_rows(self, site: str) -> str | None:
        """Where a site's output carries rows that are not video tokens (a joint text+video stream):
        "before" or "after" the video rows; None (the default) when every row is a video token."""
        return None

    def video_rows(self, site: str, n_rows: int, n_video: int) -> slice:
        """The rows (axis 1 of the site's output) holding its ``n_video`` video tokens, in token-grid
        order. Every site action (save, replace, patch, region) sees these rows only."""
        where = self.text_rows(site)
        if n_rows == n_video and where is None:
            return slice(0, n_video)
        if where == "before" and n_rows >= n_video:
            return slice(n_rows - n_video, n_rows)
        if where == "after" and n_rows >= n_video:
            return slice(0, n_video)
        raise ValueError(
            f"site {site!r} carries {n_rows} rows for {n_video} video tokens and {self.name} does not say which "
            "rows are video (VideoDiTAdapter.text_rows)"
        )

    def site_module(self, site: str) -> torch.nn.Module:
        expert, path = self.site_path(site)
        return self.transformers()[expert].get_submodule(path)
