"""Layer x step heatmaps of a probing table, the controls beside the score on the same colour scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PANELS = (
    ("value", "probe"),
    ("control", "control task"),
    ("selectivity", "selectivity (probe - control)"),
    ("x_t", "probe on x_t alone"),
)


def _grid(rows, column: str):
    return rows.pivot_table(index="layer", columns="step", values=column, aggfunc="mean").sort_index(ascending=False)


def plot_target(table, target: str, path: str | Path) -> Path:
    """One figure per target: probe, control task, selectivity and x_t-only probe, layers x steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = table[table["target"] == target]
    if rows.empty:
        raise ValueError(f"no rows for target {target!r} in the table")
    metric = rows["metric"].iloc[0]
    # One scale for every panel: accuracy and R^2 share [min(0, lowest), 1]
    low = float(np.nanmin([rows[c].min() for c, _ in PANELS]))
    vmin = min(0.0, np.floor(low * 10) / 10)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6), sharey=True)
    for ax, (column, title) in zip(axes, PANELS):
        grid = _grid(rows, column)
        sns.heatmap(grid, ax=ax, vmin=vmin, vmax=1.0, cmap="viridis", cbar=ax is axes[-1], square=False)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("denoising step")
        ax.set_ylabel("layer" if ax is axes[0] else "")
    extra = []
    if metric == "accuracy" and np.isfinite(rows["majority_rate"].iloc[0]):
        extra.append(f"majority class {rows['majority_rate'].iloc[0]:.2f}")
    if np.isfinite(rows["condition"].iloc[0]):
        extra.append(f"conditioning frame alone {rows['condition'].iloc[0]:.2f}")
    fig.suptitle(f"{target}: test {metric} per (step, layer)" + (f" ({'; '.join(extra)})" if extra else ""))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_name(target: str, name: str = "probes") -> str:
    """``probe_<target>.png`` for the default run name, ``<name>.probe_<target>.png`` for others, so
    named runs in one folder never overwrite each other's figures."""
    return f"probe_{target}.png" if name == "probes" else f"{name}.probe_{target}.png"


def plot_all(table, out_dir: str | Path, name: str = "probes") -> dict[str, Path]:
    return {t: plot_target(table, t, Path(out_dir) / figure_name(t, name)) for t in table["target"].unique()}
