"""Figures of the verifier-free chain of steps (any model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def convergence_figure(summary: dict, path: str | Path) -> Path:
    """Distance of x0_hat to the final sample per step (overall and per frame), the commit step per
    frame, and the spread across seeds per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = summary["steps"]
    per_frame = np.array(summary["distance_per_step_per_frame"], dtype=float)  # (steps, frames)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for f in range(per_frame.shape[1]):
        axes[0].plot(steps, per_frame[:, f], color=plt.cm.viridis(f / max(1, per_frame.shape[1] - 1)), lw=1,
                     label=f"frame {f}" if per_frame.shape[1] <= 8 else None)  # fmt: skip
    axes[0].plot(steps, summary["distance_per_step"], "k-o", ms=3, label="all frames")
    axes[0].axhline(summary["threshold"], color="grey", ls="--", lw=1)
    axes[0].set(
        xlabel="denoising step", ylabel="||x0_hat - final|| / ||final||", title="convergence to the final sample"
    )
    axes[0].legend(fontsize=7)
    commits = summary["commit_step_per_frame_median"]
    frames = np.arange(len(commits))
    axes[1].bar(frames, [np.nan if c is None else c for c in commits], color="C2")
    axes[1].set(
        xlabel="latent frame", ylabel="median commit step", title=f"commit step (distance < {summary['threshold']})"
    )
    axes[1].set_xticks(frames)
    spread = summary.get("seed_spread_per_step")
    if spread:
        axes[2].plot(steps, spread, "o-", color="C3")
        axes[2].set(title=f"spread across seeds ({summary['samples_with_seeds']} samples)")
    else:
        axes[2].text(0.5, 0.5, "one seed per sample:\nno spread to measure", ha="center", va="center")
        axes[2].set(title="spread across seeds")
    axes[2].set(xlabel="denoising step", ylabel="mean pairwise distance / ||final||")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
