"""The whole study on a testbed as one function: every registered experiment's demo step, in
order, sharing one context (the model, the run folder, the store traced on the way), then the
report. Returns the headlines (also in ``study.json`` and the study's manifest)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from interp.experiments.base import experiments
from interp.manifest import Manifest

DEFAULTS = {
    "n_filmstrips": 6, "n_accuracy": 200, "n_trace": 32, "probe_target": ["on_path", "wall", "dist_to_goal"],
    "probe_steps": "0-19:2", "n_causal": 2, "n_noise": 32, "n_ensemble": 32, "threads": 2,
    "n_exploration": 64, "n_select": 48,
}  # fmt: skip
# Steps that need a model trained on several sizes (an organism that must reason across steps);
# on the one-size testbed they are off unless asked for.
MULTI_SIZE_ONLY = ("n_exploration", "n_select")


@dataclass
class StudyContext:
    """What the demo steps share; a step may set ``store`` (the trace) for later steps."""

    adapter: object
    model: str
    out: Path
    options: dict
    echo: Callable[[str], None] = print
    size: int = 4  # the largest in-distribution size: causal steps run there
    frames: int = 4
    sizes: tuple[int, ...] = (4,)  # every size the model was trained on
    ensemble_size: int = 5  # the seed ensemble's size: beyond the training sizes for a one-size model
    store: Path | None = None
    headline: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    stages: int = 0

    def stage(self, text: str) -> None:
        self.stages += 1
        self.echo(f"{self.stages}. {text} [{time.time() - self.started:.0f}s]")


def check_options(options: dict, multi_size: bool = True) -> dict:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown study option {unknown[0]!r} (known: {', '.join(DEFAULTS)})")
    defaults = dict(DEFAULTS) if multi_size else {**DEFAULTS, **dict.fromkeys(MULTI_SIZE_ONLY, 0)}
    merged = {**defaults, **{k: v for k, v in options.items() if v is not None}}
    counts = [merged[k] for k in ("n_filmstrips", "n_accuracy", "n_trace", "n_causal", "n_noise")]
    if min(counts) < 1 or min(merged[k] for k in ("n_ensemble", *MULTI_SIZE_ONLY)) < 0:
        raise ValueError("the demo's counts must be positive (--n-ensemble, --n-exploration, --n-select may be 0)")
    return merged


def _check_stages(options: dict, adapter) -> None:
    """What a later stage would refuse, refused before the first (not after minutes of stages)."""
    from activations.selection import parse_index_spec
    from interp.tasks.maze_labels import MAZE
    from interp.validation import MAX_VIDEOS, UsageError, check_threads

    check_threads(options["threads"])
    too_many = [k for k, v in options.items() if k.startswith("n_") and v > MAX_VIDEOS]
    if too_many:
        raise UsageError(f"--{too_many[0].replace('_', '-')} must be at most {MAX_VIDEOS}, got {options[too_many[0]]}")
    try:
        parse_index_spec(options["probe_steps"], adapter.defaults.num_steps, "step")
    except ValueError as err:
        raise UsageError(f"--probe-steps: {err}") from None
    unknown = [t for t in options["probe_target"] if t not in MAZE.targets]
    if unknown:
        raise UsageError(f"--probe-target {unknown[0]!r} is not a maze target (known: {', '.join(MAZE.targets)})")


def trained_sizes(adapter) -> tuple[int, ...]:
    """The maze sizes a testbed was trained on (its training.json), else its sampling size."""
    from interp.training import train_sizes

    folder = getattr(adapter, "folder", None)
    record = Path(folder) / "training.json" if folder is not None else None
    if record is not None and record.is_file():
        return tuple(train_sizes(json.loads(record.read_text())["config"]))
    return (adapter.defaults.size,)


def demo_steps():
    """Registered experiments with a demo step, in study order."""
    return sorted((e for e in experiments().values() if e.demo is not None), key=lambda e: e.demo_order)


def study_plan(model: str, adapter, options: dict, out: Path, size: int, frames: int):
    """``interp demo``: the store it writes is the largest cost; every stage's mazes listed."""
    from interp.experiments.trace import TraceConfig, make_job
    from interp.plans import FIGURES, store_plan

    job = make_job(TraceConfig(model=model, n=options["n_trace"], size=size, num_frames=frames, attention=True),
                   adapter)  # fmt: skip
    store = store_plan("demo", job.layout, Path(out) / "trace.h5", job.batch_size)
    counts = {k[2:]: v for k, v in options.items() if k.startswith("n_") and v}
    store.details = [f"{store.videos} videos traced at {size}x{size}, every block at every step",
                     "mazes per stage: " + ", ".join(f"{k} {v}" for k, v in counts.items())]  # fmt: skip
    store.disk_bytes += FIGURES * (len(counts) + 4)
    store.out = Path(out)
    return store


def run_study(out: str | Path, model: str = "testbed", echo: Callable[[str], None] = print, dry_run: bool = False,
              **options) -> list[str]:  # fmt: skip
    """Run every experiment's demo step on ``model`` into ``out`` and write the report; the headlines.
    ``dry_run``: print the plan only."""
    import torch

    from interp.plans import show
    from interp.report.html import write_report
    from interp.sources import load_testbed
    from interp.tasks.splits import IN_DISTRIBUTION

    adapter = load_testbed(model)
    sizes = trained_sizes(adapter)
    options = check_options(options, multi_size=len(sizes) > 1)
    _check_stages(options, adapter)
    torch.set_num_threads(options["threads"])
    out = Path(out)
    show(study_plan(model, adapter, options, out, max(sizes), IN_DISTRIBUTION["frames"]), echo)
    if dry_run:
        return []
    ensemble_size = max(sizes) + 1 if len(sizes) == 1 else max(sizes)
    ctx = StudyContext(adapter, model, out, options, echo, max(sizes), IN_DISTRIBUTION["frames"], sizes, ensemble_size)
    for experiment in demo_steps():
        experiment.demo(ctx)
    ctx.stage("the report")
    (out / "study.json").write_text(json.dumps({"options": options, "headline": ctx.headline}, indent=2))
    manifest = Manifest("study", "headline numbers", "headline", {"experiment": "study", "model": model, **options})
    manifest.add(out / "study.json", "data", "the demo's options and headlines")
    manifest.headline = list(ctx.headline)
    manifest.write(out)
    page = write_report(out, title=f"Video DiT interpretability: the {model} study")
    ctx.stage("done")
    for line in ctx.headline:
        echo(f"  {line}")
    echo(f"report: {page.resolve()}  ({time.time() - ctx.started:.0f}s)")
    return ctx.headline
