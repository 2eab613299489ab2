"""Capture named activation sites per (denoising step, layer) while sampling, into a store.

Capture goes through nnsight: the transformer is wrapped in ``nnsight.NNsight`` and each chosen
step's forward call runs inside ``.trace(...)`` with ``.output.save()`` on every site. A plain
forward-hook backend does the same with ``register_forward_hook``, for comparison and as a fallback.
Only the conditional branch of classifier-free guidance is stored unless asked otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from activations.axes import parse_site
from activations.pooling import Pooling
from activations.schema import StoreLayout
from activations.writer import PartWriter
from interp.models.base import SUB_MODULES, ForwardCall, VideoDiTAdapter, first_tensor
from interp.sampling import (
    AdapterDenoiser,
    SampleResult,
    StepState,
    prepare_timesteps,
    scheduler_sigmas,
)

BACKENDS = ("nnsight", "hooks")


def _execution_order(site: str) -> tuple:
    _, index, sub = parse_site(site)
    return (index, SUB_MODULES.index(sub) if sub in SUB_MODULES else len(SUB_MODULES))


class SiteCapture:
    """Runs one transformer call and returns its output with the chosen sites' outputs."""

    def __init__(self, adapter: VideoDiTAdapter, sites: Sequence[str], backend: str = "nnsight"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.adapter = adapter
        self.backend = backend
        # Per expert: (site, module path inside that transformer) in execution order; nnsight
        # requires sites to be requested in the order the model runs them.
        self.by_expert: dict[str | None, list[tuple[str, str]]] = {}
        for site in sites:
            expert, path = adapter.site_path(site)  # validates the name against the model
            self.by_expert.setdefault(expert, []).append((site, path))
        for entries in self.by_expert.values():
            entries.sort(key=lambda e: _execution_order(e[0]))
        self._wrapped: dict[int, object] = {}

    def _nnsight(self, module: torch.nn.Module):
        from nnsight import NNsight

        key = id(module)
        if key not in self._wrapped:
            self._wrapped[key] = NNsight(module)
        return self._wrapped[key]

    def run(self, call: ForwardCall) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        entries = self.by_expert.get(call.expert, [])
        if not entries:
            return call.run(), {}
        if self.backend == "hooks":
            return self._run_hooks(call, entries)
        model = self._nnsight(call.transformer)
        saved: dict[str, object] = {}
        with model.trace(*call.args, **call.kwargs):
            for site, path in entries:
                envoy = model
                for part in path.split("."):
                    envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
                saved[site] = envoy.output.save()
            out = model.output.save()
        return first_tensor(out), {site: first_tensor(value) for site, value in saved.items()}

    def _run_hooks(self, call: ForwardCall, entries) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        saved: dict[str, torch.Tensor] = {}
        handles = []
        for site, _ in entries:

            def hook(_module, _inputs, output, site=site):
                saved[site] = first_tensor(output).detach()

            handles.append(self.adapter.site_module(site).register_forward_hook(hook))
        try:
            out = call.run()
        finally:
            for handle in handles:
                handle.remove()
        return out, saved


@dataclass
class CapturedStep:
    step: int
    activations: dict[str, torch.Tensor]  # site -> (batch, tokens, hidden), the stored branch only


class TracingDenoiser(AdapterDenoiser):
    """Wraps an adapter: on chosen steps its forward calls run through ``SiteCapture``.

    Give it to ``sample`` both as the model and as a hook (the hook tells it the current step).
    ``on_step`` receives the step's state (x0_hat set) and the captured activations.
    """

    def __init__(
        self,
        adapter: VideoDiTAdapter,
        capture: SiteCapture,
        steps: Sequence[int],
        on_step: Callable[[StepState, dict[str, torch.Tensor]], None],
        branch: str = "cond",
    ):
        super().__init__(adapter)
        self.capture = capture
        self.steps = set(steps)
        self.on_step = on_step
        self.branch = branch
        self._captured: dict[str, torch.Tensor] = {}

    def before_model(self, state: StepState) -> None:
        super().before_model(state)
        self._captured = {}

    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, conditioning) -> torch.Tensor:
        calls = self.adapter.forward_calls(latents, timestep, conditioning)
        if self.step not in self.steps:
            return self.adapter.combine(calls, [call.run() for call in calls])
        outputs = []
        for call in calls:
            out, acts = self.capture.run(call)
            outputs.append(out)
            rows = call.branches.get(self.branch)
            if rows is not None:
                self._captured.update({site: act[rows] for site, act in acts.items()})
        return self.adapter.combine(calls, outputs)

    def after_step(self, state: StepState) -> None:
        if state.step in self.steps:
            self.on_step(state, self._captured)
        return None


class StoreSink:
    """Pools a step's activations and queues them, with x0_hat, into a part of a store."""

    def __init__(self, part: PartWriter, pooling: Pooling, grids: dict[str, tuple[int, int, int]]):
        self.part = part
        self.pooling = pooling
        self.grids = grids

    def __call__(self, state: StepState, activations: dict[str, torch.Tensor]) -> None:
        for site, tokens in activations.items():
            self.part.write_site(site, state.step, self.pooling.apply(tokens, self.grids[site]))
        self.part.write_x0_hat(state.step, state.x0_hat)
        self.part.write_x_t(state.step, state.latents)


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
) -> StoreLayout:
    """The store layout of a tracing run; the scheduler gives every step's timestep and sigma."""
    grids = set(site_grids(adapter, sites, latent_shape).values())
    if len(grids) != 1:
        raise ValueError(f"sites of one store must share a token grid, got {sorted(grids)}")
    grid = grids.pop()
    pooling.token_index(grid)  # validates random:K against the grid
    scheduler = adapter.make_scheduler(shift)
    prepare_timesteps(adapter, scheduler, num_steps)
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
        extra={"shift": shift, **(extra or {})},
    )


def trace_batch(
    adapter: VideoDiTAdapter,
    capture: SiteCapture,
    part: PartWriter,
    layout: StoreLayout,
    noise: torch.Tensor,
    conditioning,
    shift: float | None,
) -> SampleResult:
    """Sample one batch, streaming the chosen steps' activations and x0_hat into ``part``."""
    sink = StoreSink(part, Pooling.from_json(layout.pooling), site_grids(adapter, layout.sites, layout.latent_shape))
    denoiser = TracingDenoiser(adapter, capture, layout.steps, sink, layout.cfg_branch)
    if layout.condition_shape is not None:
        part.write_condition(adapter.condition_latent(conditioning))
    return denoiser.run(noise, conditioning, layout.num_steps, shift)
