"""The one denoising loop: a diffusers flow-matching scheduler, per-step hooks, x0_hat.

Every analysis (tracing, patching, noise injection, seed ensembles) hangs on this loop through
hooks instead of writing its own. A model enters through an adapter that has
``predict(latents, timestep, conditioning) -> velocity``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SchedulerMixin
from tqdm.auto import tqdm


class Denoiser(Protocol):
    def predict(self, latents: torch.Tensor, timestep: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor: ...


@dataclass
class StepState:
    """What a hook sees at one denoising step. Tensors are batched over videos/seeds."""

    step: int
    num_steps: int
    timestep: torch.Tensor  # scalar, scheduler units (sigma * 1000 for flow matching)
    sigma: float
    sigma_next: float
    latents: torch.Tensor  # x_t, the input of this step
    model_output: torch.Tensor | None = None  # predicted velocity v
    x0_hat: torch.Tensor | None = None  # x_t - sigma * v
    next_latents: torch.Tensor | None = None  # x_{t+1} after the scheduler step


class StepHook:
    """Override either method; returning a tensor replaces the latents at that point."""

    def before_model(self, state: StepState) -> torch.Tensor | None:
        """Called with ``state.latents`` set; a returned tensor replaces x_t for this step."""
        return None

    def after_step(self, state: StepState) -> torch.Tensor | None:
        """Called with every field set; a returned tensor replaces the next step's latents."""
        return None


class _CallableHook(StepHook):
    def __init__(self, fn: Callable[[StepState], torch.Tensor | None]):
        self.fn = fn

    def after_step(self, state: StepState) -> torch.Tensor | None:
        return self.fn(state)


HookLike = StepHook | Callable[[StepState], torch.Tensor | None]


class AdapterDenoiser(StepHook):
    """Base of denoisers that wrap an adapter and act per step (tracing, patching, recording).

    ``run`` gives the instance to ``sample`` both as the model and as a hook: as a hook it learns
    the current step; as the model it delegates the scheduler's timesteps and x0_hat to the adapter.
    """

    def __init__(self, adapter):
        self.adapter = adapter
        self.step = -1

    def run(
        self, latents: torch.Tensor, conditioning, num_steps: int, shift: float | None = None, start_step: int = 0
    ) -> SampleResult:
        """Sample without gradients from ``latents`` (x at ``start_step``) with the adapter's scheduler."""
        with torch.no_grad():
            return sample(
                self,
                latents,
                conditioning,
                num_steps,
                hooks=[self],
                scheduler=self.adapter.make_scheduler(shift),
                start_step=start_step,
            )

    def before_model(self, state: StepState) -> torch.Tensor | None:
        self.step = state.step
        return None

    def set_timesteps(self, scheduler, num_steps: int, device=None) -> None:
        prepare_timesteps(self.adapter, scheduler, num_steps, device)

    def x0_hat(self, latents, output, timestep, sigma, scheduler) -> torch.Tensor:
        to_x0 = getattr(self.adapter, "x0_hat", None)
        if to_x0 is None:
            return flow_x0_hat(latents, output, sigma)
        return to_x0(latents, output, timestep, sigma, scheduler)


def make_scheduler(shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    """The flow-matching Euler scheduler used by Wan-style models (sigma in [0, 1])."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def flow_x0_hat(latents: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """Flow matching: x_s = (1 - s) x0 + s noise and v = noise - x0 give x0 = x_s - s v."""
    return latents - sigma * velocity


def scheduler_sigmas(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Noise level per step plus a final 0: the scheduler's own sigmas for flow matching, and
    sqrt(1 - alpha_bar_t) for DDPM-family schedulers (the share of noise in x_t)."""
    if getattr(scheduler, "sigmas", None) is not None and len(scheduler.sigmas) == len(timesteps) + 1:
        return scheduler.sigmas.float().cpu()
    alpha_bar = scheduler.alphas_cumprod[timesteps.long().cpu()]
    return torch.cat([(1 - alpha_bar).sqrt(), torch.zeros(1)]).float()


def prepare_timesteps(model, scheduler, num_steps: int, device=None) -> None:
    """``scheduler.set_timesteps``, or the model's own way of doing it (LTX: custom sigmas and mu)."""
    custom = getattr(model, "set_timesteps", None)
    if custom is not None:
        custom(scheduler, num_steps, device)
    else:
        scheduler.set_timesteps(num_steps, device=device)


def initial_noise(
    seeds: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One independent N(0, I) draw per seed, so a video's noise does not depend on its batch."""
    draws = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(draws).to(device=device, dtype=dtype)


@dataclass
class SampleResult:
    latents: torch.Tensor  # final x_0, (B, C, T, H, W)
    timesteps: torch.Tensor
    sigmas: torch.Tensor  # num_steps + 1 values, the last is 0


@torch.no_grad()
def sample(
    model: Denoiser,
    noise: torch.Tensor,
    conditioning: torch.Tensor | Any,
    num_steps: int = 20,
    shift: float = 1.0,
    hooks: Sequence[HookLike] = (),
    scheduler: SchedulerMixin | None = None,
    start_step: int = 0,
    progress: bool = False,
) -> SampleResult:
    """Denoise ``noise`` (x at ``start_step``) to a clean latent, calling ``hooks`` at every step.

    ``conditioning`` is whatever the model's ``predict`` takes (a tensor for the testbed, a
    dataclass with ``batch_size`` for pipeline adapters). ``scheduler`` defaults to flow-matching
    Euler with ``shift``. ``start_step`` > 0 resumes a trajectory from a cached latent x_s.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 <= start_step < num_steps:
        raise ValueError(f"start_step must be in [0, {num_steps - 1}], got {start_step}")
    cond_batch = conditioning.shape[0] if isinstance(conditioning, torch.Tensor) else conditioning.batch_size
    if noise.shape[0] != cond_batch:
        raise ValueError(f"batch of noise ({noise.shape[0]}) and conditioning ({cond_batch}) differ")
    scheduler = scheduler or make_scheduler(shift)
    prepare_timesteps(model, scheduler, num_steps, noise.device)
    hook_objs = [h if isinstance(h, StepHook) else _CallableHook(h) for h in hooks]
    timesteps = scheduler.timesteps
    sigmas = scheduler_sigmas(scheduler, timesteps)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start_step)
    elif start_step:
        raise ValueError(f"{type(scheduler).__name__} cannot resume a trajectory from step {start_step}")
    to_x0 = getattr(model, "x0_hat", None)
    latents = noise
    for i in tqdm(range(start_step, num_steps), disable=not progress, desc="denoising", leave=False):
        t = timesteps[i]
        state = StepState(i, num_steps, t, float(sigmas[i]), float(sigmas[i + 1]), latents)
        for hook in hook_objs:
            replaced = hook.before_model(state)
            if replaced is not None:
                state.latents = replaced
        v = model.predict(state.latents, t, conditioning)
        state.model_output = v
        if to_x0 is None:
            state.x0_hat = flow_x0_hat(state.latents, v, state.sigma)
        else:
            state.x0_hat = to_x0(state.latents, v, t, state.sigma, scheduler)
        state.next_latents = scheduler.step(v, t, state.latents, return_dict=False)[0]
        for hook in hook_objs:
            replaced = hook.after_step(state)
            if replaced is not None:
                state.next_latents = replaced
        latents = state.next_latents
    return SampleResult(latents, timesteps.cpu(), sigmas)
