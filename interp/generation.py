"""Generate maze videos with the testbed, keeping x0_hat of every step, and write their pictures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from interp.execution.loop import StepState, initial_noise, sample
from interp.models.testbed import TestbedAdapter
from interp.report.filmstrip import save_filmstrip, save_gif
from interp.tasks import maze as maze_task


class X0Recorder:
    """Hook that keeps x0_hat of every step (on the CPU)."""

    def __init__(self) -> None:
        self.x0_hats: list[torch.Tensor] = []
        self.sigmas: list[float] = []

    def __call__(self, state: StepState) -> None:
        self.x0_hats.append(state.x0_hat.detach().float().cpu())
        self.sigmas.append(state.sigma)

    def stacked(self) -> torch.Tensor:
        """(B, S, C, T, H, W)"""
        return torch.stack(self.x0_hats, dim=1)


@dataclass
class Generated:
    maze: maze_task.Maze
    frames: int
    noise_seed: int
    video: np.ndarray  # (T, H, W, 3) uint8, decoded final latent
    x0_videos: np.ndarray  # (S, T, H, W, 3) uint8, decoded x0_hat per step
    sigmas: list[float]
    verdict: maze_task.Verdict


def generate_mazes(
    adapter: TestbedAdapter,
    mazes: Sequence[maze_task.Maze],
    frames: int,
    num_steps: int | None = None,
    shift: float | None = None,
    noise_seeds: Sequence[int] | None = None,
) -> list[Generated]:
    """Sample one video per maze in one batch, with x0_hat of every step decoded."""
    num_steps = num_steps or adapter.defaults.num_steps
    shift = adapter.defaults.shift if shift is None else shift
    noise_seeds = list(noise_seeds) if noise_seeds is not None else [m.seed for m in mazes]
    if len(noise_seeds) != len(mazes):
        raise ValueError(f"{len(mazes)} mazes but {len(noise_seeds)} noise seeds")
    size = mazes[0].size
    if any(m.size != size for m in mazes):
        raise ValueError("all mazes of one batch must have the same size")
    recorder = X0Recorder()
    noise = initial_noise(noise_seeds, adapter.latent_shape(size, frames), adapter.device, adapter.dtype)
    out = sample(adapter, noise, adapter.conditioning(list(mazes), frames), num_steps, shift, hooks=[recorder])
    videos = adapter.decode(out.latents)
    x0 = recorder.stacked()
    results = []
    for b, maze in enumerate(mazes):
        verdict = maze_task.verify(videos[b], maze)
        x0_videos = adapter.decode(x0[b])
        results.append(Generated(maze, frames, noise_seeds[b], videos[b], x0_videos, recorder.sigmas, verdict))
    return results


def commit_step(result: Generated) -> int:
    """First step from which the decoded x0_hat stays the final video (its picture commits)."""
    same = [np.array_equal(x, result.video) for x in result.x0_videos]
    step = len(same)
    while step > 0 and same[step - 1]:
        step -= 1
    return step


def write_generated(result: Generated, out_dir: str | Path) -> dict[str, Path]:
    """video.gif, filmstrip.png and verdict.json for one generated maze video."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = (
        f"maze {result.maze.size}x{result.maze.size} seed {result.maze.seed}: "
        f"{'solved' if result.verdict.solved else 'not solved'}; x0_hat final from step {commit_step(result)}\n"
        "(only the steps where the picture changes)"
    )
    strip = save_filmstrip(result.x0_videos, result.sigmas, out_dir / "filmstrip.png", title=title,
                           legend=maze_task.PALETTE, only_changes=True)  # fmt: skip
    paths = {
        "video": save_gif(result.video, out_dir / "video.gif"),
        "filmstrip": strip,
        "verdict": out_dir / "verdict.json",
    }
    record = {
        "maze_size": result.maze.size,
        "maze_seed": result.maze.seed,
        "frames": result.frames,
        "noise_seed": result.noise_seed,
        "verdict": asdict(result.verdict),
    }
    paths["verdict"].write_text(json.dumps(record, indent=2))
    return paths
