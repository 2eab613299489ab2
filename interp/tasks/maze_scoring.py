"""The maze task's scores and token regions for causal experiments (injected into the sweep engine).

- ``final_trail``: the answer of final latents (cells lit by trail or agent in the last frame);
- ``maze_preference``: share of the clean-only solution cells lit minus the corrupted-only ones;
- ``MazePairMetric``: per (pair, step, site) final latent, 1 = the clean run's behaviour,
  0 = the corrupted run's, NaN for pairs the model answers alike;
- ``diff_region``: tokens of the cells whose solutions differ between a pair;
- ``rewired_pairs``: clean mazes and their one-wall-swap corruptions.
"""

from __future__ import annotations

import numpy as np
import torch

from interp.tasks import maze as maze_task


def final_trail(latents: torch.Tensor) -> np.ndarray:
    """(B, N, N) cells lit by the trail (or agent) in the last frame of final latents."""
    z = latents.detach().float().cpu().numpy()
    trail = maze_task.LATENT_CHANNELS.index("trail")
    agent = maze_task.LATENT_CHANNELS.index("agent")
    return (z[:, trail, -1] > 0) | (z[:, agent, -1] > 0)


def path_mask(maze: maze_task.Maze) -> np.ndarray:
    mask = np.zeros((maze.size, maze.size), dtype=bool)
    for cell in maze.path:
        mask[cell] = True
    return mask


def maze_preference(lit: np.ndarray, clean: maze_task.Maze, corrupted: maze_task.Maze) -> float:
    """Share of the clean-only solution cells lit minus share of the corrupted-only ones, in [-1, 1]."""
    a, b = path_mask(clean), path_mask(corrupted)
    only_a, only_b = a & ~b, b & ~a
    share = lambda cells: float(lit[cells].mean()) if cells.any() else 0.0  # noqa: E731 (one path may contain the other)
    return share(only_a) - share(only_b)


def rewired_pairs(size: int, first_seed: int, n: int) -> tuple[list[maze_task.Maze], list[maze_task.Maze]]:
    clean = [maze_task.generate_maze(size, first_seed + i) for i in range(n)]
    return clean, [maze_task.rewire(m) for m in clean]


def diff_region(clean: maze_task.Maze, corrupted: maze_task.Maze, grid: tuple[int, int, int]) -> np.ndarray:
    """(T, H, W) mask of the cells whose solution differs, in every frame."""
    return np.broadcast_to(path_mask(clean) ^ path_mask(corrupted), grid)


class MazePairMetric:
    """Normalised maze score of patched final latents against each pair's clean and corrupted runs."""

    def __init__(self, clean: list[maze_task.Maze], corrupted: list[maze_task.Maze]):
        self.clean, self.corrupted = clean, corrupted

    def __call__(self, finals: torch.Tensor, clean_final: torch.Tensor, corr_final: torch.Tensor) -> np.ndarray:
        n, s, k = finals.shape[:3]
        scores = np.full((n, s, k), np.nan)
        for e in range(n):
            clean, corrupted = self.clean[e], self.corrupted[e]
            hi = maze_preference(final_trail(clean_final[e : e + 1])[0], clean, corrupted)
            lo = maze_preference(final_trail(corr_final[e : e + 1])[0], clean, corrupted)
            if hi == lo:  # the model answers both mazes alike: this pair says nothing
                continue
            lit = final_trail(finals[e].reshape(s * k, *finals.shape[3:]))
            raw = np.array([maze_preference(x, clean, corrupted) for x in lit]).reshape(s, k)
            scores[e] = (raw - lo) / (hi - lo)
        return scores


def answer_matches(finals: torch.Tensor, targets: list[maze_task.Maze]) -> np.ndarray:
    """(pairs, steps, sites) whether each final latent's answer is exactly the target maze's solution."""
    n, s, k = finals.shape[:3]
    out = np.zeros((n, s, k))
    for e in range(n):
        lit = final_trail(finals[e].reshape(-1, *finals.shape[3:]))
        target = path_mask(targets[e])
        out[e] = np.array([np.array_equal(x, target) for x in lit]).reshape(s, k)
    return out


def verifier_score(latent: np.ndarray, maze: maze_task.Maze) -> float:
    """The verifier on one decoded latent: 2 if solved, plus the share of the path lit minus extras."""
    verdict = maze_task.verify(maze_task.render(latent), maze)
    return 2.0 * verdict.solved + verdict.path_fraction - verdict.extra_fraction


def connectivity_score(latent: np.ndarray, maze: maze_task.Maze | None = None) -> float:
    """Verifier-free: read from the video alone (its own walls, start, goal and lit cells in the last
    frame; ``maze`` is not used). 1 if the lit cells join start to goal through open sides, plus half
    the share of lit cells on that route (a thin answer scores higher than a blot); 0 otherwise."""
    last = latent[:, -1]
    n = last.shape[-1]
    lit = (last[maze_task.TRAIL] > 0) | (last[maze_task.AGENT] > 0)
    starts, goals = np.argwhere(last[maze_task.START] > 0), np.argwhere(last[maze_task.GOAL] > 0)
    if len(starts) != 1 or len(goals) != 1 or not lit.any():
        return 0.0
    start, goal = tuple(starts[0]), tuple(goals[0])
    opened = last[maze_task.OPEN_N : maze_task.OPEN_W + 1] > 0
    previous = {start: None}
    frontier = [start] if lit[start] else []
    while frontier:  # breadth-first over lit cells through sides open in the video
        cell = frontier.pop(0)
        for d, (dr, dc) in enumerate(maze_task.DIRECTIONS):
            nxt = (cell[0] + dr, cell[1] + dc)
            if opened[d][cell] and 0 <= nxt[0] < n and 0 <= nxt[1] < n and lit[nxt] and nxt not in previous:
                previous[nxt] = cell
                frontier.append(nxt)
    if goal not in previous:
        return 0.0
    route, cell = 0, goal
    while cell is not None:
        route, cell = route + 1, previous[cell]
    return 1.0 + 0.5 * route / int(lit.sum())
