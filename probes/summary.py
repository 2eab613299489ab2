"""What a probing table says per target: the best cell and whether the model's inputs already decode
the target (then a high probe score is no evidence that the model computes it)."""

from __future__ import annotations

import numpy as np

# A target counts as decodable from the inputs when a probe on x_t alone (at some step), on the
# conditioning alone or (a store of given videos) on the video's VAE latent alone scores within this of
# the best block probe (in the metric's units).
INPUT_MARGIN = 0.05


def input_baseline(rows) -> tuple[str, float]:
    """The strongest input-only control of one target's rows: ("x_t alone", best over steps), ("conditioning
    alone", its score) or ("the video's VAE latent alone", its score); NaN where none was measured."""
    x_t = float(np.nanmax(rows["x_t"])) if np.isfinite(rows["x_t"]).any() else float("nan")
    found = [("x_t alone", x_t)]
    for column, name in (("condition", "conditioning alone"), ("vae_latent", "the video's VAE latent alone")):
        if column in rows and np.isfinite(rows[column]).any():
            found.append((name, float(rows[column].iloc[0])))
    finite = [(n, v) for n, v in found if np.isfinite(v)]
    return max(finite, key=lambda nv: nv[1]) if finite else ("x_t alone", float("nan"))


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
