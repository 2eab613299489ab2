"""Capture named activation sites per (denoising step, layer) while sampling, into a store.

``SiteTracer`` is a step hook whose site actions save the chosen sites' outputs (the stored
guidance branch's rows only) on the chosen steps; ``StoreSink`` pools them and queues them, with
x0_hat and x_t, into a part of a store. The backend (nnsight by default, or plain hooks) is the
call runner's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from activations.axes import parse_site
from activations.parts import PartWriter
from activations.pooling import Pooling
from activations.schema import StoreLayout
from interp.execution.loop import SampleResult, StepHook, StepState, sample, scheduler_sigmas
from interp.execution.runner import SiteAction
from interp.models.base import ForwardCall, VideoDiTAdapter


class SiteTracer(StepHook):
    """On ``steps``, saves ``sites`` (rows of guidance ``branch``) and hands them to ``on_step``
    with the step's state after the scheduler step."""

    def __init__(
        self,
        sites: Sequence[str],
        steps: Sequence[int],
        on_step: Callable[[StepState, dict[str, torch.Tensor]], None],
        branch: str = "cond",
    ):
        self.by_expert: dict[str | None, list[str]] = {}
        for site in sites:
            self.by_expert.setdefault(parse_site(site)[0], []).append(site)
        self.steps = set(steps)
        self.on_step = on_step
        self.branch = branch
        self._captured: dict[str, torch.Tensor] = {}

    def before_model(self, state: StepState) -> None:
        self._captured = {}

    def site_actions(self, state: StepState, index: int, call: ForwardCall) -> dict[str, SiteAction]:
        rows = call.branches.get(self.branch)
        if state.step not in self.steps or rows is None:
            return {}

        def saver(site: str):
            def save(value: torch.Tensor) -> None:
                self._captured[site] = value.detach()[rows]

            return save

        return {site: SiteAction(save=saver(site)) for site in self.by_expert.get(call.expert, [])}

    def after_step(self, state: StepState) -> None:
        if state.step in self.steps:
            self.on_step(state, self._captured)


class StoreSink:
    """Pools a step's activations and queues them, with x0_hat and x_t, into a part of a store."""

    def __init__(self, part: PartWriter, pooling: Pooling, grids: dict[str, tuple[int, int, int]]):
        self.part = part
        self.pooling = pooling
        self.grids = grids

    def __call__(self, state: StepState, activations: dict[str, torch.Tensor]) -> None:
        for site, tokens in activations.items():  # NaN / Inf counted on the captured tokens, before pooling
            self.part.write_site(site, state.step, self.pooling.apply(tokens, self.grids[site]), captured=tokens)
        self.part.write_x0_hat(state.step, state.x0_hat)
        self.part.write_x_t(state.step, state.latents)


class AttentionTracer(StepHook):
    """On ``steps``, the frame-attention statistics of ``sites`` (attention sub-modules, e.g. ``blocks.3.attn1``)
    for the rows of guidance ``branch``, handed to ``on_step(state, {site: {stat: (batch, ...)}})``. The
    recorder (``attention_stats.FrameAttentionRecorder``) keeps one record per kernel call; the calls of a
    step are matched, in order, to the transformer calls that ran each site's expert."""

    def __init__(self, recorder, steps: Sequence[int], on_step, branch: str = "cond"):
        self.recorder, self.steps, self.on_step, self.branch = recorder, set(steps), on_step, branch
        self._calls: list[ForwardCall] = []

    def before_model(self, state: StepState) -> None:
        self._calls = []
        self.recorder.records.clear()  # memory: one step's records at most
        self.recorder.enabled = state.step in self.steps  # the extra Q K^T only where it is kept

    def site_actions(self, state: StepState, index: int, call: ForwardCall) -> dict[str, SiteAction]:
        self._calls.append(call)
        return {}

    def after_step(self, state: StepState) -> None:
        if state.step not in self.steps:
            return
        out = {}
        for site, records in self.recorder.records.items():
            calls = [c for c in self._calls if c.expert == parse_site(site)[0]]
            for stats, call in zip(records, calls):
                rows = call.branches.get(self.branch)
                if rows is not None:
                    out[site] = {name: value[rows] for name, value in stats.as_dict().items()}
        self.on_step(state, out)


def site_grids(adapter: VideoDiTAdapter, sites: Sequence[str], latent_shape) -> dict[str, tuple[int, int, int]]:
    return {site: adapter.token_grid(latent_shape, parse_site(site)[0]) for site in sites}


