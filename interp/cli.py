"""The ``interp`` command line: options -> a config -> the experiment registry.

Every registered experiment (trace, generate, probe, patch, ..., any a user registers) gets its command from
its config by ``interp.cli_options.make_command``; ``verify`` lives there too. Written out below: what is
not an experiment (the report of a run folder, the whole study) and the ``data`` and ``train`` groups.
"""

from __future__ import annotations

from pathlib import Path

import typer

from interp.cli_data import data_app
from interp.cli_options import add_experiment_commands, file_output, run_app
from interp.cli_train import train_app

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(data_app, name="data")


@app.command()
@file_output
def report(
    run_dir: Path = typer.Argument(..., help="A run folder: what the demo or the other commands wrote."),
    out: Path | None = typer.Option(None, help="The page (default RUN_DIR/report.html; must lie in RUN_DIR)."),
    title: str | None = typer.Option(None, help="Page title."),
) -> None:
    """One self-contained HTML page of a run folder's manifests: figures embedded, files linked."""
    from interp.report.html import write_report

    typer.echo(str(write_report(run_dir, out, title)))


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output folder."),
    model: str = typer.Option("testbed", help="The shipped testbed the study runs on."),
    n_filmstrips: int = typer.Option(6, help="Held-out mazes drawn as filmstrips."),
    n_accuracy: int = typer.Option(200, help="Held-out mazes for the accuracy figure."),
    n_trace: int = typer.Option(32, help="Held-out mazes traced into an activation store."),
    probe_target: list[str] = typer.Option(["on_path", "wall", "dist_to_goal"], help="Probe targets; repeatable."),
    probe_steps: str = typer.Option("0-19:2", help="Steps probed (every other step keeps the demo short)."),
    n_causal: int = typer.Option(2, help="Maze pairs patched (swap and flow use twice as many mazes)."),
    n_noise: int = typer.Option(32, help="Mazes for noise at step vs noise at frame."),
    n_ensemble: int = typer.Option(32, help="Held-out mazes for the seed ensemble (0 skips it)."),
    n_exploration: int | None = typer.Option(None, help="Mazes per size for exploration (multi-size models; 0 skips)."),
    n_select: int | None = typer.Option(None, help="Mazes for early-step selection (multi-size models; 0 skips)."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (videos, steps, sites, disk, memory) only."),
) -> None:
    """The whole study on a testbed: every registered experiment's demo step, then one HTML report."""
    from interp.study import run_study

    options = {k: v for k, v in locals().items() if k not in ("out", "model", "dry_run", "run_study")}
    run_study(out, model, typer.echo, dry_run, **{**options, "probe_target": list(probe_target)})


add_experiment_commands(app)


def main() -> None:  # the ``interp`` script and ``python -m interp`` (interp/__main__.py)
    run_app(app)
