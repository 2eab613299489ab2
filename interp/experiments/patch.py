"""Activation patching over (step, layer[, sub-module], token region).

Clean into corrupted ("denoising") or corrupted into clean ("noising"); span "step" patches one
step and continues unpatched, "onward" patches that step and every later one. Scored 1 = clean
behaviour, 0 = corrupted behaviour, by the maze verifier's answer (testbed) or by projecting the
final latent between the two runs' finals (``latent``, any model).
"""

from __future__ import annotations

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

DIRECTIONS = ("denoising", "noising")
METRICS = ("maze", "latent")
MEANING = "1 = clean behaviour, 0 = corrupted behaviour"


@dataclass
class PatchConfig(CausalConfig):
    experiment = "patch"
    n: int = 4  # testbed: maze pairs, clean seeds first_seed .., corrupted = the clean maze rewired; with data:
    # the samples in pairs (samples A,B: A clean, B corrupted)
    steps: str = "all"
    layers: str = "all"
    sub: str | None = None  # None: block output; attn1, attn2 or ffn: that sub-module's output
    region: str = "all"  # all | frame:F | diff (cells whose solution differs) | path to a .npy mask (T, H, W)
    direction: str = "denoising"
    metric: str = "maze"
    span: str = "step"  # step: patch that step only; onward: that step and every later one
    max_batch: int | None = None  # rows (pairs x layers) per model call within a step; None: all of them

    cli_help = {
        **CausalConfig.cli_help,
        "steps": "Steps to patch, e.g. all, 0-19:2.",
        "max_batch": "Rows (pairs x layers) per model call within a step, to fit a device; default all.",
        "layers": "Layers to patch.",
        "sub": "Patch a sub-module (attn1, attn2, ffn), not the block.",
        "region": "Tokens: all, frame:F, diff (cells where solutions differ), .npy mask.",
        "direction": "denoising (clean into corrupted) or noising.",
        "metric": "maze (verifier-based) or latent (projection of the final latent).",
        "span": "step (patch one step, then continue) or onward (every later step too).",
    }


def run_patch(cfg: PatchConfig, adapter=None, progress: bool = True, executor=None) -> GridResult:
    """Activation patching; the mean normalised score per (step, layer) and every pair's. The source
    (testbed mazes or a model's samples in pairs) only decides the runs, the regions and the metric.
    ``executor``: where the steps run (``executors.LocalExecutor`` by default, or a ``RayExecutor``)."""
    context = _prepare(cfg, adapter)
    r = context[1]
    per_step = executor_or_local(executor).map(SWEEP, cfg, context, r.steps, progress, "patching steps")
    finals = torch.stack(per_step, 1)
    scores = r.metric(finals, r.clean_final, r.corr_final)
    videos = first_pair_videos(r, finals, scores, ("clean", "corrupted", "patched"))
    return GridResult(cfg, grid(np.nanmean(scores, 0), r.steps, r.layers, "patching score"), scores, MEANING,
                      videos=videos)  # fmt: skip


