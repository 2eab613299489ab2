"""The toolkit from Python, in a few calls (a thin layer over ``interp.execution``; nothing here
samples, traces or patches by itself):

    from interp.api import open_model, maze_inputs, run, block, copy_from, zero, mean, add_direction

    model = open_model("testbed")                      # or a diffusers pipeline folder
    noise, cond, mazes = maze_inputs(model, n=2)       # testbed mazes; any model: inputs(model, data=...)
    clean = run(model, noise, cond, sites=[block(4)])  # a cache of named sites at every step
    acts = clean.activations(block(4))                 # (steps, rows, tokens, hidden)
    steered = run(model, noise, cond, interventions=[add_direction(block(4), probe.direction(), 8.0, steps=[0])])
    steered.solved(mazes)                              # testbed verifier

Interventions are step hooks (``interp.execution.loop.StepHook``) that replace one site's output:
``copy_from`` (another run's values, by the existing patcher), ``zero``, ``mean`` (over the tokens, or
a reference run's rows), ``add_direction`` (a vector such as a saved probe's, ``probes.arrays.Probe``),
``feature_edit`` (ablate, clamp or add one SAE latent), or ``Intervention(site, fn)`` for any function;
``knockout`` removes attention across frames inside attention sub-modules. Each takes ``steps`` (None:
every step) and ``tokens`` (flat token indices of the site's sequence, frame-major; ``frame_tokens`` gives
a latent frame's). Sites are named as everywhere (``block(k)``, ``activations.axes.block_site``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from activations.axes import block_site
from interp.execution.loop import StepHook, StepState
from interp.execution.patching import Patch, Patcher, RunCache, record_run
from interp.execution.runner import SiteAction
from interp.models.base import ForwardCall, VideoDiTAdapter

block = block_site  # block(4) -> the output of block 4; block(4, "attn1") a sub-module's

__all__ = [
    "Intervention", "Run", "add_direction", "block", "copy_from", "feature_edit", "frame_tokens", "inputs",
    "knockout", "maze_inputs", "mean", "open_model", "run", "zero",
]  # fmt: skip


def open_model(model: str | Path, torch_dtype: str = "float32", device: str = "cpu") -> VideoDiTAdapter:
    """A model by shipped testbed name (``testbed``, ``testbed-mixed``), testbed weights folder, or a
    local diffusers pipeline folder (``interp.models.loading.load_model``; never downloads)."""
    from interp.models.loading import load_model

    return load_model(model, torch_dtype=torch_dtype, device=device)


def maze_inputs(model: VideoDiTAdapter, n: int = 4, size: int = 4, frames: int = 4, first_seed: int = 0):
    """(noise, conditioning, mazes) of ``n`` held-out testbed mazes (seeds ``first_seed``..): ``inputs`` of
    the testbed's generated mazes, with the mazes themselves."""
    noise, cond, videos = inputs(model, n=n, size=size, num_frames=frames, first_seed=first_seed)
    return noise, cond, [v.sample.truth for v in videos]


def inputs(model: VideoDiTAdapter, **source) -> tuple[torch.Tensor, object, list]:
    """(noise, conditioning, videos) of any model's source, as every command makes them: the fields of
    ``interp.sources.SourceConfig`` (``data``, ``samples``, ``seeds``, ``num_frames``, ``height``, ``width``,
    ``negative_prompt``, ...; the testbed without ``data``: ``n``, ``size``, ``first_seed``), checked first.
    ``videos[i]`` (key, sample, noise seed) goes with row i."""
    from interp.sources import SourceConfig
    from interp.validation import build

    cfg = build(SourceConfig, source, "inputs")
    cfg.check(pipeline=not model.task)  # no field silently ignored
    videos = cfg.videos(model)
    noise, cond = cfg.inputs(model, videos)
    return noise, cond, videos


@dataclass
class Run:
    """A sampled batch: the final latents and the cache (``RunCache``: x_s, x0_hat and scheduler of
    every step, the requested sites' outputs per (step, transformer call))."""

    model: VideoDiTAdapter
    cache: RunCache
    conditioning: object

    @property
    def final(self) -> torch.Tensor:
        return self.cache.final

    def activations(self, site: str, call: int = 0) -> torch.Tensor:
        """One site's outputs (steps, rows of the call, tokens, hidden), steps in order; ``call``:
        which transformer call of a step (guided families run several, see ``cache.branches``)."""
        keys = sorted((s, c) for s, c, name in self.cache.acts if name == site and c == call)
        if not keys:
            raise ValueError(f"{site!r} was not recorded in this run (pass it in run(..., sites=[...]))")
        return torch.stack([self.cache.acts[(s, c, site)] for s, c in keys])

    def steps(self, site: str) -> list[int]:
        return sorted({s for s, _, name in self.cache.acts if name == site})

    def videos(self) -> np.ndarray:
        """Decoded final videos (B, T, H, W, 3) uint8."""
        with torch.no_grad():
            return self.model.decode(self.final)

    def solved(self, mazes) -> list[bool]:
        """The testbed verifier's verdict per maze."""
        from interp.evaluation import verify_latents

        return [v.solved for v in verify_latents(self.model, self.final, mazes)]


