"""``interp train``: training the maze testbed (resumable checkpoints, optional diffusers export)."""

from __future__ import annotations

from pathlib import Path

import typer

from interp.cli_options import set_threads
from interp.validation import UsageError

train_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train a model.")


@train_app.command("testbed")
def train_testbed_cmd(
    seed: int = typer.Option(0, help="Training seed (selects the training mazes and the noise)."),
    steps: int = typer.Option(5000, help="Optimiser steps."),
    batch_size: int = typer.Option(64, help="Mazes per step."),
    device: str = typer.Option("cpu", help="torch device: cpu, cuda, cuda:1, ..."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    checkpoint: Path = typer.Option(Path("checkpoints/testbed"), help="Checkpoint folder (resumed if present)."),
    export: Path | None = typer.Option(None, help="Write the final weights here as a diffusers model folder."),
    export_weights_choice: str = typer.Option(
        "best", "--export-weights", help="ema, raw, or best (the more accurate on validation mazes)."
    ),
) -> None:
    """Train the maze testbed with flow matching; rerun the same command to resume."""
    from dataclasses import asdict

    from tqdm.auto import tqdm

    from interp.manifest import Manifest
    from interp.models.testbed import SamplingDefaults
    from interp.training import TrainConfig, export_weights, train_testbed

    if export_weights_choice not in ("ema", "raw", "best"):
        raise UsageError(f"--export-weights must be ema, raw or best, got {export_weights_choice!r}")
    set_threads(threads)
    cfg = TrainConfig(seed=seed, steps=steps, batch_size=batch_size)
    train_testbed(cfg, checkpoint, device=device, log=tqdm.write, progress=True)
    manifest = Manifest("train", f"training {checkpoint.name}", "training", {"experiment": "train", **asdict(cfg)})
    manifest.add(checkpoint / "state.json", "data", "the checkpoint's step and config (resumable)")
    manifest.add(checkpoint.with_name(checkpoint.name + ".log.jsonl"), "data", "loss and validation log")
    if export is not None:
        defaults = SamplingDefaults(num_steps=cfg.sample_steps, frames=cfg.frames, size=cfg.size)
        export_weights(checkpoint, export, defaults, which=export_weights_choice)
        manifest.add(export / "training.json", "data", f"exported weights: {export}")
        typer.echo(f"exported weights to {export}")
    manifest.write(checkpoint.parent, checkpoint.name)