def _prepare(cfg: PatchConfig, adapter) -> tuple[PatchConfig, PairRuns]:
    """Every check, then the recorded runs of the clean and the corrupted inputs: what each step's rows are
    computed from. The source decides the pairs (generated mazes and their rewired twins, or samples in
    pairs); the maze metric and the ``diff`` region need a maze model's verifier."""
    check_pairs(cfg)
    if adapter is None and cfg.model_task() is None:  # refused before a pipeline is loaded
        _check_maze_choices(cfg, None)
    adapter = adapter or cfg.load()
    clean_videos, corr_videos = pair_videos(cfg, adapter, maze_task.rewire)
    clean_mazes, corr_mazes = maze_truths(adapter, clean_videos), maze_truths(adapter, corr_videos)
    _check_maze_choices(cfg, None if clean_mazes is None or corr_mazes is None else clean_mazes)
    chosen: dict = {}

    def sites_for(model, num_steps: int, shape: tuple) -> list[str]:  # every check before a run is recorded
        expert = next(iter(model.transformers()))
        chosen["steps"] = parse_index_spec(cfg.steps, num_steps, "step")
        chosen["layers"] = parse_index_spec(cfg.layers, model.num_blocks(expert), "layer")
        chosen["groups"] = sweep.layer_sites(model, chosen["layers"], cfg.sub)  # a layer in every expert
        grid_shape = model.token_grid(tuple(shape), expert)
        if cfg.region == "diff":
            chosen["tokens"] = [sweep.mask_tokens(maze_scoring.diff_region(a, b, grid_shape))
                                for a, b in zip(clean_mazes, corr_mazes)]  # fmt: skip
        else:
            chosen["tokens"] = [sweep.mask_tokens(sweep.region_mask(cfg.region, grid_shape))] * len(clean_videos)
        chosen["sites"] = [site for group in chosen["groups"] for site in group]
        return chosen["sites"]

    clean = source_runs(cfg, adapter, sites_for, clean_videos)
    corr = source_runs(cfg, adapter, lambda *_: chosen["sites"], corr_videos)
    base, source = (corr, clean) if cfg.direction == "denoising" else (clean, corr)
    metric = maze_scoring.MazePairMetric(clean_mazes, corr_mazes) if cfg.metric == "maze" else sweep.latent_projection
    return cfg, PairRuns(adapter, base.run, base.conditioning, source.run, None, clean.run.final, corr.run.final,
                         clean.num_steps, chosen["steps"], chosen["layers"], chosen["groups"], chosen["tokens"],
                         metric)  # fmt: skip


def _check_maze_choices(cfg: PatchConfig, mazes) -> None:
    """The maze metric and the ``diff`` region need a maze model's verdicts on maze pairs."""
    if cfg.metric == "maze" and mazes is None:
        raise ValueError("this model has no maze verifier (a pipeline): use metric 'latent'")
    if cfg.region == "diff" and mazes is None:
        raise ValueError("region 'diff' is for maze pairs; use all, frame:F or a .npy mask")


def _patch_at(context: tuple[PatchConfig, PairRuns], step: int) -> torch.Tensor:
    """The unit of work: every (pair, layer) row first patched at ``step``, one batch."""
    cfg, r = context
    return sweep.patch_step(r.adapter, r.base, r.base_cond, r.source, step, r.groups, r.tokens, r.num_steps,
                            cfg.span == "onward", r.pairs, cfg.backend, cfg.max_batch)  # fmt: skip


def save_patch(result: GridResult, cfg: PatchConfig, out):
    what = "patching score (1 = clean behaviour, 0 = corrupted)"
    title = f"activation patching ({cfg.direction}, region {cfg.region}, span {cfg.span})"
    return save_grid(result, out, "patch", title, f"{title}: {what}")


def _summary(manifest) -> list[str]:
    return [line.replace("patching score: highest", "highest score") for line in manifest.headline]


def demo(ctx) -> None:
    """The study: every block output patched from step s onward, clean into corrupted."""
    n = ctx.options["n_causal"]
    ctx.stage(f"activation patching and latent swapping ({n} pairs), noise at step vs frame, flow")
    cfg = PatchConfig(model=ctx.model, n=n, size=ctx.size, num_frames=ctx.frames, steps="0-18:2", span="onward")
    result = run_patch(cfg, ctx.adapter, progress=False)
    title = "activation patching onward (clean into corrupted): 1 = clean answer"
    save_grid(result, ctx.out / "causal" / "patch_onward", "patch", "activation patching onward", title)
    steps = [int(s) for s in result.grid.step.values]
    clean_from = [s for s in steps if float(result.grid.sel(step=s).mean()) > 0.5]
    if not clean_from:
        where = "at no step"
    elif clean_from == steps[: len(clean_from)]:
        where = f"for s <= {clean_from[-1]}"
    else:  # not a prefix of the steps: say exactly which
        where = f"for s in {clean_from}"
    ctx.headline.append(
        f"patching every block output from step s onward gives the clean answer {where} "
        f"(mean score over layers > 0.5; {n} maze pairs)"
    )


SWEEP = Sweep("patch", PatchConfig, _prepare, _patch_at)
EXPERIMENT = register(Experiment("patch", PatchConfig, run_patch, save_patch, _summary, demo=demo, demo_order=60))
