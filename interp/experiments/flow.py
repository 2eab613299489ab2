"""Information flow: noise injected at step s, linear CKA between the perturbed and the clean run's
block outputs at every later (step, layer), and of x0_hat. The perturbed run resumes the clean one
at s with its scheduler state and the perturbed latent; that is an edit (``interp.execution.edits``),
so a multistep solver's history restarts at s and the solver steps from the perturbed latent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from activations.selection import parse_index_spec
from interp.analysis.similarity import linear_cka
from interp.execution.patching import RunCache, record_run
from interp.experiments import sweep
from interp.experiments._causal import CausalConfig, finite_or_none, source_runs, write_record
from interp.experiments.base import Experiment, register
from interp.experiments.executors import Sweep, executor_or_local
from interp.experiments.perturb import fresh_noise
from interp.validation import number


@dataclass
class FlowConfig(CausalConfig):
    field_rules = {"strength": number(0, 1, lo_open=True)}
    experiment = "flow"
    n: int = 8
    inject_steps: str = "all"
    layers: str = "all"
    strength: float = 1.0  # x_s <- sqrt(1 - a^2) x_s + a * fresh noise; 1.0 replaces x_s
    noise_seed: int = 12345

    cli_help = {
        **CausalConfig.cli_help,
        "inject_steps": "Steps at which noise is injected.",
        "layers": "Layers compared.",
        "strength": "x_s <- sqrt(1-a^2) x_s + a noise; 1 replaces x_s.",
        "noise_seed": "Seed of the injected noise.",
    }


@dataclass
class FlowResult:
    config: FlowConfig
    cka: object  # xarray DataArray (inject_step, step, layer), NaN before the injection
    x0_hat_cka: np.ndarray  # (inject_step, step)
    sensitivity: list[float]  # per injection step: mean 1 - CKA over later states


@dataclass
class CleanRun:
    """What every injection is compared with: the clean run and the compared layers."""

    cfg: FlowConfig
    adapter: object
    clean: object  # RunCache with the compared block outputs
    cond: object
    num_steps: int
    injects: list[int]
    layers: list[int]


def run_flow(cfg: FlowConfig, adapter=None, progress: bool = True, executor=None) -> FlowResult:
    """CKA of every later block output per injection step. ``executor``: where the perturbed runs go
    (this process by default, or a ``RayExecutor``); a unit is one injection step."""
    import xarray as xr

    r = _prepare(cfg, adapter)
    rows = executor_or_local(executor).map(SWEEP, cfg, r, r.injects, progress, "information flow")
    cka = np.stack([row[0] for row in rows]) if rows else np.full((0, r.num_steps, len(r.layers)), np.nan)
    x0_cka = np.stack([row[1] for row in rows]) if rows else np.full((0, r.num_steps), np.nan)
    grid = xr.DataArray(
        cka, dims=("inject_step", "step", "layer"),
        coords={"inject_step": r.injects, "step": list(range(r.num_steps)), "layer": r.layers},
        name="linear CKA to the clean run",
    )  # fmt: skip
    sensitivity = [float(np.nanmean(1 - cka[i])) for i in range(len(r.injects))]
    return FlowResult(cfg, grid, x0_cka, sensitivity)


def _prepare(cfg: FlowConfig, adapter) -> CleanRun:
    """Every check, then the clean run with the compared layers' block outputs."""
    chosen: dict = {}

    def sites_for(model, num_steps: int, shape: tuple) -> list[str]:
        chosen["injects"] = parse_index_spec(cfg.inject_steps, num_steps, "step")
        chosen["layers"] = parse_index_spec(cfg.layers, model.num_blocks(next(iter(model.transformers()))), "layer")
        return sweep.block_sites(model, chosen["layers"], None)

    runs = source_runs(cfg, adapter, sites_for)
    return CleanRun(cfg, runs.adapter, runs.run, runs.conditioning, runs.num_steps, chosen["injects"],
                    chosen["layers"])  # fmt: skip


