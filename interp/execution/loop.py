"""The one denoising loop: a diffusers scheduler, per-step hooks, x0_hat, one call runner.

Every analysis (tracing, recording, patching, noise injection, seed ensembles) hangs on this loop
through ``StepHook``s instead of writing its own: a hook may replace the latents before the model
or after the scheduler step, and may ask for ``SiteAction``s (save / replace a named site's output)
on each transformer call of a step. A model enters through an adapter (``forward_calls`` +
``combine``); any object with ``predict(latents, timestep, conditioning)`` samples too (flow
matching assumed), without site actions.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SchedulerMixin
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from interp.execution.edits import expect, step_from
from interp.execution.runner import CallRunner, SiteAction
from interp.models.base import ForwardCall, VideoDiTAdapter


@dataclass
class StepState:
    """What a hook sees at one denoising step. Tensors are batched over videos/seeds."""

    step: int
    num_steps: int
    timestep: torch.Tensor  # scalar, scheduler units (sigma * 1000 for flow matching)
    sigma: float
    sigma_next: float
    latents: torch.Tensor  # x_t, the input of this step
    model_output: torch.Tensor | None = None  # predicted velocity v (or the family's prediction)
    x0_hat: torch.Tensor | None = None  # the clean-sample estimate
    next_latents: torch.Tensor | None = None  # x_{t+1} after the scheduler step
    scheduler: SchedulerMixin | None = None  # as it stands before this step's ``scheduler.step``


class StepHook:
    """Override any method; returning a tensor from ``before_model`` / ``after_step`` replaces the latents.

    A replaced latent is an edit of the trajectory: the loop makes the scheduler step from it exactly,
    restarting a multistep solver's history (``interp.execution.edits``); a returned tensor equal to
    the one it replaces changes nothing."""

    def before_model(self, state: StepState) -> torch.Tensor | None:
        """Called with ``state.latents`` set; a returned tensor replaces x_t for this step."""
        return None

    def site_actions(self, state: StepState, index: int, call: ForwardCall) -> dict[str, SiteAction]:
        """Save / replace functions for the sites of transformer call ``index`` of this step."""
        return {}

    def after_step(self, state: StepState) -> torch.Tensor | None:
        """Called with every field set; a returned tensor replaces the next step's latents."""
        return None


class KeepX0(StepHook):
    """x0_hat (float32, on the host) and sigma after the model calls of the chosen steps (0-based;
    None: every step)."""

    def __init__(self, steps: Sequence[int] | None = None):
        self.steps = None if steps is None else set(steps)
        self.x0: dict[int, np.ndarray] = {}
        self.sigmas: dict[int, float] = {}

    def after_step(self, state: StepState) -> None:
        if self.steps is None or state.step in self.steps:
            self.x0[state.step] = state.x0_hat.detach().float().cpu().numpy()
            self.sigmas[state.step] = state.sigma

    def trajectories(self) -> np.ndarray:
        """(batch, kept steps, *latent), steps in order."""
        return np.stack([self.x0[s] for s in sorted(self.x0)], 1)


class _CallableHook(StepHook):
    def __init__(self, fn: Callable[[StepState], torch.Tensor | None]):
        self.fn = fn

    def after_step(self, state: StepState) -> torch.Tensor | None:
        return self.fn(state)


HookLike = StepHook | Callable[[StepState], torch.Tensor | None]