class Intervention(StepHook):
    """Replace ``site``'s output with ``fn(value, step)`` at ``steps`` (None: all), on ``tokens``
    (None: all) of every batch row and guidance branch. ``value``: (rows, tokens, hidden)."""

    def __init__(self, site: str, fn: Callable[[torch.Tensor, int], torch.Tensor], steps=None, tokens=None):
        self.site, self.fn = site, fn
        self.steps = None if steps is None else {int(s) for s in steps}
        self.tokens = None if tokens is None else torch.as_tensor(list(tokens), dtype=torch.long)
        self.model: VideoDiTAdapter | None = None

    def bind(self, model: VideoDiTAdapter, batch: int) -> StepHook:
        self.model = model
        return self

    def site_actions(self, state: StepState, index: int, call: ForwardCall) -> dict[str, SiteAction]:
        if self.steps is not None and state.step not in self.steps:
            return {}
        if self.model is not None and self.model.site_path(self.site)[0] != call.expert:
            return {}  # a two-expert model: the site lives in the other expert at this step

        def replace(value: torch.Tensor) -> torch.Tensor:
            new = self.fn(value, state.step)
            if self.tokens is None:
                return new.to(value.dtype)
            out = value.clone()
            idx = self.tokens.to(value.device)
            out[:, idx] = new[:, idx].to(value.dtype)
            return out

        return {self.site: SiteAction(replace=replace)}


def zero(site: str, steps=None, tokens=None) -> Intervention:
    """Zero ablation."""
    return Intervention(site, lambda v, step: torch.zeros_like(v), steps, tokens)


def mean(site: str, reference: Run | None = None, steps=None, tokens=None, call: int = 0) -> Intervention:
    """Mean ablation: each row's mean over its tokens, or (``reference``) the mean over a reference
    run's rows of that step's output, token by token (the site must be recorded there)."""
    if reference is None:
        return Intervention(site, lambda v, step: v.mean(1, keepdim=True).expand_as(v), steps, tokens)

    def fn(v: torch.Tensor, step: int) -> torch.Tensor:
        key = (step, call, site)
        if key not in reference.cache.acts:
            raise ValueError(f"the reference run has no {site!r} at step {step}")
        return reference.cache.acts[key].mean(0, keepdim=True).to(v.device).expand_as(v)

    return Intervention(site, fn, steps, tokens)


def add_direction(site: str, direction, scale: float = 1.0, steps=None, tokens=None) -> Intervention:
    """Steering: add ``scale * direction`` (hidden,) to the site's output, e.g. a probe's
    ``Probe.direction()`` (unit length) fitted on that site."""
    vector = torch.as_tensor(np.asarray(direction), dtype=torch.float32)
    return Intervention(site, lambda v, step: v + scale * vector.to(v.device, v.dtype), steps, tokens)


FEATURE_MODES = ("ablate", "clamp", "add")


def feature_edit(sae, site: str, feature: int, mode: str = "ablate", value: float = 1.0, steps=None, tokens=None,
                 direction=None) -> Intervention:  # fmt: skip
    """Edit one sparse-autoencoder latent of ``site`` (a SAELens SAE trained on it, ``interp sae train``) in SAE
    space, keeping the SAE's error term: the output becomes ``x - decode(z) + decode(z')`` where ``z'`` is the
    latents ``z = encode(x)`` with latent ``feature`` changed: ``ablate`` removes ``value`` times its activation
    (1: all of it), ``clamp`` sets it to ``value``, ``add`` adds ``value``; that is ``x + delta * d``, ``d`` the
    latent's decoder row. ``direction``: another vector in place of ``d`` with the same ``delta`` per token (a
    random direction of the same norm: the control)."""
    if mode not in FEATURE_MODES:
        raise ValueError(f"mode must be one of {', '.join(FEATURE_MODES)}, got {mode!r}")
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= feature < int(sae.cfg.d_sae):
        raise ValueError(f"feature {feature} is not a latent of this SAE (0-{int(sae.cfg.d_sae) - 1})")
    d = sae.W_dec[feature].detach() if direction is None else torch.as_tensor(np.asarray(direction, dtype=np.float32))
    if tuple(d.shape) != tuple(sae.W_dec.shape[1:]):
        raise ValueError(f"direction must have the SAE's input width {sae.W_dec.shape[1]}, got shape {tuple(d.shape)}")

    def fn(v: torch.Tensor, step: int) -> torch.Tensor:
        x = v.reshape(-1, v.shape[-1]).to(sae.device, torch.float32)
        with torch.no_grad():
            if mode == "add":
                delta = torch.full((len(x),), float(value), device=x.device)
            else:
                z = sae.encode(x)[:, feature]
                delta = -value * z if mode == "ablate" else value - z
            out = x + delta[:, None] * d.to(x.device, torch.float32)
        return out.reshape(v.shape).to(v.device, v.dtype)

    return Intervention(site, fn, steps, tokens)


