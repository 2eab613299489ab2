"""The study's layer-wise latent swap: at step s only layer k's tokens come from a run on another
input; how often the answer becomes the other input's (testbed), or where the output lies between
the base run's (0) and the other run's (1) final latents (a pipeline model, no verifier)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from activations.selection import parse_index_spec
from interp.experiments import sweep
from interp.experiments._causal import (
    CausalConfig,
    GridResult,
    PairRuns,
    finite_or_none,
    first_pair_videos,
    grid,
    maze_runs,
    pipeline_runs,
    save_grid,
)
from interp.experiments.base import Experiment, register
from interp.experiments.executors import Sweep, executor_or_local
from interp.sources import pipeline_field
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
    pipeline: dict | None = pipeline_field()  # a real model: PipelineInputs fields with samples [base, other]
    backend: str = "hooks"
    max_batch: int | None = None  # rows (pairs x layers) per model call within a step; None: all of them

    cli_help = {
        **CausalConfig.cli_help,
        "steps": "Steps at which to swap (the study: the first step).",
        "max_batch": "Rows (pairs x layers) per model call within a step, to fit a device; default all.",
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


def run_swap(cfg: SwapConfig, adapter=None, progress: bool = True, executor=None) -> GridResult:
    """Latent swapping. Testbed: per (step, layer) the share of mazes whose answer became the other
    maze's solution (``extra['mean_score']``: the mean normalised score as well); a pipeline model:
    where the output lies between the base run's (0) and the other run's (1) final latents.
    ``executor``: where the steps run (this process by default, or a ``RayExecutor``)."""
    context = _prepare(cfg, adapter)
    _, r, extra = context
    finals = torch.stack(executor_or_local(executor).map(SWEEP, cfg, context, r.steps, progress, "swap steps"), 1)
    scores = r.metric(finals, r.clean_final, r.corr_final)
    more = {name: fn(finals) for name, fn in extra.items()}
    videos = first_pair_videos(r, finals, scores, ("other", "base", "swapped"))
    return GridResult(cfg, grid(scores.mean(0), r.steps, r.layers, r.name), scores, r.name, more, videos)


def _prepare(cfg: SwapConfig, adapter) -> tuple[SwapConfig, PairRuns, dict]:
    """Every check, then the recorded base and other runs."""
    if cfg.max_batch is not None and cfg.max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {cfg.max_batch}")
    return cfg, *(_pipeline_pairs(cfg) if cfg.pipeline is not None else _maze_pairs(cfg, adapter))


def _swap_at(context: tuple[SwapConfig, PairRuns, dict], step: int) -> torch.Tensor:
    """The unit of work: every (pair, layer) row swapped at ``step``, one batch."""
    cfg, r, _ = context
    return sweep.patch_step(r.adapter, r.base, r.base_cond, r.source, step, r.groups, r.tokens, r.num_steps,
                            False, r.pairs, cfg.backend, cfg.max_batch)  # fmt: skip


def _maze_pairs(cfg: SwapConfig, adapter) -> tuple[PairRuns, dict]:
    adapter = cfg.testbed(adapter)
    num_steps = cfg.check_common(adapter)
    steps = parse_index_spec(cfg.steps, num_steps, "step")
    layers = parse_index_spec(cfg.layers, adapter.num_blocks(), "layer")
    groups = sweep.layer_sites(adapter, layers, None)
    sites = [site for group in groups for site in group]
    base_mazes = [maze_task.generate_maze(cfg.size, cfg.first_seed + i) for i in range(cfg.n)]
    others = _others(cfg, base_mazes)
    base_run, base_cond = maze_runs(adapter, base_mazes, cfg.frames, num_steps, sites, cfg.backend)
    other_run, _ = maze_runs(adapter, others, cfg.frames, num_steps, sites, cfg.backend)

    def flipped(finals, other_final, base_final):
        return maze_scoring.answer_matches(finals, others)

    def mean_score(finals):
        scores = maze_scoring.MazePairMetric(others, base_mazes)(finals, other_run.final, base_run.final)
        with warnings.catch_warnings():  # pairs the model answers alike are NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return finite_or_none(np.nanmean(scores, 0))

    runs = PairRuns(adapter, base_run, base_cond, other_run, None, other_run.final, base_run.final, num_steps, steps,
                    layers, groups, [None] * cfg.n, flipped, "share flipped to the other maze's answer")  # fmt: skip
    return runs, {"mean_score": mean_score}


def _pipeline_pairs(cfg: SwapConfig) -> tuple[PairRuns, dict]:
    samples = (cfg.pipeline.get("samples") or []) if isinstance(cfg.pipeline, dict) else []
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
    run = runs.run  # element 0 is the base sample, element 1 the other: the other's sites go into the base
    name = "projection of the output toward the other run's (1) from the base run's (0)"
    pairs = PairRuns(runs.adapter, run, runs.conditioning, run, [(0, 1)], run.final[1:2], run.final[0:1],
                     runs.num_steps, chosen["steps"], chosen["layers"], chosen["groups"], [None],
                     sweep.latent_projection, name)  # fmt: skip
    return pairs, {}


def save_swap(result: GridResult, cfg: SwapConfig, out):
    title = f"latent swap with {cfg.other} inputs at steps {cfg.steps}"
    return save_grid(result, out, "swap", title, f"latent swap: {result.grid.name}")


def demo(ctx) -> None:
    """The study: one layer's tokens swapped at one step (0, 5, 10, 15)."""
    cfg = SwapConfig(model=ctx.model, n=ctx.options["n_causal"] * 2, size=ctx.size, frames=ctx.frames, steps="0-15:5")
    result = run_swap(cfg, ctx.adapter, progress=False)
    name = result.grid.name
    save_grid(result, ctx.out / "causal" / "swap", "swap", "latent swap", f"latent swap (one step, one layer): {name}")
    ctx.headline.append(
        f"swapping one layer's tokens at one step (0, 5, 10, 15): largest {name} {float(result.grid.max()):.2f}"
    )


SWEEP = Sweep("swap", SwapConfig, _prepare, _swap_at)
EXPERIMENT = register(Experiment("swap", SwapConfig, run_swap, save_swap, demo=demo, demo_order=61))
