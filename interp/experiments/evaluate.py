"""Exact-match accuracy of a maze model on held-out mazes, with a 95% Wilson interval."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from interp.evaluation import MazeEvaluation, evaluate_mazes
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest
from interp.sources import load_testbed
from interp.tasks.splits import held_out_seeds


@dataclass
class EvaluateConfig(ExperimentConfig):
    experiment = "evaluate"
    model: str = "testbed"
    size: int = 4
    frames: int = 4
    n: int = 500  # held-out test mazes: seeds 0 .. n-1
    steps: int | None = None
    shift: float | None = None


def run_evaluate(cfg: EvaluateConfig, adapter=None, progress: bool = True) -> MazeEvaluation:
    adapter = adapter or load_testbed(cfg.model)
    return evaluate_mazes(adapter, held_out_seeds(cfg.n), cfg.size, cfg.frames, cfg.steps, cfg.shift, progress=progress)


def save_evaluation(result: MazeEvaluation, cfg: EvaluateConfig, out) -> Manifest:
    """accuracy.json and its manifest (``accuracy.run.json``) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    (out / "accuracy.json").write_text(json.dumps(summary, indent=2))
    lo, hi = summary["ci95"]
    manifest = Manifest("evaluate", "held-out accuracy", "headline", cfg.to_dict())
    manifest.add(out / "accuracy.json", "data", "accuracy, interval, verdict shares")
    manifest.headline.append(
        f"held-out {result.size}x{result.size} mazes: {summary['accuracy']:.1%} exact "
        f"(95% CI {lo:.1%}-{hi:.1%}, n={summary['n']})"
    )
    manifest.write(out, "accuracy")
    return manifest


def demo(ctx) -> None:
    n = ctx.options["n_accuracy"]
    ctx.stage(f"accuracy on {n} held-out mazes")
    cfg = EvaluateConfig(model=ctx.model, size=ctx.size, frames=ctx.frames, n=n)
    manifest = save_evaluation(run_evaluate(cfg, ctx.adapter, progress=False), cfg, ctx.out)
    ctx.headline.extend(manifest.headline)


EXPERIMENT = register(
    Experiment("evaluate", EvaluateConfig, run_evaluate, save_evaluation, demo=demo, demo_order=20, cli=False)
)
