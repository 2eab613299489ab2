"""The study's layer-wise latent swap: at step s only layer k's tokens come from a run on another
input; how often the answer becomes the other input's (testbed), or where the output lies between
the base run's (0) and the other run's (1) final latents (a pipeline model, no verifier)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from activations.selection import parse_index_spec
from interp.experiments import sweep
from interp.experiments._causal import (
    CausalConfig,
    GridResult,
    finite_or_none,
    grid,
    maze_runs,
    pipeline_runs,
    save_grid,
)
from interp.experiments.base import Experiment, register
from interp.tasks import maze as maze_task
from interp.tasks import maze_scoring


@dataclass
class SwapConfig(CausalConfig):
    experiment = "swap"
    n: int = 8
    first_seed: int = 0
    steps: str = "0"  # the study swaps at the first step
    layers: str = "all"
    other: str = "rewired"  # rewired (same maze, one wall moved) or an integer seed offset, e.g. "1000"
    pipeline: dict | None = None  # a real model: PipelineInputs fields with samples [base, other]
    backend: str = "hooks"

    cli_help = {
        **CausalConfig.cli_help,
        "steps": "Steps at which to swap (the study: the first step).",
        "layers": "Layers to swap.",
        "other": "The other input: rewired (one wall moved) or a seed offset.",
    }


def _others(cfg: SwapConfig, base_mazes):
    if cfg.other == "rewired":
        return [maze_task.rewire(m) for m in base_mazes]
    try:
        offset = int(cfg.other)
    except ValueError as err:
        raise ValueError(f"other must be 'rewired' or an integer seed offset, got {cfg.other!r}") from err
    if offset == 0:
        raise ValueError("other = 0 would swap a maze with itself")
    return [maze_task.generate_maze(cfg.size, m.seed + offset) for m in base_mazes]


def run_swap(cfg: SwapConfig, adapter=None, progress: bool = True) -> GridResult:
    """Latent swapping; per (step, layer) the share of mazes whose answer became the other maze's
    solution (``extra['mean_score']``: the mean normalised score as well)."""
    if cfg.pipeline is not None:
        return _run_pipeline(cfg, progress)
    adapter = cfg.testbed(adapter)
    num_steps = cfg.check_common(adapter)
    steps = parse_index_spec(cfg.steps, num_steps, "step")
    layers = parse_index_spec(cfg.layers, adapter.num_blocks(), "layer")
    sites = sweep.block_sites(adapter, layers, None)
    base_mazes = [maze_task.generate_maze(cfg.size, cfg.first_seed + i) for i in range(cfg.n)]
    others = _others(cfg, base_mazes)
    base_run, base_cond = maze_runs(adapter, base_mazes, cfg.frames, num_steps, sites, cfg.backend)
    other_run, _ = maze_runs(adapter, others, cfg.frames, num_steps, sites, cfg.backend)
    finals = sweep.patch_sweep(
        adapter, base_run, base_cond, other_run, steps, sites, [None] * cfg.n, num_steps, progress, backend=cfg.backend
    )
    flipped = maze_scoring.answer_matches(finals, others)
    scores = maze_scoring.MazePairMetric(others, base_mazes)(finals, other_run.final, base_run.final)
    name = "share flipped to the other maze's answer"
    meaning = "share of mazes whose answer became the other maze's solution"
    with warnings.catch_warnings():  # pairs the model answers alike are NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_score = finite_or_none(np.nanmean(scores, 0))
    return GridResult(cfg, grid(flipped.mean(0), steps, layers, name), flipped, meaning, {"mean_score": mean_score})


def _run_pipeline(cfg: SwapConfig, progress: bool) -> GridResult:
    samples = (cfg.pipeline or {}).get("samples") or [] if isinstance(cfg.pipeline, dict) else []
    if len(samples) != 2:
        raise ValueError("pipeline swapping needs samples: [base, other] (two sample folder names)")
    chosen: dict = {}

    def sites_for(adapter, inputs):
        expert = next(iter(adapter.transformers()))
        chosen["steps"] = parse_index_spec(cfg.steps, inputs.num_steps, "step")
        chosen["layers"] = parse_index_spec(cfg.layers, adapter.num_blocks(expert), "layer")
        chosen["groups"] = sweep.layer_sites(adapter, chosen["layers"], None)  # a layer in every expert
        return [site for group in chosen["groups"] for site in group]

    runs = pipeline_runs(cfg.pipeline, sites_for, cfg.backend)
    # Element 0 is the base sample, element 1 the other: patch the other's sites into the base.
    finals = sweep.patch_sweep(
        runs.adapter, runs.run, runs.conditioning, runs.run, chosen["steps"], chosen["groups"], [None],
        runs.num_steps, progress, False, [(0, 1)], backend=cfg.backend,
    )  # fmt: skip
    scores = sweep.latent_projection(finals, runs.run.final[1:2], runs.run.final[0:1])
    name = "projection of the output toward the other run's (1) from the base run's (0)"
    return GridResult(cfg, grid(scores[0], chosen["steps"], chosen["layers"], name), scores, name)


def save_swap(result: GridResult, cfg: SwapConfig, out):
    title = f"latent swap with {cfg.other} inputs at steps {cfg.steps}"
    return save_grid(result, out, "swap", title, f"latent swap: {result.grid.name}")


def demo(ctx) -> None:
    """The study: one layer's tokens swapped at one step (0, 5, 10, 15)."""
    result = run_swap(SwapConfig(n=ctx.options["n_causal"] * 2, steps="0-15:5"), ctx.adapter, progress=False)
    name = result.grid.name
    save_grid(result, ctx.out / "causal" / "swap", "swap", "latent swap", f"latent swap (one step, one layer): {name}")
    ctx.headline.append(
        f"swapping one layer's tokens at one step (0, 5, 10, 15): largest {name} {float(result.grid.max()):.2f}"
    )


EXPERIMENT = register(Experiment("swap", SwapConfig, run_swap, save_swap, demo=demo, demo_order=61))
