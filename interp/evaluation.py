"""Accuracy of a maze model: sample held-out mazes with the one sampler and ask the verifier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.execution.loop import initial_noise, sample
from interp.models.testbed import TestbedAdapter
from interp.tasks import maze as maze_task


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% for z = 1.96)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


@dataclass
class MazeEvaluation:
    size: int
    frames: int
    seeds: list[int]
    verdicts: list[maze_task.Verdict]

    @property
    def accuracy(self) -> float:
        return float(np.mean([v.solved for v in self.verdicts]))

    def wilson_interval(self, z: float = 1.96) -> tuple[float, float]:
        """95% Wilson score interval of the exact-match accuracy."""
        return wilson_interval(sum(v.solved for v in self.verdicts), len(self.verdicts), z)

    def summary(self) -> dict:
        lo, hi = self.wilson_interval()
        return {
            "size": self.size,
            "frames": self.frames,
            "n": len(self.verdicts),
            "accuracy": self.accuracy,
            "ci95": [lo, hi],
            "final_exact": float(np.mean([v.final_exact for v in self.verdicts])),
            "frames_valid": float(np.mean([v.frames_valid for v in self.verdicts])),
            "seeds": [self.seeds[0], self.seeds[-1]],
        }


def verify_latents(adapter, latents: torch.Tensor, mazes: Sequence[maze_task.Maze]) -> list[maze_task.Verdict]:
    """Decode final latents with the adapter and ask the verifier about each maze."""
    return [maze_task.verify(video, maze) for video, maze in zip(adapter.decode(latents), mazes)]


def evaluate_mazes(
    adapter: TestbedAdapter,
    maze_seeds: Sequence[int],
    size: int,
    frames: int,
    num_steps: int | None = None,
    shift: float | None = None,
    batch_size: int = 128,
    noise_seed_offset: int = 0,
    progress: bool = False,
) -> MazeEvaluation:
    """Sample one video per maze (noise seed = maze seed + offset) and verify each."""
    num_steps = num_steps or adapter.defaults.num_steps
    shift = adapter.defaults.shift if shift is None else shift
    mazes = [maze_task.generate_maze(size, s) for s in maze_seeds]
    verdicts: list[maze_task.Verdict] = []
    shape = adapter.latent_shape(size, frames)
    batches = range(0, len(mazes), batch_size)
    for i in tqdm(batches, disable=not progress, desc=f"{size}x{size} mazes"):
        chunk = mazes[i : i + batch_size]
        noise = initial_noise([m.seed + noise_seed_offset for m in chunk], shape, adapter.device, adapter.dtype)
        with torch.no_grad():
            out = sample(adapter, noise, adapter.conditioning(chunk, frames), num_steps=num_steps, shift=shift)
        verdicts.extend(verify_latents(adapter, out.latents, chunk))
    return MazeEvaluation(size, frames, list(maze_seeds), verdicts)
