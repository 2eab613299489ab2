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
    first_pair_videos,
    grid,
    maze_runs,
    pipeline_runs,
    save_grid,
)
from interp.experiments.base import Experiment, register
from interp.experiments.executors import Sweep, executor_or_local
from interp.sources import pipeline_field
from interp.tasks import maze_scoring

DIRECTIONS = ("denoising", "noising")
METRICS = ("maze", "latent")
MEANING = "1 = clean behaviour, 0 = corrupted behaviour"


@dataclass
class PatchConfig(CausalConfig):
    experiment = "patch"
    n: int = 4  # maze pairs: clean seeds first_seed .., corrupted = the clean maze rewired
    first_seed: int = 0
    steps: str = "all"
    layers: str = "all"
    sub: str | None = None  # None: block output; attn1, attn2 or ffn: that sub-module's output
    region: str = "all"  # all | frame:F | diff (cells whose solution differs) | path to a .npy mask (T, H, W)
    direction: str = "denoising"
    metric: str = "maze"
    span: str = "step"  # step: patch that step only; onward: that step and every later one
    pipeline: dict | None = pipeline_field()  # a real model instead of the testbed: PipelineInputs fields, 2 samples
    backend: str = "hooks"
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

    def check(self) -> None:
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.span not in ("step", "onward"):
            raise ValueError(f"span must be 'step' or 'onward', got {self.span!r}")
        if self.sub is not None and self.sub not in ("attn1", "attn2", "ffn"):
            raise ValueError(f"sub must be attn1, attn2 or ffn, got {self.sub!r}")


def run_patch(cfg: PatchConfig, adapter=None, progress: bool = True, executor=None) -> GridResult:
    """Activation patching; the mean normalised score per (step, layer) and every pair's. The source
    (testbed mazes or a pipeline's two samples) only decides the runs, the regions and the metric.
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
    """Every check, then the recorded runs: what each step's rows are computed from."""
    cfg.check()
    return cfg, (_pipeline_pairs(cfg) if cfg.pipeline is not None else _maze_pairs(cfg, adapter))


def _patch_at(context: tuple[PatchConfig, PairRuns], step: int) -> torch.Tensor:
    """The unit of work: every (pair, layer) row first patched at ``step``, one batch."""
    cfg, r = context
    return sweep.patch_step(r.adapter, r.base, r.base_cond, r.source, step, r.groups, r.tokens, r.num_steps,
                            cfg.span == "onward", r.pairs, cfg.backend, cfg.max_batch)  # fmt: skip


def _maze_pairs(cfg: PatchConfig, adapter) -> PairRuns:
    """Clean testbed mazes and their rewired corruptions, one recorded run each."""
    adapter = cfg.testbed(adapter)
    num_steps = cfg.check_common(adapter)
    steps = parse_index_spec(cfg.steps, num_steps, "step")
    layers = parse_index_spec(cfg.layers, adapter.num_blocks(), "layer")
    groups = sweep.layer_sites(adapter, layers, cfg.sub)
    clean, corrupted = maze_scoring.rewired_pairs(cfg.size, cfg.first_seed, cfg.n)
    grid_shape = adapter.token_grid(adapter.latent_shape(cfg.size, cfg.frames))
    if cfg.region == "diff":
        tokens = [sweep.mask_tokens(maze_scoring.diff_region(a, b, grid_shape)) for a, b in zip(clean, corrupted)]
    else:
        tokens = [sweep.mask_tokens(sweep.region_mask(cfg.region, grid_shape))] * cfg.n
    sites = [site for group in groups for site in group]
    clean_run, clean_cond = maze_runs(adapter, clean, cfg.frames, num_steps, sites, cfg.backend)
    corr_run, corr_cond = maze_runs(adapter, corrupted, cfg.frames, num_steps, sites, cfg.backend)
    base, base_cond, source = (corr_run, corr_cond, clean_run) if cfg.direction == "denoising" else \
        (clean_run, clean_cond, corr_run)  # fmt: skip
    metric = maze_scoring.MazePairMetric(clean, corrupted) if cfg.metric == "maze" else sweep.latent_projection
    return PairRuns(adapter, base, base_cond, source, None, clean_run.final, corr_run.final, num_steps, steps, layers,
                    groups, tokens, metric)  # fmt: skip


def _pipeline_pairs(cfg: PatchConfig) -> PairRuns:
    """A pipeline's samples [clean, corrupted] as two elements of one recorded run; latent metric."""
    if cfg.metric != "latent":
        raise ValueError("a pipeline model has no maze verifier: use metric 'latent'")
    if cfg.region == "diff":
        raise ValueError("region 'diff' is for maze pairs; use all, frame:F or a .npy mask")
    if not isinstance(cfg.pipeline, dict) or len(cfg.pipeline.get("samples") or []) != 2:
        raise ValueError("pipeline patching needs samples: [clean, corrupted] (two sample folder names)")
    chosen: dict = {}

    def sites_for(adapter, inputs):  # every check before the runs are recorded
        expert = next(iter(adapter.transformers()))
        chosen["steps"] = parse_index_spec(cfg.steps, inputs.num_steps, "step")
        chosen["layers"] = parse_index_spec(cfg.layers, adapter.num_blocks(expert), "layer")
        chosen["groups"] = sweep.layer_sites(adapter, chosen["layers"], cfg.sub)  # a layer in every expert
        shape = inputs.latent_shape(adapter)
        chosen["tokens"] = sweep.mask_tokens(sweep.region_mask(cfg.region, adapter.token_grid(tuple(shape), expert)))
        return [site for group in chosen["groups"] for site in group]

    runs = pipeline_runs(cfg.pipeline, sites_for, cfg.backend)
    clean_e, corr_e = (0, 1) if cfg.direction == "denoising" else (1, 0)  # patch the source element into the base
    run = runs.run
    return PairRuns(runs.adapter, run, runs.conditioning, run, [(corr_e, clean_e)], run.final[0:1], run.final[1:2],
                    runs.num_steps, chosen["steps"], chosen["layers"], chosen["groups"], [chosen["tokens"]],
                    sweep.latent_projection)  # fmt: skip


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
    cfg = PatchConfig(model=ctx.model, n=n, size=ctx.size, frames=ctx.frames, steps="0-18:2", span="onward")
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
