"""Mazes as a data set like any other: VBVR-style sample folders any model can take, and the maze
verifier as a scorer over decoded frames, so a real pipeline and the testbed can be put on the same
mazes with the same verdicts.

A sample folder (``interp data maze``): ``first_frame.png`` (the puzzle, the maze's grid of
(2N+1)^2 squares drawn at ``pixels`` x ``pixels``), ``final_frame.png`` (the solved maze),
``ground_truth.gif`` (the solution video, the agent walking one cell per frame), ``prompt.txt``
(the instruction) and ``maze.json`` (the maze's truth: size, seed, open sides, start, goal, path).
``read_maze`` rebuilds the maze from ``maze.json`` with every field checked; ``maze.to_grid`` reads a
decoded video of any size back onto the maze's grid (the centre pixel of each square), which
``maze.verify`` judges.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from interp.tasks import maze as maze_task

PROMPT = (
    "A maze seen from above: black walls, white corridors, a green start and a red goal. A blue walker moves "
    "from the green square along the corridors to the red square, one square per frame, leaving a yellow "
    "trail; it never crosses a wall."
)
TRUTH = "maze.json"


def maze_record(maze: maze_task.Maze) -> dict:
    """What ``maze.json`` holds: enough to rebuild the maze and verify any video of it."""
    return {
        "task": "maze", "size": maze.size, "seed": maze.seed, "open_sides": maze.open_sides.astype(int).tolist(),
        "start": list(maze.start), "goal": list(maze.goal), "path": [list(p) for p in maze.path],
    }  # fmt: skip


def maze_from_record(data, where: str) -> maze_task.Maze:
    """The maze a record describes: the toolkit's mazes are made from seeds (probe targets, the chain's
    verifier and the energy overlay rebuild them from ``size`` and ``seed``), so the record must be
    exactly the maze its seed generates; anything else is one ValueError naming ``where``."""

    def fail(what: str):
        raise ValueError(f"{where}: {what}")

    if not isinstance(data, dict) or data.get("task") != "maze":
        fail('not a maze record (needs "task": "maze")')
    size, seed = data.get("size"), data.get("seed")
    if not isinstance(size, int) or isinstance(size, bool) or not maze_task.MIN_SIZE <= size <= 64:
        fail(f"size must be an integer from {maze_task.MIN_SIZE} to 64, got {size!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        fail(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    maze = maze_task.generate_maze(size, seed)
    expected = maze_record(maze)
    for name in ("open_sides", "start", "goal", "path"):
        if data.get(name) != expected[name]:
            fail(f"{name} is not that of the maze seed {seed} generates at size {size} (the record must describe it)")
    return maze


def read_maze(sample: str | Path) -> maze_task.Maze:
    """The maze of a sample folder (its ``maze.json``)."""
    path = Path(sample) / TRUTH
    if not path.is_file():
        raise ValueError(f"{Path(sample)}: no {TRUTH} (not a maze sample: write them with `interp data maze`)")
    from interp.models.config_checks import read_config

    return maze_from_record(read_config(path), str(path))


def render_frames(maze: maze_task.Maze, frames: int, pixels: int) -> np.ndarray:
    """The solution video (T, pixels, pixels, 3) uint8: the maze's grid drawn large, square by square."""
    grid = maze_task.render(maze_task.encode(maze, frames))  # (T, 2N+1, 2N+1, 3)
    return np.stack([np.asarray(Image.fromarray(f).resize((pixels, pixels), Image.NEAREST)) for f in grid])


def maze_score(video: np.ndarray, maze: maze_task.Maze) -> float:
    """1 if the verifier finds the video solves the maze, else 0 (``maze.verify`` on its grid)."""
    return float(maze_task.verify(maze_task.to_grid(video, maze.size), maze).solved)


def sample_name(size: int, seed: int) -> str:
    """The folder name of a maze sample (``write_maze_samples``)."""
    return f"maze{size}_seed{seed:06d}"


def write_maze_samples(out: str | Path, size: int, n: int, first_seed: int, frames: int, pixels: int) -> list[Path]:
    """``n`` maze sample folders in ``out`` (seeds first_seed..): returns their paths."""
    if not maze_task.MIN_SIZE <= size <= 64 or n < 1 or frames < maze_task.MIN_FRAMES or not 2 * size + 1 <= pixels:
        raise ValueError(f"size {size}, n {n}, frames {frames}, pixels {pixels}: need size 2-64, n >= 1, "
                         f"frames >= 2 and pixels >= 2 x size + 1")  # fmt: skip
    from interp.report.filmstrip import save_gif

    out = Path(out)
    folders = []
    for i in range(n):
        maze = maze_task.generate_maze(size, first_seed + i)
        folder = out / sample_name(size, maze.seed)
        folder.mkdir(parents=True, exist_ok=True)
        video = render_frames(maze, frames, pixels)
        Image.fromarray(video[0]).save(folder / "first_frame.png")
        Image.fromarray(video[-1]).save(folder / "final_frame.png")
        save_gif(video, folder / "ground_truth.gif", scale=1)
        (folder / "prompt.txt").write_text(PROMPT + "\n")
        (folder / TRUTH).write_text(json.dumps(maze_record(maze), indent=1))
        folders.append(folder)
    return folders


def read_maze_samples(folder: str | Path, names: list[str] | None = None) -> list[tuple[str, maze_task.Maze, str]]:
    """(name, maze, prompt) of every maze sample in ``folder`` (or the ``names`` chosen), in name order.
    The conditioning a model gets is the first frame: each ``first_frame.png`` must show the maze its
    ``maze.json`` describes (read back onto the grid), or the sample is refused."""
    from interp.samples import read_samples

    samples = read_samples(folder)
    if names is not None:
        by_name = {s.name: s for s in samples}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"--data {folder}: no sample {missing[0]!r}")
        samples = [by_name[n] for n in names]
    out = []
    for sample in samples:
        maze = read_maze(sample.folder)
        if sample.first_frame is None:
            raise ValueError(f"{sample.folder}: no first_frame.png (the puzzle the model is given)")
        try:
            frame = np.asarray(Image.open(sample.first_frame).convert("RGB"))
        except Exception as err:  # noqa: BLE001 - OSError, PIL's DecompressionBombError, ...
            raise ValueError(f"{sample.first_frame}: not a readable image ({type(err).__name__})") from None
        shown = maze_task.classify_pixels(maze_task.to_grid(frame[None], maze.size))[0]
        expected = maze_task.classify_pixels(maze_task.render(maze_task.encode(maze, 2))[:1])[0]
        if not np.array_equal(shown, expected):
            raise ValueError(f"{sample.first_frame}: does not show the maze its {TRUTH} describes")
        out.append((sample.name, maze, sample.prompt))
    return out
