"""The maze task's label provider for probes: ground truth per token, recomputed from each video's
metadata, and the verifier's verdict per video."""

from __future__ import annotations

import numpy as np

from activations import ActivationStore
from interp.tasks import maze as maze_task
from probes.labels import CLASS, REGRESSION, Labels, pool_labels

# Token targets of the maze testbed: name -> (key of ``maze.token_truth``, kind).
MAZE_TARGETS: dict[str, tuple[str, str]] = {
    "wall": ("n_walls", CLASS),  # number of closed sides of the cell (0-4)
    "wall_n": ("open_n", CLASS),
    "wall_e": ("open_e", CLASS),
    "wall_s": ("open_s", CLASS),
    "wall_w": ("open_w", CLASS),
    "n_walls": ("n_walls", CLASS),
    "start": ("start", CLASS),
    "goal": ("goal", CLASS),
    "on_path": ("on_path", CLASS),
    "dead_end": ("dead_end", CLASS),
    "dist_to_goal": ("dist_to_goal", REGRESSION),
    "trail": ("trail", CLASS),
    "agent": ("agent", CLASS),
}
_NEGATED = {"wall_n", "wall_e", "wall_s", "wall_w"}  # walls are closed sides: not open
VIDEO_TARGETS = ("solved", "final_exact", "frames_valid")  # the verifier's verdict, one per video


def maze_labels(store: ActivationStore, target: str) -> Labels:
    """Ground truth of the maze testbed for every complete video (NaN rows for the others)."""
    if target in VIDEO_TARGETS:
        values = np.full(store.n_videos, np.nan)
        for v in store.completed_videos:
            values[v] = float(store.meta(v)["verdict"][target])
        return Labels(target, CLASS, values, "verifier")
    if target not in MAZE_TARGETS:
        known = ", ".join([*MAZE_TARGETS, *VIDEO_TARGETS])
        raise ValueError(f"unknown target {target!r}; maze targets: {known} (or supply labels with --labels)")
    key, kind = MAZE_TARGETS[target]
    grid = tuple(store.layout.token_grid)
    values = np.full((store.n_videos, *grid), np.nan)
    for v in store.completed_videos:
        meta = store.meta(v)
        if meta.get("task") != "maze":
            raise ValueError(f"video {v} of {store.path} is not a maze video; supply labels with --labels")
        truth = maze_task.token_truth(maze_task.generate_maze(meta["size"], meta["maze_seed"]), meta["frames"])[key]
        if truth.shape != grid:
            raise ValueError(f"maze ground truth has shape {truth.shape} but the store's token grid is {grid}")
        values[v] = (~truth if target in _NEGATED else truth).astype(np.float64)
    return Labels(target, kind, pool_labels(store, values, kind, target), "maze ground truth")


class MazeLabels:
    """``probes.labels.LabelProvider`` of the maze task."""

    targets = (*MAZE_TARGETS, *VIDEO_TARGETS)
    # What a study reads per token first, the answer first (the solution path): SAE features are matched to these
    # unless a user names others.
    key_targets = ("on_path", "wall", "agent", "trail", "dist_to_goal")

    def labels(self, store: ActivationStore, target: str) -> Labels:
        return maze_labels(store, target)


MAZE = MazeLabels()
