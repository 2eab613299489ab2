"""Run recording and activation patching: one mechanism, used by every causal experiment.

``record_run`` samples once and keeps, per step, the latent x_s entering it, the scheduler as it
stood before it (a multistep solver's history is part of the trajectory), x0_hat, and chosen
sites' outputs (per transformer call, every guidance row). ``run_patched`` samples a batch whose
rows each carry their own patches (step, site, token region): at that step the site's output on
that row is overwritten with the source run's, and sampling continues. A row first patched at step
s resumes the base run at s from its cached x_s *and scheduler state*, so with no patch it
reproduces the base run exactly; a sweep over (step, layer) costs one partial trajectory per step.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interp.execution.loop import StepHook, StepState, sample, select_scheduler_rows
from interp.execution.runner import SiteAction
from interp.models.base import ForwardCall, VideoDiTAdapter


@dataclass(frozen=True)
class Patch:
    """Overwrite ``site``'s output at denoising ``step`` on ``tokens`` (flat indices; None: all)."""

    step: int
    site: str
    tokens: tuple[int, ...] | None = None


@dataclass
class RunCache:
    latents: dict[int, torch.Tensor]  # step -> x_s entering the step, (B, C, T, H, W)
    acts: dict[tuple[int, int, str], torch.Tensor]  # (step, call, site) -> output, all rows of the call
    branches: dict[tuple[int, int], dict[str, slice]]  # (step, call) -> rows of each guidance branch
    x0_hat: dict[int, torch.Tensor]
    final: torch.Tensor
    batch: int
    schedulers: dict[int, object] = dataclasses.field(default_factory=dict)  # step -> scheduler before it


def repeat_conditioning(conditioning, index: int, times: int):
    """Element ``index`` of a batched conditioning, repeated ``times`` (tensors or dataclasses of them)."""
    if isinstance(conditioning, torch.Tensor):
        return conditioning[index : index + 1].expand(times, *conditioning.shape[1:]).contiguous()
    if dataclasses.is_dataclass(conditioning):
        fields = {}
        for f in dataclasses.fields(conditioning):
            value = getattr(conditioning, f.name)
            fields[f.name] = repeat_conditioning(value, index, times) if isinstance(value, torch.Tensor) else value
        return dataclasses.replace(conditioning, **fields)
    raise TypeError(f"cannot repeat conditioning of type {type(conditioning).__name__}")


def stack_conditioning(items: Sequence):
    """Concatenate batched conditionings along the batch axis."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(items))
    if dataclasses.is_dataclass(first):
        fields = {}
        for f in dataclasses.fields(first):
            values = [getattr(c, f.name) for c in items]
            fields[f.name] = torch.cat(values) if isinstance(values[0], torch.Tensor) else values[0]
        return dataclasses.replace(first, **fields)
    raise TypeError(f"cannot stack conditioning of type {type(first).__name__}")


def _rows(branches: dict[str, slice], element: int) -> dict[str, int]:
    return {name: (sl.start or 0) + element for name, sl in branches.items()}


def _sites_of(adapter: VideoDiTAdapter, sites: Sequence[str], call: ForwardCall) -> list[str]:
    return [s for s in sites if adapter.site_path(s)[0] == call.expert]


class RunRecorder(StepHook):
    """Keeps x_s, the scheduler state and x0_hat of every step, and sites' outputs on ``steps``."""

    def __init__(self, adapter: VideoDiTAdapter, sites: Sequence[str], steps: set[int] | None):
        self.adapter = adapter
        self.sites = list(sites)
        self.steps = steps
        self.acts: dict[tuple[int, int, str], torch.Tensor] = {}
        self.branches: dict[tuple[int, int], dict[str, slice]] = {}
        self.latents: dict[int, torch.Tensor] = {}
        self.schedulers: dict[int, object] = {}
        self.x0: dict[int, torch.Tensor] = {}

    def before_model(self, state: StepState) -> None:
        self.latents[state.step] = state.latents.clone()
        self.schedulers[state.step] = copy.deepcopy(state.scheduler)

    def site_actions(self, state: StepState, index: int, call: ForwardCall) -> dict[str, SiteAction]:
        step = state.step
        self.branches[(step, index)] = call.branches
        if self.steps is not None and step not in self.steps:
            return {}

        def saver(site: str):
            def save(value: torch.Tensor) -> None:
                self.acts[(step, index, site)] = value.detach().clone()

            return save

        return {site: SiteAction(save=saver(site)) for site in _sites_of(self.adapter, self.sites, call)}

    def after_step(self, state: StepState) -> None:
        self.x0[state.step] = state.x0_hat.clone()


