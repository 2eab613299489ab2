"""Exact-match accuracy of a maze model on held-out mazes, with a 95% Wilson interval."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from interp.evaluation import MazeEvaluation
from interp.execution.loop import sample
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest
from interp.sources import SourceConfig
from interp.tasks import maze as maze_task


@dataclass
class EvaluateConfig(SourceConfig, ExperimentConfig):
    """Any model on mazes: the testbed on its generated held-out mazes (seeds ``first_seed`` ..), or any
    model on a folder of maze samples (``interp data maze``), every video judged by the maze verifier on
    its decoded frames read back onto the maze's grid."""

    experiment = "evaluate"
    old_spellings: ClassVar[dict[str, str]] = {**SourceConfig.old_spellings, "steps": "num_steps"}
    cli_help = {**SourceConfig.cli_help, "n": "Testbed without --data: held-out mazes (seeds first-seed ..)."}
    cli_flags = {**SourceConfig.cli_flags, "num_steps": ("--num-steps", "--steps")}  # --steps: the old spelling
    n: int = 500
    batch_size: int | None = None  # videos per forward; None: testbed 128, pipelines 1

    def __post_init__(self):
        ExperimentConfig.__post_init__(self)  # interp.validation: types and ranges
        SourceConfig.__post_init__(self)


def run_evaluate(cfg: EvaluateConfig, adapter=None, progress: bool = True) -> MazeEvaluation:
    from interp.tasks.maze import to_grid
    from interp.tasks.maze_data import read_maze

    if cfg.data is not None:  # before any model is read: every chosen sample is a maze
        from interp.samples import choose_samples, read_samples

        for item in choose_samples(read_samples(cfg.data), cfg.samples, cfg.data):
            if not (item.folder / "maze.json").is_file():
                raise ValueError(f"sample {item.name!r} has no maze.json: evaluate judges mazes "
                                 "(write them with `interp data maze`)")  # fmt: skip
    adapter = adapter or cfg.load()
    videos = cfg.videos(adapter)
    mazes = []
    for video in videos:  # a pipeline's maze samples carry their truth in maze.json
        folder = video.sample.folder
        if video.sample.truth is None and (folder is None or not (folder / "maze.json").is_file()):
            raise ValueError(f"sample {video.sample.name!r} has no maze.json: evaluate judges mazes "
                             "(write them with `interp data maze`)")  # fmt: skip
        mazes.append(video.sample.truth or read_maze(folder))
    if len({m.size for m in mazes}) > 1:
        raise ValueError(f"mazes of sizes {sorted({m.size for m in mazes})}: evaluate one size at a time")
    num_steps, shift = cfg.num_steps_of(adapter), cfg.shift_of(adapter)
    batch = cfg.batch_of(adapter, cfg.batch_size, task_batch=128)
    verdicts: list[maze_task.Verdict] = []
    for i in tqdm(range(0, len(videos), batch), disable=not progress, desc="evaluating"):
        noise, cond = cfg.inputs(adapter, videos[i : i + batch])
        with torch.no_grad():
            out = sample(adapter, noise, cond, num_steps=num_steps, shift=shift)
        for rgb, maze in zip(adapter.decode(out.latents), mazes[i : i + batch]):
            verdicts.append(maze_task.verify(to_grid(rgb, maze.size), maze))
    return MazeEvaluation(mazes[0].size, cfg.frames_of(adapter), [m.seed for m in mazes], verdicts)


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
    cfg = EvaluateConfig(model=ctx.model, size=ctx.size, num_frames=ctx.frames, n=n)
    manifest = save_evaluation(run_evaluate(cfg, ctx.adapter, progress=False), cfg, ctx.out)
    ctx.headline.extend(manifest.headline)


EXPERIMENT = register(
    Experiment("evaluate", EvaluateConfig, run_evaluate, save_evaluation, demo=demo, demo_order=20)
)
