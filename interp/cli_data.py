"""``interp data``: data sets written as sample folders any model reads with ``--data``."""

from __future__ import annotations

from pathlib import Path

import typer

from interp.validation import UsageError, check_output

data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Write a data set of sample folders.")


@data_app.command("maze")
def maze_data(
    size: int = typer.Option(4, help="Maze cells per side."),
    n: int = typer.Option(16, "-n", "--n", help="Mazes (seeds first_seed, first_seed + 1, ...)."),
    first_seed: int = typer.Option(0, help="Seed of the first maze (0-499999: test mazes, never trained on)."),
    frames: int = typer.Option(5, help="Frames of the ground-truth video (the walker's steps)."),
    pixels: int = typer.Option(480, help="Side of each frame in pixels (the maze's grid drawn large)."),
    out: Path = typer.Option(Path("data/mazes"), help="Output folder: one sample folder per maze."),
) -> None:
    """Maze sample folders (first_frame.png, final_frame.png, ground_truth.gif, prompt.txt, maze.json):
    any pipeline takes them with --data, and --scorer maze judges its videos against maze.json."""
    from interp.tasks.maze_data import write_maze_samples

    if not 2 <= size <= 64 or not 1 <= n <= 100_000 or not 2 <= frames <= 64 or not 2 * size + 1 <= pixels <= 8192:
        raise UsageError(f"--size 2-64, -n 1-100000, --frames 2-64 and --pixels {2 * size + 1}-8192, got "
                         f"{size}, {n}, {frames}, {pixels}")  # fmt: skip
    if first_seed < 0:
        raise UsageError(f"--first-seed must be >= 0, got {first_seed}")
    check_output(out)
    folders = write_maze_samples(out, size, n, first_seed, frames, pixels)
    typer.echo(f"{len(folders)} maze samples ({size}x{size}, {frames} frames, {pixels} px) in {out}")
