"""A user's scorer, as ``interp chain --scorer scorers:mean_red`` imports it (tests/ is on the path)."""

import numpy as np


def mean_red(frames: np.ndarray) -> float:
    """Mean red value of decoded frames (T, H, W, 3) uint8, scaled to [0, 1]."""
    return float(frames[..., 0].mean() / 255.0)


def exits(frames: np.ndarray) -> float:
    """A scorer that ends the program instead of answering."""
    import sys

    sys.exit(0)


def not_a_number(frames: np.ndarray) -> float:
    return float("nan")


def text(frames: np.ndarray):
    return "good"


def raises(frames: np.ndarray) -> float:
    raise RuntimeError("the rule file is missing\nsecond line")


def slow(frames: np.ndarray) -> float:
    import time

    time.sleep(5)
    return 0.0


def swallows(frames: np.ndarray) -> float:
    """A slow scorer that turns any exception into a fallback answer."""
    import time

    try:
        time.sleep(5)
        return 1.0
    except Exception:  # noqa: BLE001 - the pattern under test
        return 0.0