def make_scheduler(shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    """The flow-matching Euler scheduler used by Wan-style models (sigma in [0, 1])."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def scheduler_sigmas(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Noise level per step plus a final 0: the scheduler's own sigmas for flow matching, and
    sqrt(1 - alpha_bar_t) for DDPM-family schedulers (the share of noise in x_t)."""
    if getattr(scheduler, "sigmas", None) is not None and len(scheduler.sigmas) == len(timesteps) + 1:
        return scheduler.sigmas.float().cpu()
    alpha_bar = scheduler.alphas_cumprod[timesteps.long().cpu()]
    return torch.cat([(1 - alpha_bar).sqrt(), torch.zeros(1)]).float()


def initial_noise(
    seeds: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One independent N(0, I) draw per seed, so a video's noise does not depend on its batch."""
    draws = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(draws).to(device=device, dtype=dtype)


def _per_row(value, batch: int) -> bool:
    """A tensor of a scheduler's per-row history: one row per batch element (not its sigma table)."""
    return isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == batch


def scheduler_row_tensors(scheduler: SchedulerMixin, batch: int) -> list[torch.Tensor]:
    """The tensors of a scheduler's per-row history (a multistep solver's previous outputs, last sample)."""
    values = [v for v in vars(scheduler).values() if isinstance(v, torch.Tensor | list)]
    return [x for v in values for x in (v if isinstance(v, list) else [v]) if _per_row(x, batch)]


def select_scheduler_rows(scheduler: SchedulerMixin, rows: Sequence[int], batch: int) -> SchedulerMixin:
    """A copy of a scheduler whose per-row history (``scheduler_row_tensors``) keeps only ``rows``,
    in that order."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    out = copy.deepcopy(scheduler)

    def pick(value):
        if _per_row(value, batch):
            return value[index.to(value.device)]
        if isinstance(value, list):
            return [pick(v) for v in value]
        return value

    for key, value in vars(out).items():
        if isinstance(value, torch.Tensor | list):
            setattr(out, key, pick(value))
    return out


@dataclass
class SampleResult:
    latents: torch.Tensor  # final x_0, (B, C, T, H, W)
    timesteps: torch.Tensor
    sigmas: torch.Tensor  # num_steps + 1 values, the last is 0
    scheduler: SchedulerMixin | None = None  # as it stands after the last step run (to resume there)


def _batch_size(conditioning) -> int:
    return conditioning.shape[0] if isinstance(conditioning, torch.Tensor) else conditioning.batch_size


@torch.no_grad()
def sample(
    model,
    noise: torch.Tensor,
    conditioning: torch.Tensor | Any,
    num_steps: int = 20,
    shift: float | None = None,
    hooks: Sequence[HookLike] = (),
    scheduler: SchedulerMixin | None = None,
    start_step: int = 0,
    progress: bool = False,
    backend: str = "hooks",
    resume_scheduler: SchedulerMixin | None = None,
    end_step: int | None = None,
) -> SampleResult:
    """Denoise ``noise`` (x at ``start_step``) to a clean latent, calling ``hooks`` at every step.

    ``model``: an adapter, or any object with ``predict``. ``scheduler`` defaults to the adapter's
    ``make_scheduler(shift)`` (None: the family's own; flow-matching Euler for other models).
    ``start_step`` > 0 resumes a trajectory from a cached latent x_s; ``resume_scheduler`` is the
    scheduler as it stood before step s in the run being resumed (``StepState.scheduler``), so
    multistep solvers continue with their history instead of restarting it; when ``noise`` is not
    the latent that run had at s (an edit), the history restarts and the solver steps from ``noise``
    (``interp.execution.edits``). ``backend``: how site
    actions run (nnsight or hooks). ``end_step`` stops before that step: ``latents`` is then x at
    ``end_step`` and ``scheduler`` resumes it (``start_step=end_step, resume_scheduler=...``).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 <= start_step < num_steps:
        raise ValueError(f"start_step must be in [0, {num_steps - 1}], got {start_step}")
    end_step = num_steps if end_step is None else end_step
    if not start_step < end_step <= num_steps:
        raise ValueError(f"end_step must be in [{start_step + 1}, {num_steps}], got {end_step}")
    if noise.shape[0] != _batch_size(conditioning):
        raise ValueError(f"batch of noise ({noise.shape[0]}) and conditioning ({_batch_size(conditioning)}) differ")
    adapter = model if isinstance(model, VideoDiTAdapter) else None
    if resume_scheduler is not None:
        # Index-keeping schedulers (Euler, UniPC) must stand at ``start_step``; DDIM keeps none.
        at = getattr(resume_scheduler, "step_index", None)
        at = getattr(resume_scheduler, "begin_index", None) if at is None else at
        if at not in (None, start_step):
            raise ValueError(f"the resume scheduler stands at step {at}, not {start_step}")
        scheduler = copy.deepcopy(resume_scheduler)
    else:
        if scheduler is None:
            scheduler = adapter.make_scheduler(shift) if adapter is not None else make_scheduler(shift or 1.0)
        if adapter is not None:
            adapter.set_timesteps(scheduler, num_steps, noise.device)
        else:
            scheduler.set_timesteps(num_steps, device=noise.device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start_step)
        elif start_step:
            raise ValueError(f"{type(scheduler).__name__} cannot resume a trajectory from step {start_step}")
    hook_objs = [h if isinstance(h, StepHook) else _CallableHook(h) for h in hooks]
    runner = CallRunner(adapter, backend) if adapter is not None else None
    # numpy's OpenBLAS held to one thread while sampling: hooks run numpy between torch's kernels, and
    # OpenBLAS's idle threads spin on the cores torch's threads need (2 cores: a trace ran 2.6-3x slower
    # than untraced with them, 1.05x with one; benchmarks/trace_overhead.py). torch's BLAS is not touched.
    with threadpool_limits(limits=1, user_api="blas"):
        latents = noise
        timesteps = scheduler.timesteps
        sigmas = scheduler_sigmas(scheduler, timesteps)
        for i in tqdm(range(start_step, end_step), disable=not progress, desc="denoising", leave=False):
            t = timesteps[i]
            state = StepState(i, num_steps, t, float(sigmas[i]), float(sigmas[i + 1]), latents, scheduler=scheduler)
            for hook in hook_objs:
                replaced = hook.before_model(state)
                if replaced is not None:
                    state.latents = replaced
            # The one rule for edits (interp.execution.edits): a replaced x_s, here or by the previous
            # step's hooks, or a resumed run's edited start, restarts a multistep solver's history.
            step_from(scheduler, state.latents)
            if adapter is None:
                v = model.predict(state.latents, t, conditioning)
                state.x0_hat = state.latents - state.sigma * v
            else:
                calls = adapter.forward_calls(state.latents, t, conditioning)
                outputs = []
                for j, call in enumerate(calls):
                    actions: dict[str, list[SiteAction]] = {}
                    for hook in hook_objs:
                        for site, action in hook.site_actions(state, j, call).items():
                            actions.setdefault(site, []).append(action)
                    n_video = math.prod(adapter.token_grid(tuple(state.latents.shape[1:]), call.expert))
                    outputs.append(runner.run(call, actions, n_video))
                v = adapter.combine(calls, outputs)
                state.x0_hat = adapter.x0_hat(state.latents, v, t, state.sigma, scheduler)
            state.model_output = v
            state.next_latents = scheduler.step(v, t, state.latents, return_dict=False)[0]
            expect(scheduler, state.next_latents)  # the scheduler's own output is what it steps from next
            for hook in hook_objs:
                replaced = hook.after_step(state)
                if replaced is not None:
                    state.next_latents = replaced
            step_from(scheduler, state.next_latents)  # so a returned (or recorded) scheduler is consistent
            latents = state.next_latents
    return SampleResult(latents, timesteps.cpu(), sigmas, scheduler)
