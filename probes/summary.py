"""What a probing table says per target: the best cell and whether the model's inputs already decode
the target (then a high probe score is no evidence that the model computes it)."""

from __future__ import annotations

import numpy as np

# A target counts as decodable from the inputs when a probe on x_t alone (at some step) or on the
# conditioning alone scores within this of the best block probe (in the metric's units).
INPUT_MARGIN = 0.05


def input_baseline(rows) -> tuple[str, float]:
    """The stronger input-only control of one target's rows: ("x_t alone", best over steps) or
    ("conditioning alone", its score); NaN where neither was measured."""
    x_t = float(np.nanmax(rows["x_t"])) if np.isfinite(rows["x_t"]).any() else float("nan")
    cond = float(rows["condition"].iloc[0]) if np.isfinite(rows["condition"]).any() else float("nan")
    if np.isfinite(cond) and not (x_t > cond):
        return "conditioning alone", cond
    return "x_t alone", x_t


def decodable_from_inputs(rows, margin: float = INPUT_MARGIN) -> bool:
    _, baseline = input_baseline(rows)
    return bool(np.isfinite(baseline) and baseline >= float(np.nanmax(rows["value"])) - margin)


def input_flag(rows) -> str:
    """A warning phrase for figures and headlines, or '' when the inputs do not decode the target."""
    if not decodable_from_inputs(rows):
        return ""
    name, baseline = input_baseline(rows)
    return (
        f"decodable from the inputs: {name} scores {baseline:.2f} vs the best block probe "
        f"{float(np.nanmax(rows['value'])):.2f} (within {INPUT_MARGIN})"
    )
