"""What a probe is trained to read out: labels per token (or per video) on a store's token grid.

Two sources:
- a task's label provider (``LabelProvider``: the targets a task knows, e.g. the maze testbed's
  ground truth and verdicts, ``interp.tasks.maze_labels``);
- a label array a user supplies (``.npy`` or in memory), on the store's token grid or one value per video.

Labels come back as a float array of shape (n_videos, n_tokens) or (n_videos,), NaN where a label
is missing (unfinished videos, or values a user left out), with the kind of probe that fits them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from activations import ActivationStore

CLASS = "class"
REGRESSION = "regression"


@dataclass
class Labels:
    name: str
    kind: str  # CLASS or REGRESSION
    values: np.ndarray  # (n_videos, n_tokens) or (n_videos,), float, NaN = no label
    source: str

    @property
    def per_video(self) -> bool:
        return self.values.ndim == 1


def pool_labels(store: ActivationStore, grid_labels: np.ndarray, kind: str, name: str) -> np.ndarray:
    """(n_videos, T, H, W) labels on the full token grid -> (n_videos, n_tokens) on the stored tokens."""
    pooling = store.pooling
    flat = grid_labels.reshape(grid_labels.shape[0], -1)
    if pooling.kind == "none":
        return flat
    if pooling.kind == "random":
        return flat[:, pooling.token_index(store.layout.token_grid)]
    if kind == CLASS:
        raise ValueError(
            f"target {name!r} labels single tokens but the store pools tokens ({pooling.kind}); "
            "trace with --pooling none or random:K to probe it"
        )
    import torch

    pooled = pooling.apply(torch.from_numpy(flat[..., None].astype(np.float64)), store.layout.token_grid)
    return pooled[..., 0].numpy()


class LabelProvider(Protocol):
    """A task's ground truth for probes: the targets it knows and their labels on a store.
    Providers live beside their task (the maze's: ``interp.tasks.maze_labels``); probes never
    import a task."""

    targets: tuple[str, ...]

    def labels(self, store: ActivationStore, target: str) -> Labels: ...


def load_label_file(store: ActivationStore, name: str, path: str | Path, kind: str | None = None) -> Labels:
    """A user's labels from a ``.npy`` file (no pickles): (n_videos, n_tokens), (n_videos, frames, h, w)
    of the stored grid, or (n_videos,). Integer or boolean arrays are classes, floats regression;
    NaN (floats) or negative values (integers) mark tokens without a label."""
    path = Path(path)
    if path.suffix != ".npy" or not path.is_file():
        raise ValueError(f"labels {name!r}: {path} is not a .npy file")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"labels {name!r}: {path} is not a plain numeric .npy array ({err})") from err
    return labels_from_array(store, name, array, kind, source=str(path))


def labels_from_array(
    store: ActivationStore, name: str, array: np.ndarray, kind: str | None = None, source: str = "array"
) -> Labels:
    n_v, n_t = store.n_videos, store.layout.n_tokens
    grid = store.pooling.output_grid(store.layout.token_grid)
    shapes = [(n_v,), (n_v, n_t)] + ([(n_v, *grid)] if grid is not None else [])
    if array.shape not in shapes:
        raise ValueError(
            f"labels {name!r} have shape {array.shape}; this store needs one of "
            f"{' or '.join(str(s) for s in shapes)} (videos x stored tokens, or one label per video)"
        )
    if array.dtype.kind not in "biuf":
        raise ValueError(f"labels {name!r} must be numbers or booleans, got dtype {array.dtype}")
    inferred = REGRESSION if array.dtype.kind == "f" else CLASS
    kind = kind or inferred
    if kind not in (CLASS, REGRESSION):
        raise ValueError(f"labels {name!r}: kind must be {CLASS!r} or {REGRESSION!r}, got {kind!r}")
    values = array.astype(np.float64).reshape(n_v, -1) if array.ndim > 1 else array.astype(np.float64)
    if array.dtype.kind in "iu":
        values[array.reshape(values.shape) < 0] = np.nan
    if np.isinf(values).any():  # NaN means "no label"; Inf is a bug in the user's array, not a label
        raise ValueError(f"labels {name!r} ({source}) hold Inf; mark tokens without a label with NaN")
    if kind == CLASS and np.any(np.isfinite(values) & (values != np.round(values))):
        raise ValueError(f"labels {name!r}: class labels must be whole numbers")
    values[~store.complete] = np.nan
    return Labels(name, kind, values, source)


def standardisation(values: np.ndarray, train_rows: np.ndarray) -> tuple[float, float]:
    """(centre, scale) of regression labels from their training rows, in float64; the deviation is
    taken in units of its largest value, so that neither 1e-300 nor an offset of 1e9 loses the signal.
    A constant (or unlabelled) target has scale 1: it is only centred."""
    train = np.asarray(values, dtype=np.float64)[train_rows]
    train = train[np.isfinite(train)]
    if not len(train):
        return 0.0, 1.0
    centre = float(np.mean(train))
    if not np.isfinite(centre):  # values near the float64 limit: average their halves
        centre = float(np.mean(train / 2) * 2)
    deviation = train - centre
    unit = float(np.max(np.abs(deviation)))
    if not unit > 0 or not np.isfinite(unit):
        return centre, 1.0
    return centre, float(np.std(deviation / unit)) * unit


def standardised(values: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """Regression labels centred and scaled by their training rows (``standardisation``): a target's
    scale or offset never changes a score (R^2 is invariant, the fits are not). NaN rows stay NaN."""
    centre, scale = standardisation(values, train_rows)
    return (np.asarray(values, dtype=np.float64) - centre) / scale
