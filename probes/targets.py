"""A probe target prepared for fitting: its training and test rows, the labels of both heads (the
target and its control task, Hewitt and Liang's random labels per token type), the folds; and the
scores of a fitted pair of heads with their bootstrap intervals. Shared by the whole-slab path
(``probes.run``) and the token-budget path (``probes.streaming``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from probes.config import ProbeConfig, Split
from probes.fit import Head
from probes.intervals import probe_intervals
from probes.labels import CLASS, REGRESSION, Labels, standardised
from probes.reference import fit_sklearn_predict


@dataclass
class Target:
    labels: Labels
    rows_train: np.ndarray  # (n,) flat indices into (videos_train x tokens) of labelled rows
    rows_test: np.ndarray
    head: Head
    control: Head
    folds: np.ndarray  # (n_train_rows,) fold of each training row
    majority_rate: float
    test_video: np.ndarray | None = None  # (n_test_rows,) test video (0..) of each test row: for intervals
    control_types: int = 0  # distinct token types among the target's rows


def control_labels(labels: np.ndarray, types: np.ndarray, train_rows: np.ndarray, rng) -> np.ndarray:
    """Hewitt and Liang's control task: one label per type, drawn from the training labels."""
    values = labels[train_rows]
    per_type = rng.choice(values, size=int(types.max()) + 1, replace=True)
    return per_type[types]


def prepare_target(labels: Labels, split: Split, types: np.ndarray, seed: int) -> Target:
    videos = split.train + split.test
    n_tr = len(split.train)
    values = labels.values[videos]  # (V,) or (V, tokens)
    flat = values.reshape(len(videos), -1)
    n_tok = flat.shape[1]
    valid = np.isfinite(flat).reshape(-1)
    is_train = np.repeat(np.arange(len(videos)) < n_tr, n_tok)
    rows_train = np.flatnonzero(valid & is_train)
    rows_test = np.flatnonzero(valid & ~is_train)
    if len(rows_train) == 0 or len(rows_test) == 0:
        raise ValueError(f"target {labels.name!r} has no labels on the training or the test videos")
    y = flat.reshape(-1)
    if labels.kind == REGRESSION:
        y = standardised(y, rows_train)
    fold_of_video = np.array([split.fold[v] for v in split.train])
    folds = fold_of_video[rows_train // n_tok]
    rng = np.random.default_rng(seed)
    if labels.per_video:  # one label per video: each video is its own type
        type_ids = np.arange(len(videos))
    else:
        type_ids = types.reshape(-1)
    control = control_labels(y, type_ids, rows_train, rng)
    majority = float("nan")
    if labels.kind == CLASS:
        classes, counts = np.unique(y[rows_train], return_counts=True)
        majority = float(np.mean(y[rows_test] == classes[np.argmax(counts)]))
    return Target(
        labels,
        rows_train,
        rows_test,
        Head(y[rows_train], y[rows_test]),
        Head(control[rows_train], control[rows_test]),
        folds,
        majority,
        rows_test // n_tok - n_tr,
        len(np.unique(type_ids[np.concatenate([rows_train, rows_test])])),
    )


def target_intervals(t: Target, pred: np.ndarray, control_pred: np.ndarray, video: np.ndarray, seed: int) -> tuple:
    """The intervals of a target's probe and selectivity from both heads' test predictions (``video``: the
    test video of each test row)."""
    return probe_intervals(pred, control_pred, t.head.y_test, t.control.y_test, video, t.labels.kind, seed)


def sklearn_scores(x_train: np.ndarray, x_test: np.ndarray, t: Target, video: np.ndarray, cfg: ProbeConfig) -> tuple:
    """(score, control score, C or alpha, intervals) of scikit-learn's reference on one slab's rows."""
    args = (t.labels.kind, t.folds, tuple(cfg.cs), tuple(cfg.alphas), cfg.max_iter, cfg.tol)
    value, reg, pred = fit_sklearn_predict(x_train, x_test, t.head, *args)
    control, _, control_pred = fit_sklearn_predict(x_train, x_test, t.control, *args)
    return value, control, reg, target_intervals(t, pred, control_pred, video, cfg.seed)


def groups(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