def record_run(
    adapter: VideoDiTAdapter,
    noise: torch.Tensor,
    conditioning,
    num_steps: int,
    sites: Sequence[str],
    steps: Sequence[int] | None = None,
    shift: float | None = None,
    start_step: int = 0,
    resume_scheduler=None,
    backend: str = "hooks",
    hooks: Sequence[StepHook] = (),
) -> RunCache:
    """Sample once, keeping x_s, scheduler state and x0_hat of every step and the chosen sites'
    outputs at ``steps`` (default all). ``start_step`` > 0: ``noise`` is the latent x_s of a
    trajectory resumed at that step (with ``resume_scheduler``, its scheduler state there).
    ``hooks``: further step hooks (interventions) run with the recorder, which records what flows
    on after their replacements."""
    recorder = RunRecorder(adapter, sites, None if steps is None else set(steps))
    result = sample(
        adapter, noise, conditioning, num_steps, hooks=[*hooks, recorder], scheduler=adapter.make_scheduler(shift),
        start_step=start_step, resume_scheduler=resume_scheduler, backend=backend,
    )  # fmt: skip
    return RunCache(
        recorder.latents, recorder.acts, recorder.branches, recorder.x0, result.latents, noise.shape[0],
        recorder.schedulers,
    )  # fmt: skip


class Patcher(StepHook):
    """Replaces sites' outputs, row by row, with a source run's at the patches' steps."""

    def __init__(
        self,
        adapter: VideoDiTAdapter,
        source: RunCache,
        row_patches: Sequence[Sequence[Patch]],
        source_elements: Sequence[int],
    ):
        self.adapter = adapter
        self.source = source
        self.source_elements = list(source_elements)
        self.by_step: dict[int, dict[str, list[tuple[int, Patch]]]] = {}
        for row, patches in enumerate(row_patches):
            for p in patches:
                self.by_step.setdefault(p.step, {}).setdefault(p.site, []).append((row, p))

    def site_actions(self, state: StepState, index: int, call: ForwardCall) -> dict[str, SiteAction]:
        todo = self.by_step.get(state.step, {})
        actions = {}
        for site in _sites_of(self.adapter, list(todo), call):
            key = (state.step, index, site)
            if key not in self.source.acts:
                raise ValueError(f"the source run has no {site!r} at step {state.step} (call {index}) to patch in")
            actions[site] = SiteAction(replace=self._replacer(todo[site], key, call))
        return actions

    def _replacer(self, entries, key, call: ForwardCall):
        src = self.source.acts[key]
        src_branches = self.source.branches[key[:2]]

        def replace(value: torch.Tensor) -> torch.Tensor:
            out = value.clone()
            for row, p in entries:
                src_rows = _rows(src_branches, self.source_elements[row])
                for branch, dst in _rows(call.branches, row).items():
                    if p.tokens is None:
                        out[dst] = src[src_rows[branch]]
                    else:
                        idx = torch.as_tensor(p.tokens, device=out.device)
                        out[dst, idx] = src[src_rows[branch], idx]
            return out

        return replace


def run_patched(
    adapter: VideoDiTAdapter,
    base: RunCache,
    base_conditioning,
    source: RunCache,
    row_patches: Sequence[Sequence[Patch]],
    base_elements: Sequence[int] | None = None,
    source_elements: Sequence[int] | None = None,
    num_steps: int | None = None,
    shift: float | None = None,
    start_step: int | None = None,
    backend: str = "hooks",
) -> torch.Tensor:
    """Final latents of one batch of patched runs.

    Row r continues base element ``base_elements[r]`` (default 0) from its cached x_s and scheduler
    state at ``start_step`` (default: the row patches' earliest step), and takes patched values from
    source element ``source_elements[r]`` (default 0). ``base_conditioning`` is the base run's
    batched conditioning.
    """
    n = len(row_patches)
    base_elements = list(base_elements or [0] * n)
    source_elements = list(source_elements or [0] * n)
    if len(base_elements) != n or len(source_elements) != n:
        raise ValueError("one base and one source element per patched row")
    steps_patched = [p.step for patches in row_patches for p in patches]
    if start_step is None:
        start_step = min(steps_patched) if steps_patched else 0
    if steps_patched and min(steps_patched) < start_step:
        raise ValueError(f"a patch at step {min(steps_patched)} comes before the start step {start_step}")
    base_shape = next(iter(base.latents.values())).shape[1:]
    source_shape = next(iter(source.latents.values())).shape[1:]
    if base_shape != source_shape:
        raise ValueError(
            f"base and source runs have different latent shapes: {tuple(base_shape)} vs {tuple(source_shape)}"
        )
    if any(e < 0 or e >= base.batch for e in base_elements) or any(e < 0 or e >= source.batch for e in source_elements):
        raise ValueError(f"elements out of range: base batch {base.batch}, source batch {source.batch}")
    num_steps = num_steps or len(base.latents)
    latents = torch.cat([base.latents[start_step][e : e + 1] for e in base_elements])
    conditioning = stack_conditioning([repeat_conditioning(base_conditioning, e, 1) for e in base_elements])
    resume = None
    if start_step in base.schedulers:
        resume = select_scheduler_rows(base.schedulers[start_step], base_elements, base.batch)
    patcher = Patcher(adapter, source, row_patches, source_elements)
    return sample(
        adapter, latents, conditioning, num_steps, hooks=[patcher], scheduler=adapter.make_scheduler(shift),
        start_step=start_step, resume_scheduler=resume, backend=backend,
    ).latents  # fmt: skip
