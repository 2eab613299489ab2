"""A user's scorer, as ``interp chain --scorer scorers:mean_red`` imports it (tests/ is on the path)."""

import numpy as np


def mean_red(frames: np.ndarray) -> float:
    """Mean red value of decoded frames (T, H, W, 3) uint8, scaled to [0, 1]."""
    return float(frames[..., 0].mean() / 255.0)