def _inject_at(r: CleanRun, s: int) -> tuple[np.ndarray, np.ndarray]:
    """The unit of work: noise injected at step ``s``; CKA per (step, layer) of the conditional
    branch's block outputs (tokens of every video as samples) and of x0_hat (latent positions of
    every video as samples, channels as features), per step (NaN before ``s``)."""
    adapter, clean, num_steps, a = r.adapter, r.clean, r.num_steps, r.cfg.strength
    groups = sweep.layer_sites(adapter, r.layers, None)  # a layer in every expert: the one that ran
    cka = np.full((num_steps, len(groups)), np.nan)
    x0_cka = np.full(num_steps, np.nan)
    fresh = fresh_noise(clean.latents[s].shape, r.cfg.noise_seed, s).to(clean.latents[s])
    start = (1 - a * a) ** 0.5 * clean.latents[s] + a * fresh
    perturbed = record_run(adapter, start, r.cond, num_steps, sweep.block_sites(adapter, r.layers, None), start_step=s,
                           resume_scheduler=clean.schedulers.get(s), backend=r.cfg.backend)  # fmt: skip
    for step in range(s, num_steps):
        for k, group in enumerate(groups):
            site = sweep.active_site(clean, step, group)
            if site is None:
                continue
            x = conditional_rows(clean, step, site).flatten(0, -2)
            y = conditional_rows(perturbed, step, site).flatten(0, -2)
            cka[step, k] = linear_cka(x, y)
        x0_cka[step] = linear_cka(latent_positions(clean.x0_hat[step], adapter.latent_channel_axis),
                                  latent_positions(perturbed.x0_hat[step], adapter.latent_channel_axis))  # fmt: skip
    return cka, x0_cka


def conditional_rows(run: RunCache, step: int, site: str) -> torch.Tensor:
    """A site's output at ``step`` on the conditional guidance branch only: families that batch both
    halves in one call (CogVideoX, LTX) would otherwise mix the unconditional rows into the CKA."""
    for (s, call), branches in sorted(run.branches.items()):
        if s == step and "cond" in branches and (step, call, site) in run.acts:
            return run.acts[(step, call, site)][branches["cond"]]
    raise KeyError(f"no conditional call recorded {site!r} at step {step}")


def latent_positions(latents: torch.Tensor, channel_axis: int) -> torch.Tensor:
    """(B, *latent) as (B x positions, channels): the positions of every video as CKA's samples, so
    one video is enough and two videos do not make CKA 1 by construction."""
    moved = latents.movedim(1 + channel_axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def save_flow(result: FlowResult, cfg: FlowConfig, out):
    from pathlib import Path

    from interp.report.causal_figures import flow_figure

    cka = result.cka
    record = {
        "dims": list(cka.dims),
        "coords": {d: [int(v) for v in cka.coords[d].values] for d in cka.dims},
        "cka": finite_or_none(cka.values),
        "x0_hat_cka": finite_or_none(result.x0_hat_cka),
        "sensitivity": result.sensitivity,
    }
    manifest = write_record(out, cfg, record, "flow", "information flow (CKA)", "flow")
    figure = flow_figure(cka, result.sensitivity, Path(out) / "flow.png")
    manifest.add(figure, "figure", "information flow: linear CKA to the clean run after noise at step s")
    if result.sensitivity:
        k = int(np.nanargmax(np.array(result.sensitivity, dtype=float)))
        steps = record["coords"]["inject_step"]
        manifest.headline.append(
            f"most sensitive injection step: {steps[k]} "
            f"(mean 1 - CKA of later block outputs {result.sensitivity[k]:.3f})"
        )
    manifest.write(out)
    return manifest


def demo(ctx) -> None:
    """The study: noise (strength 0.5) injected at every step, CKA of every later block output."""
    cfg = FlowConfig(model=ctx.model, n=ctx.options["n_causal"] * 2, size=ctx.size, num_frames=ctx.frames,
                     strength=0.5)
    result = run_flow(cfg, ctx.adapter, progress=False)
    save_flow(result, result.config, ctx.out / "causal" / "flow")
    sens = result.sensitivity
    steps = [int(s) for s in result.cka.inject_step.values]
    ctx.headline.append(
        f"information flow: later block outputs most sensitive to noise injected at step {steps[int(np.argmax(sens))]} "
        f"(1 - CKA {max(sens):.2f}; at step {steps[0]}: {sens[0]:.2f})"
    )


SWEEP = Sweep("flow", FlowConfig, _prepare, _inject_at)
EXPERIMENT = register(Experiment("flow", FlowConfig, run_flow, save_flow, demo=demo, demo_order=63))
