"""The whole study on a testbed as one function: every registered experiment's demo step, in
order, sharing one context (the model, the run folder, the store traced on the way), then the
report. Returns the headlines (also in ``study.json`` and the study's manifest)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from interp.experiments.base import Manifest, experiments

DEFAULTS = {
    "n_filmstrips": 6, "n_accuracy": 200, "n_trace": 32, "probe_target": ["on_path", "wall", "dist_to_goal"],
    "probe_steps": "0-19:2", "n_causal": 2, "n_noise": 32, "n_ensemble": 32, "threads": 2,
}  # fmt: skip


@dataclass
class StudyContext:
    """What the demo steps share; a step may set ``store`` (the trace) for later steps."""

    adapter: object
    model: str
    out: Path
    options: dict
    echo: Callable[[str], None] = print
    size: int = 4
    frames: int = 4
    store: Path | None = None
    headline: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    stages: int = 0

    def stage(self, text: str) -> None:
        self.stages += 1
        self.echo(f"{self.stages}. {text} [{time.time() - self.started:.0f}s]")


def check_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown study option {unknown[0]!r} (known: {', '.join(DEFAULTS)})")
    merged = {**DEFAULTS, **options}
    counts = [merged[k] for k in ("n_filmstrips", "n_accuracy", "n_trace", "n_causal", "n_noise")]
    if min(counts) < 1 or merged["n_ensemble"] < 0:
        raise ValueError("the demo's counts must be positive (--n-ensemble may be 0)")
    return merged


def demo_steps():
    """Registered experiments with a demo step, in study order."""
    return sorted((e for e in experiments().values() if e.demo is not None), key=lambda e: e.demo_order)


def run_study(out: str | Path, model: str = "testbed", echo: Callable[[str], None] = print, **options) -> list[str]:
    """Run every experiment's demo step on ``model`` into ``out`` and write the report; the headlines."""
    import torch

    from interp.report.html import write_report
    from interp.sources import load_testbed
    from interp.tasks.splits import IN_DISTRIBUTION

    options = check_options(options)
    torch.set_num_threads(options["threads"])
    out = Path(out)
    adapter = load_testbed(model)
    ctx = StudyContext(adapter, model, out, options, echo, IN_DISTRIBUTION["size"], IN_DISTRIBUTION["frames"])
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
