"""The study's layer-wise latent swap: at step s only layer k's tokens come from a run on another
input; how often the answer becomes the other input's (a maze model), or where the output lies between
the base run's (0) and the other run's (1) final latents (a model without a verifier)."""

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
    check_pairs,
    finite_or_none,
    first_pair_videos,
    grid,
    maze_truths,
    pair_videos,
    save_grid,
    source_runs,
)
from interp.experiments.base import Experiment, register
from interp.experiments.executors import Sweep, executor_or_local
from interp.tasks import maze as maze_task
from interp.tasks import maze_scoring


@dataclass
class SwapConfig(CausalConfig):
    experiment = "swap"
    n: int = 8  # testbed: base mazes first_seed ..; with data: the samples in pairs (samples A,B: A base, B other)
    steps: str = "0"  # the study swaps at the first step
    layers: str = "all"
    other: str = "rewired"  # rewired (same maze, one wall moved) or an integer seed offset, e.g. "1000"
    max_batch: int | None = None  # rows (pairs x layers) per model call within a step; None: all of them

    cli_help = {
        **CausalConfig.cli_help,
        "steps": "Steps at which to swap (the study: the first step).",
        "max_batch": "Rows (pairs x layers) per model call within a step, to fit a device; default all.",
        "layers": "Layers to swap.",
        "other": "The other input: rewired (one wall moved) or a seed offset.",
    }


def _other(cfg: SwapConfig):
    """The testbed's other maze of a base maze: rewired, or the maze ``other`` seeds away."""
    if cfg.other == "rewired":
        return maze_task.rewire
    offset = int(cfg.other)  # the validation layer allows 'rewired' or an integer
    if offset == 0:
        raise ValueError("other = 0 would swap a maze with itself")
    return lambda maze: maze_task.generate_maze(maze.size, maze.seed + offset)


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
    """Every check, then the recorded base and other runs. A maze model is scored by its verifier (the
    share flipped to the other maze's answer, and the mean normalised score); any other model by where its
    output lies between the base run's (0) and the other run's (1) final latents."""
    check_pairs(cfg)
    if cfg.data is not None and cfg.other != "rewired":
        raise ValueError("--other picks the testbed's generated twin; with --data the pairs are the samples named")
    other_maze = _other(cfg)
    adapter = adapter or cfg.load()
    base_videos, other_videos = pair_videos(cfg, adapter, other_maze)
    base_mazes, others = maze_truths(adapter, base_videos), maze_truths(adapter, other_videos)
    chosen: dict = {}

    def sites_for(model, num_steps: int, shape: tuple) -> list[str]:
        expert = next(iter(model.transformers()))
        chosen["steps"] = parse_index_spec(cfg.steps, num_steps, "step")
        chosen["layers"] = parse_index_spec(cfg.layers, model.num_blocks(expert), "layer")
        chosen["groups"] = sweep.layer_sites(model, chosen["layers"], None)  # a layer in every expert
        chosen["sites"] = [site for group in chosen["groups"] for site in group]
        return chosen["sites"]

    base = source_runs(cfg, adapter, sites_for, base_videos)
    other = source_runs(cfg, adapter, lambda *_: chosen["sites"], other_videos)
    common = (adapter, base.run, base.conditioning, other.run, None, other.run.final, base.run.final, base.num_steps,
              chosen["steps"], chosen["layers"], chosen["groups"], [None] * len(base_videos))  # fmt: skip
    if base_mazes is None or others is None:
        name = "projection of the output toward the other run's (1) from the base run's (0)"
        return cfg, PairRuns(*common, sweep.latent_projection, name), {}

    def flipped(finals, other_final, base_final):
        return maze_scoring.answer_matches(finals, others)

    def mean_score(finals):
        scores = maze_scoring.MazePairMetric(others, base_mazes)(finals, other.run.final, base.run.final)
        with warnings.catch_warnings():  # pairs the model answers alike are NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return finite_or_none(np.nanmean(scores, 0))

    return cfg, PairRuns(*common, flipped, "share flipped to the other maze's answer"), {"mean_score": mean_score}


def _swap_at(context: tuple[SwapConfig, PairRuns, dict], step: int) -> torch.Tensor:
    """The unit of work: every (pair, layer) row swapped at ``step``, one batch."""
    cfg, r, _ = context
    return sweep.patch_step(r.adapter, r.base, r.base_cond, r.source, step, r.groups, r.tokens, r.num_steps,
                            False, r.pairs, cfg.backend, cfg.max_batch)  # fmt: skip


def save_swap(result: GridResult, cfg: SwapConfig, out):
    title = f"latent swap with {cfg.other} inputs at steps {cfg.steps}"
    return save_grid(result, out, "swap", title, f"latent swap: {result.grid.name}")


def demo(ctx) -> None:
    """The study: one layer's tokens swapped at one step (0, 5, 10, 15)."""
    cfg = SwapConfig(model=ctx.model, n=ctx.options["n_causal"] * 2, size=ctx.size, num_frames=ctx.frames,
                     steps="0-15:5")
    result = run_swap(cfg, ctx.adapter, progress=False)
    name = result.grid.name
    save_grid(result, ctx.out / "causal" / "swap", "swap", "latent swap", f"latent swap (one step, one layer): {name}")
    ctx.headline.append(
        f"swapping one layer's tokens at one step (0, 5, 10, 15): largest {name} {float(result.grid.max()):.2f}"
    )


SWEEP = Sweep("swap", SwapConfig, _prepare, _swap_at)
EXPERIMENT = register(Experiment("swap", SwapConfig, run_swap, save_swap, demo=demo, demo_order=61))