class _CopyFrom:
    """Activation patching from a recorded run: row r takes source row r's values (the patcher of
    every causal experiment, ``interp.execution.patching.Patcher``)."""

    def __init__(self, source: Run, site: str, steps, tokens):
        self.source, self.site, self.steps, self.tokens = source, site, steps, tokens

    def bind(self, model: VideoDiTAdapter, batch: int) -> StepHook:
        steps = self.source.steps(self.site) if self.steps is None else [int(s) for s in self.steps]
        if not steps:
            raise ValueError(f"the source run has no {self.site!r} recorded to copy from")
        if batch > self.source.cache.batch:
            raise ValueError(f"the source run has {self.source.cache.batch} rows, this run {batch}")
        tokens = None if self.tokens is None else tuple(int(t) for t in self.tokens)
        patches = [Patch(s, self.site, tokens) for s in steps]
        return Patcher(model, self.source.cache, [patches] * batch, list(range(batch)))


def copy_from(source: Run, site: str, steps=None, tokens=None) -> _CopyFrom:
    """Patch ``site`` with ``source``'s recorded values (row by row) at ``steps`` (None: every step
    recorded there) on ``tokens`` (None: all)."""
    return _CopyFrom(source, site, steps, tokens)


class _Knockout:
    def __init__(self, sites: Sequence[str], rule: str, steps, heads):
        self.sites, self.rule, self.steps, self.heads = list(sites), rule, steps, heads

    def bind(self, model: VideoDiTAdapter, batch: int) -> StepHook:
        from interp.execution.frame_knockout import FrameKnockout

        return FrameKnockout(model, self.sites, self.rule, self.steps, heads=self.heads)


def knockout(sites: str | Sequence[str], rule: str = "cross", steps=None, heads=None) -> _Knockout:
    """Attention knockout across frames in attention sub-modules (``block(k, "attn1")``) at ``steps`` (None:
    every step) in ``heads`` (None: all): ``rule`` ``cross`` (no attention between different frames),
    ``causal`` (no frame sees a later one), ``anticausal`` or ``to_first`` (``interp.execution.frame_knockout``)."""
    return _Knockout([sites] if isinstance(sites, str) else sites, rule, steps, heads)


def frame_tokens(model: VideoDiTAdapter, latent: torch.Tensor, frames: Sequence[int]) -> list[int]:
    """Flat token indices of latent ``frames`` in a site's sequence, for a latent (B, C, T, H, W) or
    (C, T, H, W). Latent frames, not video frames: Wan's VAE packs 4 video frames into one."""
    shape = tuple(latent.shape[1:] if latent.ndim == 5 else latent.shape)
    t, h, w = model.token_grid(shape)
    return [f * h * w + i for f in frames for i in range(h * w)]


def run(
    model: VideoDiTAdapter,
    noise: torch.Tensor,
    conditioning,
    sites: Sequence[str] = (),
    num_steps: int | None = None,
    interventions: Sequence = (),
    steps: Sequence[int] | None = None,
    backend: str = "hooks",
) -> Run:
    """Sample ``noise`` under ``conditioning`` with ``interventions``, caching ``sites`` at ``steps``
    (None: every step) after any replacement (``interp.execution.patching.record_run``)."""
    num_steps = num_steps or getattr(getattr(model, "defaults", None), "num_steps", None)
    if not num_steps:
        raise ValueError("num_steps is needed: this model has no default number of steps")
    hooks = [i.bind(model, noise.shape[0]) if hasattr(i, "bind") else i for i in interventions]
    cache = record_run(model, noise, conditioning, num_steps, list(sites), steps=steps, backend=backend, hooks=hooks)
    return Run(model, cache, conditioning)
