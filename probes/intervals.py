"""Bootstrap intervals over held-out videos for probe scores (a probe is scored on a handful of
test videos, and tokens of one video are not independent, so videos are what is resampled).

Each resample draws the test videos with replacement and recomputes the pooled score from
per-video sums: accuracy = correct / rows; R^2 = 1 - sum of squared residuals / total sum of
squares around the resample's mean. Selectivity (probe minus control task) is resampled paired:
both heads are scored on the same resampled videos.
"""

from __future__ import annotations

import numpy as np

from probes.labels import CLASS

N_BOOT = 1000
LEVEL = 0.95


def _video_sums(pred: np.ndarray, y: np.ndarray, video: np.ndarray, n_videos: int, kind: str) -> np.ndarray:
    """(videos, 4) sums per video: rows, correct or squared residuals, y, y^2."""
    sums = np.zeros((n_videos, 4))
    np.add.at(sums[:, 0], video, 1.0)
    if kind == CLASS:
        np.add.at(sums[:, 1], video, (pred == y).astype(float))
    else:
        np.add.at(sums[:, 1], video, (pred - y) ** 2)
        np.add.at(sums[:, 2], video, y)
        np.add.at(sums[:, 3], video, y**2)
    return sums


def _score(sums: np.ndarray, kind: str) -> np.ndarray:
    """Pooled score of resampled sums (..., 4)."""
    n = np.maximum(sums[..., 0], 1.0)
    if kind == CLASS:
        return sums[..., 1] / n
    total = sums[..., 3] - sums[..., 2] ** 2 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 1 - sums[..., 1] / total, np.where(sums[..., 1] == 0, 1.0, 0.0))


def bootstrap_scores(
    preds: list[np.ndarray], ys: list[np.ndarray], video: np.ndarray, kind: str, n_boot: int = N_BOOT, seed: int = 0
) -> np.ndarray:
    """Resampled pooled scores (n_boot, heads) of heads scored on the same test rows, ``video``
    giving each row's test video (0..V-1); every head sees the same resampled videos."""
    # Number the videos that hold rows 0..V-1: a test video without rows (no label) is not drawn.
    video = np.unique(np.asarray(video), return_inverse=True)[1].reshape(-1)
    n_videos = int(video.max()) + 1 if len(video) else 0
    if n_videos < 2:
        return np.full((n_boot, len(preds)), np.nan)
    counts = np.random.default_rng(seed).multinomial(n_videos, np.full(n_videos, 1 / n_videos), size=n_boot)
    return np.stack([_score(counts @ _video_sums(p, y, video, n_videos, kind), kind) for p, y in zip(preds, ys)], 1)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap samples (NaN, NaN without any)."""
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return float("nan"), float("nan")
    low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def probe_intervals(
    pred: np.ndarray,
    control_pred: np.ndarray,
    y: np.ndarray,
    control_y: np.ndarray,
    video: np.ndarray,
    kind: str,
    seed: int = 0,
) -> tuple[float, float, float, float]:
    """95% intervals of the probe's score and of its selectivity (probe - control), over videos."""
    boot = bootstrap_scores([pred, control_pred], [y, control_y], video, kind, seed=seed)
    return (*interval(boot[:, 0]), *interval(boot[:, 0] - boot[:, 1]))
