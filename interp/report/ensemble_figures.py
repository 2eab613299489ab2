"""The seed ensemble's figure: accuracy with 95% intervals per method, one panel per maze size."""

from __future__ import annotations

import numpy as np


def _label(r: dict) -> str:
    parts = [r["method"]]
    if r.get("n_seeds", 1) > 1:
        parts.append(f"N={r['n_seeds']}")
    if "k" in r:
        parts.append(f"K={r['k']}")
    if "scale" in r:
        parts.append(f"x{r['scale']:.2f}")
    return ", ".join(parts)


def plot_rows(rows: list[dict], path) -> None:
    """Accuracy with 95% intervals, one panel per maze size; the single seed as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    height = max(2.5, 0.32 * max(sum(r["size"] == s for r in rows) for s in sizes) + 1)
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), height), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        sel = [r for r in rows if r["size"] == size]
        ys = np.arange(len(sel))[::-1]
        acc = np.array([r["accuracy"] for r in sel])
        err = np.abs(np.array([r["ci95"] for r in sel]).T - acc)
        colours = ["C3" if r["method"].startswith("control") else "C0" for r in sel]
        ax.errorbar(acc, ys, xerr=err, fmt="none", ecolor="grey")
        ax.scatter(acc, ys, c=colours, zorder=3)
        single = next((r["accuracy"] for r in sel if r["method"] == "single seed"), None)
        if single is not None:
            ax.axvline(single, color="grey", ls="--", lw=1)
        ax.set_yticks(ys, [_label(r) for r in sel], fontsize=8)
        ax.set(xlim=(-0.02, 1.02), xlabel="share solved (95% CI)", title=f"{size}x{size} mazes (red: controls)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
