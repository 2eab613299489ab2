"""Bootstrap intervals of mean scores over independent units (maze pairs, videos): statistics the
analyses and the experiments share, apart from any figure."""

from __future__ import annotations

import numpy as np


def pair_intervals(per_pair: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% bootstrap intervals over pairs of the mean score of every cell: ``per_pair`` (pairs, ...)
    with NaN where a pair was skipped; (low, high) of the cells' shape (NaN with fewer than 2 pairs)."""
    import warnings

    values = np.asarray(per_pair, dtype=float)
    if len(values) < 2:
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan.copy()
    picks = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    with warnings.catch_warnings():  # cells every resampled pair skipped
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(values[picks], axis=1)  # (n_boot, ...)
        return np.nanquantile(means, 0.025, axis=0), np.nanquantile(means, 0.975, axis=0)