def build_layout(
    adapter: VideoDiTAdapter,
    *,
    model: str,
    latent_shape: tuple[int, ...],
    num_steps: int,
    shift: float | None,
    steps: list[int],
    sites: list[str],
    pooling: Pooling,
    video_keys: list[str],
    dtype: str = "float16",
    branch: str = "cond",
    extra: dict | None = None,
    attention_sites: Sequence[str] = (),
) -> StoreLayout:
    """The store layout of a tracing run; the scheduler gives every step's timestep and sigma.
    ``attention_sites``: attention sub-modules whose frame-attention statistics are kept too."""
    grids = set(site_grids(adapter, sites, latent_shape).values())
    if len(grids) != 1:
        raise ValueError(f"sites of one store must share a token grid, got {sorted(grids)}")
    grid = grids.pop()
    pooling.token_index(grid)  # validates random:K against the grid
    scheduler = adapter.make_scheduler(shift)
    adapter.set_timesteps(scheduler, num_steps)
    sigmas = scheduler_sigmas(scheduler, scheduler.timesteps)
    configs = {str(k): dict(m.config) for k, m in adapter.transformers().items()}
    return StoreLayout(
        model=model,
        adapter=adapter.name,
        num_steps=num_steps,
        steps=steps,
        timesteps=[float(t) for t in scheduler.timesteps],
        sigmas=[float(s) for s in sigmas],
        sites=sites,
        hidden={s: adapter.hidden_size(parse_site(s)[0]) for s in sites},
        token_grid=grid,
        pooling=pooling.to_json(),
        n_tokens=pooling.num_tokens(grid),
        latent_shape=tuple(latent_shape),
        condition_shape=adapter.condition_shape(tuple(latent_shape)),
        n_videos=len(video_keys),
        video_keys=video_keys,
        dtype=dtype,
        cfg_branch=branch,
        model_config=configs,
        extra={
            "shift": shift, "latent_frame_axis": adapter.latent_frame_axis,
            "clean_latent_frames": adapter.clean_latent_frames(tuple(latent_shape)), **(extra or {}),
            **({"attention": attention_spec(adapter, attention_sites, grid)} if attention_sites else {}),
        },  # fmt: skip
    )


def attention_spec(adapter: VideoDiTAdapter, sites: Sequence[str], grid: tuple[int, int, int]) -> dict:
    """The layout's record of kept attention statistics: sites, heads per site, frames, text rows, and the key
    groups of each cross-attention site (``context``)."""
    heads, context = {}, {}
    for site in sites:
        module = adapter.site_module(site)
        if not hasattr(module, "heads") or not hasattr(module, "processor"):
            raise ValueError(f"site {site!r} is not an attention module (attention statistics are read from "
                             f"attn1 and attn2)")  # fmt: skip
        heads[site] = int(module.heads)
        if adapter.attention_context(site):
            context[site] = list(adapter.attention_context(site))
    spec = {"sites": list(sites), "heads": heads, "frames": int(grid[0]), "text": adapter.attention_text}
    return {**spec, "context": context} if context else spec  # stores without cross-attention keep their layout


def trace_batch(
    adapter: VideoDiTAdapter,
    part: PartWriter,
    layout: StoreLayout,
    noise: torch.Tensor,
    conditioning,
    shift: float | None,
    backend: str = "nnsight",
    extra_hooks: Sequence[StepHook] = (),
) -> SampleResult:
    """Sample one batch, streaming the chosen steps' activations and x0_hat into ``part``; ``extra_hooks`` run
    first (a real video's: each step's x_s given, ``interp.videos``)."""
    sink = StoreSink(part, Pooling.from_json(layout.pooling), site_grids(adapter, layout.sites, layout.latent_shape))
    hooks: list[StepHook] = [*extra_hooks, SiteTracer(layout.sites, layout.steps, sink, layout.cfg_branch)]
    if layout.condition_shape is not None:
        part.write_condition(adapter.condition_latent(conditioning))
    scheduler = adapter.make_scheduler(shift)
    spec = layout.extra.get("attention")
    if not spec:
        return sample(adapter, noise, conditioning, layout.num_steps, hooks=hooks, scheduler=scheduler, backend=backend)
    from interp.execution.attention_kernel import TokenLayout
    from interp.execution.attention_stats import FrameAttentionRecorder

    context = spec.get("context", {})
    recorder = FrameAttentionRecorder({
        site: (adapter.site_module(site), TokenLayout(tuple(layout.token_grid), spec.get("text"),
                                                      tuple(context.get(site, ()))))
        for site in spec["sites"]
    })  # fmt: skip

    def write(state: StepState, stats: dict) -> None:
        for site, values in stats.items():
            part.write_attention(site, state.step, values)

    hooks.append(AttentionTracer(recorder, layout.steps, write, layout.cfg_branch))
    with recorder:
        return sample(adapter, noise, conditioning, layout.num_steps, hooks=hooks, scheduler=scheduler, backend=backend)
