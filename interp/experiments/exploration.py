"""Exploration, pruning and self-correction along the steps, per maze size, on the studied model
beside a control model that solves in one pass.

Every held-out maze is sampled once (noise seed = maze seed, as ``evaluate``); its x0_hat at every
step is read by the Chain-of-Steps detectors (``interp.analysis.chain_of_steps``): lit side branches
of the maze graph that later prune, a formed wrong answer repaired later (and the step it was
repaired at), superposition, the commit step. The counts are what the detectors find; the claims
compare the studied model's share with the control's, each with a Wilson interval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from interp.analysis.chain_of_steps import Chain, ChainConfig, analyse_trajectory, summarise
from interp.analysis.claims import CANNOT_TELL, NOT_SHOWN, SHOWS, claim
from interp.evaluation import wilson_interval
from interp.execution.loop import KeepX0, sample
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest, Table
from interp.sources import MazeSizes, SourceConfig
from interp.tasks import maze as maze_task

BEHAVIOURS = {
    "explore_then_prune": "multi-path exploration then convergence (two or more lit branches that later prune)",
    "self_correction": "self-correction (a formed wrong answer repaired later)",
    "superposition": "superposition (the solution lit together with off-path cells)",
}
FLOOR = 0.05  # a share a detector's false alarms could give


@dataclass
class ExplorationConfig(MazeSizes, SourceConfig, ChainConfig, ExperimentConfig):  # the detector thresholds too
    """Maze models' sources (``interp.sources.SourceConfig``): each of ``models`` on the testbed's generated
    mazes of each of ``sizes``, or on a maze data folder; the first model is studied, the others are its
    one-pass controls on the same mazes and noise."""

    experiment = "exploration"
    cli_hidden = ("size", "model")  # one source per model of ``models`` and size of ``sizes``
    models: list[str] = field(default_factory=lambda: ["testbed-mixed", "testbed"])
    n: int = 64  # held-out mazes per size
    sizes: list[int] = field(default_factory=lambda: [4, 5, 6])
    batch_size: int = 64

    cli_help = {
        **SourceConfig.cli_help,
        "models": "Maze models (names or weight folders); the first is studied, the others are controls; repeatable.",
        "n": "Testbed without --data: held-out mazes per size.",
        "sizes": "Testbed without --data: maze sizes; repeatable.",
        "num_steps": "Denoising steps; default: each model's own.",
        "batch_size": "Videos per forward.",
    }
    cli_flags = {**SourceConfig.cli_flags, "models": ("--model",), "sizes": ("--size",)}

    def __post_init__(self):
        ExperimentConfig.__post_init__(self)  # interp.validation: types and ranges
        SourceConfig.__post_init__(self)
        if not self.models or not self.sizes or self.n < 1 or self.batch_size < 1:
            raise ValueError("exploration needs at least one model and one size, n >= 1 and batch_size >= 1")
        if min(self.sizes) < maze_task.MIN_SIZE:
            raise ValueError(f"maze sizes must be >= {maze_task.MIN_SIZE}, got {min(self.sizes)}")

        self.model = self.models[0]  # the studied model is the source's

    def check(self, pipeline: bool | None = None) -> None:
        for model in self.models:  # each model's source; the detectors read a maze model's own latents
            source = replace(self, models=[model])
            if source.model_task() is None if pipeline is None else pipeline:
                raise ValueError(f"model {model}: exploration reads x0_hat on the maze grid: it needs a maze model "
                                 "(the testbed), not a pipeline")  # fmt: skip
            MazeSizes.check(source, pipeline)


def trajectories(adapter, noise: torch.Tensor, cond, num_steps: int, batch_size: int, shift: float | None = None):
    """x0_hat of every step for each video: (videos, steps, C, T, N, N)."""
    out = []
    for i in range(0, noise.shape[0], batch_size):
        record = KeepX0()
        with torch.no_grad():
            sample(adapter, noise[i : i + batch_size], cond[i : i + batch_size], num_steps, shift=shift,
                   hooks=[record])  # fmt: skip
        out.append(record.trajectories())
    return np.concatenate(out)


def _share(chains: list[Chain], label: str) -> dict:
    k = sum(c.labels[label] for c in chains)
    lo, hi = wilson_interval(k, len(chains))
    return {"k": int(k), "share": k / len(chains), "ci95": [lo, hi]}


def summarise_size(chains: list[Chain]) -> dict:
    s = summarise(chains)
    solved0 = sum(c.solved[0] for c in chains)
    final = sum(c.solved[-1] for c in chains)
    steps = [c.correction_step for c in chains if c.correction_step is not None]
    return {
        "n": s["n"],
        "final_solved": {"k": int(final), "share": final / s["n"], "ci95": list(wilson_interval(final, s["n"]))},
        "step0_solved": {"k": int(solved0), "share": solved0 / s["n"], "ci95": list(wilson_interval(solved0, s["n"]))},
        **{label: _share(chains, label) for label in BEHAVIOURS},
        "correction_steps": steps,
        "commit_step_median": s["commit_step"]["median"],
        "solved_per_step": s["solved_per_step"],
        "branches_per_step": s["branches_per_step"],
    }


def run_exploration(cfg: ExplorationConfig, adapter=None, progress: bool = True) -> dict:
    """{model: {size: summary + per-video chains}}; ``adapter`` stands for ``cfg.models[0]``."""
    from tqdm.auto import tqdm

    from interp.experiments._causal import maze_truths

    result: dict = {}
    for i, model in enumerate(cfg.models):
        own = replace(cfg, models=[model])
        model_adapter = adapter if (i == 0 and adapter is not None) else own.load()
        num_steps = own.num_steps_of(model_adapter)
        result[model] = {}
        for source in tqdm(own.groups(), disable=not progress, desc=f"exploration {model}"):
            videos = source.videos(model_adapter)
            mazes = maze_truths(model_adapter, videos)
            if mazes is None:
                raise ValueError(f"model {model}: exploration reads x0_hat on the maze grid: it needs a maze model")
            noise, cond = source.inputs(model_adapter, videos)
            x0 = trajectories(model_adapter, noise, cond, num_steps, cfg.batch_size, source.shift_of(model_adapter))
            chains = [analyse_trajectory(z, m, cfg.thresholds()) for z, m in zip(x0, mazes)]
            result[model][mazes[0].size] = {**summarise_size(chains), "videos": [c.to_dict() for c in chains]}
    return result


def _pct(r: dict) -> str:
    return f"{r['share']:.0%} ({r['ci95'][0]:.0%}-{r['ci95'][1]:.0%})"


def compare(label: str, studied: dict, control: dict, size: int, names: tuple[str, str]) -> dict:
    """A behaviour on the studied model against the one-pass control at one size."""
    s, c = studied[label], control[label]
    name = f"{BEHAVIOURS[label]}, {size}x{size}"
    measurement = f"{names[0]}: {s['k']}/{studied['n']} mazes, {_pct(s)}"
    control_text = f"{names[1]}: {c['k']}/{control['n']}, {_pct(c)}; floor {FLOOR:.0%} (detector false alarms)"
    if s["ci95"][0] > max(FLOOR, c["ci95"][1]):
        verdict, why = SHOWS, "the studied model's interval lies above the control's and above the floor"
    elif s["ci95"][1] < FLOOR or s["share"] <= c["share"]:
        verdict, why = NOT_SHOWN, "the share is below the floor or no higher than the one-pass control's"
    else:
        verdict, why = CANNOT_TELL, "the intervals overlap the control's or the floor: more mazes needed"
    return claim(name, measurement, control_text, verdict, why)


def save_exploration(result: dict, cfg: ExplorationConfig, out) -> Manifest:
    from interp.report.exploration_figures import exploration_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"config": cfg.to_dict(), "results": {m: {str(k): v for k, v in r.items()} for m, r in result.items()}}
    (out / "exploration.json").write_text(json.dumps(record, indent=2))
    manifest = Manifest("exploration", "exploration and self-correction per size", "chain", cfg.to_dict())
    caption = "per size and model: share of mazes with each behaviour (95% Wilson intervals); solved per step"
    manifest.add(exploration_figure(result, out / "exploration.png"), "figure", caption)
    manifest.add(out / "exploration.json", "data", "config, per-size summaries, every maze's trajectory reading")
    rows = []
    for model, per_size in result.items():
        for size, s in per_size.items():
            row = {"model": model, "size": f"{size}x{size}", "n": s["n"], "final solved": _pct(s["final_solved"]),
                   "x0_hat solved at step 0": _pct(s["step0_solved"])}  # fmt: skip
            row.update({label: _pct(s[label]) for label in BEHAVIOURS})
            steps = s["correction_steps"]
            row["repaired at step (median)"] = f"{np.median(steps):.0f}" if steps else "-"
            row["commit step (median)"] = f"{s['commit_step_median']:.0f}"
            rows.append(row)
    manifest.tables.append(Table("behaviours per model and size", list(rows[0]), rows))
    studied, controls = cfg.models[0], cfg.models[1:]
    for size in result[studied]:
        s = result[studied][size]
        manifest.headline.append(
            f"{studied} {size}x{size}: final {_pct(s['final_solved'])}, x0_hat at step 0 {_pct(s['step0_solved'])}; "
            + ", ".join(f"{label} {_pct(s[label])}" for label in BEHAVIOURS)
        )
        for control in controls:
            for label in ("explore_then_prune", "self_correction"):
                manifest.claims.append(compare(label, s, result[control][size], size, (studied, control)))
    manifest.notes.append(
        f"Detector thresholds: {cfg.thresholds()}. A maze counts once per behaviour; the control models "
        f"({', '.join(controls) or 'none'}) run the same mazes and noise."
    )
    manifest.write(out)
    return manifest


def demo(ctx) -> None:
    """The study: only when the studied model is not the one-pass testbed (its control)."""
    if ctx.model == "testbed":
        return
    n = ctx.options["n_exploration"]
    if not n:  # --n-exploration 0 skips the stage (and a one-size model's default is 0)
        return
    sizes = ctx.sizes
    ctx.stage(f"exploration and self-correction on {n} held-out mazes per size ({sizes}), beside testbed")
    cfg = ExplorationConfig(models=[ctx.model, "testbed"], sizes=list(sizes), num_frames=ctx.frames, n=n)
    manifest = save_exploration(run_exploration(cfg, ctx.adapter, progress=False), cfg, ctx.out / "exploration")
    ctx.headline.extend(manifest.headline)


def plan_exploration(cfg: ExplorationConfig, out: Path):
    """Every model on the same videos (the studied model's plan, once per model)."""
    from interp.plans import source_plan

    plan = source_plan("exploration", cfg, out)
    plan.videos *= len(cfg.models)
    plan.details.append(f"{len(cfg.models)} models x the same videos")
    return plan


EXPERIMENT = register(
    Experiment("exploration", ExplorationConfig, run_exploration, save_exploration, demo=demo, demo_order=52,
               plan=plan_exploration)
)
