"""Activation patching: one mechanism, used by every causal experiment.

A ``RunCache`` records a run: the latent x_s entering every step and the outputs of chosen sites
(per step and per transformer call, all guidance rows). ``run_patched`` then samples a batch whose
rows each carry their own patches (step, site, token region): at that step, the site's output on
that row is overwritten with the source run's, and sampling continues unpatched. A row patched
first at step s starts from the base run's cached x_s, so a sweep over (step, layer) costs one
partial trajectory per step, with every layer of that step in one batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from interp.models.base import VideoDiTAdapter, first_tensor
from interp.sampling import AdapterDenoiser, StepState


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


def _replace_first(output, new: torch.Tensor):
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    raise TypeError(f"cannot patch a module output of type {type(output).__name__}")


def _rows(branches: dict[str, slice], element: int) -> dict[str, int]:
    return {name: (sl.start or 0) + element for name, sl in branches.items()}


class _SteppedDenoiser(AdapterDenoiser):
    """Runs the adapter's transformer calls for a step with per-call forward hooks."""

    def _run_calls(self, latents, timestep, conditioning, hooks_for_call) -> torch.Tensor:
        calls = self.adapter.forward_calls(latents, timestep, conditioning)
        outputs = []
        for j, call in enumerate(calls):
            handles = hooks_for_call(j, call)
            try:
                outputs.append(call.run())
            finally:
                for h in handles:
                    h.remove()
        return self.adapter.combine(calls, outputs)


class _Recorder(_SteppedDenoiser):
    def __init__(self, adapter: VideoDiTAdapter, sites: Sequence[str], steps: set[int] | None):
        super().__init__(adapter)
        self.sites = list(sites)
        self.steps = steps
        self.acts: dict[tuple[int, int, str], torch.Tensor] = {}
        self.branches: dict[tuple[int, int], dict[str, slice]] = {}
        self.latents: dict[int, torch.Tensor] = {}
        self.x0: dict[int, torch.Tensor] = {}

    def before_model(self, state: StepState) -> None:
        super().before_model(state)
        self.latents[state.step] = state.latents.clone()

    def after_step(self, state: StepState) -> None:
        self.x0[state.step] = state.x0_hat.clone()

    def predict(self, latents, timestep, conditioning) -> torch.Tensor:
        step = self.step
        record = self.steps is None or step in self.steps

        def hooks(j, call):
            self.branches[(step, j)] = call.branches
            if not record:
                return []
            handles = []
            for site in self.sites:
                if self.adapter.site_path(site)[0] != call.expert:
                    continue

                def save(_m, _i, output, site=site, j=j):
                    self.acts[(step, j, site)] = first_tensor(output).detach().clone()

                handles.append(self.adapter.site_module(site).register_forward_hook(save))
            return handles

        return self._run_calls(latents, timestep, conditioning, hooks)


def record_run(
    adapter: VideoDiTAdapter,
    noise: torch.Tensor,
    conditioning,
    num_steps: int,
    sites: Sequence[str],
    steps: Sequence[int] | None = None,
    shift: float | None = None,
    start_step: int = 0,
) -> RunCache:
    """Sample once, keeping x_s of every step and the chosen sites' outputs at ``steps`` (default all).
    ``start_step`` > 0: ``noise`` is the latent x_s of a trajectory resumed at that step."""
    recorder = _Recorder(adapter, sites, None if steps is None else set(steps))
    result = recorder.run(noise, conditioning, num_steps, shift, start_step)
    return RunCache(recorder.latents, recorder.acts, recorder.branches, recorder.x0, result.latents, noise.shape[0])


class _Patcher(_SteppedDenoiser):
    def __init__(
        self,
        adapter: VideoDiTAdapter,
        source: RunCache,
        row_patches: Sequence[Sequence[Patch]],
        source_elements: Sequence[int],
    ):
        super().__init__(adapter)
        self.source = source
        self.row_patches = row_patches
        self.source_elements = source_elements
        by_step: dict[int, dict[str, list[tuple[int, Patch]]]] = {}
        for row, patches in enumerate(row_patches):
            for p in patches:
                by_step.setdefault(p.step, {}).setdefault(p.site, []).append((row, p))
        self.by_step = by_step

    def predict(self, latents, timestep, conditioning) -> torch.Tensor:
        step = self.step
        todo = self.by_step.get(step, {})

        def hooks(j, call):
            handles = []
            for site, entries in todo.items():
                if self.adapter.site_path(site)[0] != call.expert:
                    continue
                key = (step, j, site)
                if key not in self.source.acts:
                    raise ValueError(f"the source run has no {site!r} at step {step} (call {j}) to patch in")
                src = self.source.acts[key]
                src_branches = self.source.branches[(step, j)]

                def patch(_m, _i, output, entries=entries, src=src, src_branches=src_branches, call=call):
                    out = first_tensor(output).clone()
                    for row, p in entries:
                        dst_rows = _rows(call.branches, row)
                        src_rows = _rows(src_branches, self.source_elements[row])
                        for branch, dst in dst_rows.items():
                            s_row = src_rows[branch]
                            if p.tokens is None:
                                out[dst] = src[s_row]
                            else:
                                idx = torch.as_tensor(p.tokens, device=out.device)
                                out[dst, idx] = src[s_row, idx]
                    return _replace_first(output, out)

                handles.append(self.adapter.site_module(site).register_forward_hook(patch))
            return handles

        return self._run_calls(latents, timestep, conditioning, hooks)


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
) -> torch.Tensor:
    """Final latents of one batch of patched runs.

    Row r continues base element ``base_elements[r]`` (default 0) from its cached x_s at
    ``start_step`` (default: the row patches' earliest step), and takes patched values from source
    element ``source_elements[r]`` (default 0). ``base_conditioning`` is the base run's batched
    conditioning.
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
    base_shape, source_shape = (
        next(iter(base.latents.values())).shape[1:],
        next(iter(source.latents.values())).shape[1:],
    )
    if base_shape != source_shape:
        raise ValueError(
            f"base and source runs have different latent shapes: {tuple(base_shape)} vs {tuple(source_shape)}"
        )
    if any(e < 0 or e >= base.batch for e in base_elements) or any(e < 0 or e >= source.batch for e in source_elements):
        raise ValueError(f"elements out of range: base batch {base.batch}, source batch {source.batch}")
    num_steps = num_steps or len(base.latents)
    latents = torch.cat([base.latents[start_step][e : e + 1] for e in base_elements])
    conditioning = stack_conditioning([repeat_conditioning(base_conditioning, e, 1) for e in base_elements])
    patcher = _Patcher(adapter, source, row_patches, source_elements)
    return patcher.run(latents, conditioning, num_steps, shift, start_step).latents


def projection_score(final: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor) -> np.ndarray:
    """Per row: where ``final`` lies between the corrupted (0) and the clean (1) final latent."""
    diff = (clean - corrupted).flatten(1).double()
    moved = (final - corrupted).flatten(1).double()
    denom = (diff**2).sum(1)
    return torch.where(denom > 0, (moved * diff).sum(1) / denom.clamp_min(1e-300), torch.nan).numpy()
