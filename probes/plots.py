"""Figures of a probing table, one per target: the probe and the control task on the metric's scale,
selectivity on its own diverging scale, and the per-step quantities (the probe at its best layer with
a bootstrap interval over test videos, x_t alone, conditioning alone, majority class) as curves over
steps. A target the inputs already decode is flagged in the title."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from probes.summary import input_flag


def _grid(rows, column: str):
    return rows.pivot_table(index="layer", columns="step", values=column, aggfunc="mean").sort_index(ascending=False)


def metric_limits(rows) -> tuple[float, float]:
    """The scale of scores: [0, 1] for accuracy; [min(0, lowest), 1] for R^2 (it can be negative)."""
    shown = [c for c in ("value", "control", "x_t", "condition", "vae_latent") if c in rows and rows[c].notna().any()]
    low = float(np.nanmin([rows[c].min() for c in shown]))
    return min(0.0, np.floor(low * 10) / 10), 1.0


def selectivity_limit(rows) -> float:
    return max(0.05, float(np.ceil(np.nanmax(np.abs(rows["selectivity"])) * 20) / 20))


def _curves(ax, rows, metric: str, limits) -> None:
    best = rows.loc[rows["selectivity"].idxmax()]
    at = rows[rows["layer"] == best["layer"]].sort_values("step")
    steps = at["step"].to_numpy()
    ax.plot(steps, at["value"], "o-", color="C0", ms=3, label=f"probe, layer {int(best['layer'])} (best selectivity)")
    if "value_lo" in at and at["value_lo"].notna().any():
        ax.fill_between(steps, at["value_lo"], at["value_hi"], color="C0", alpha=0.2, label="95% CI over test videos")
    ax.plot(steps, at["control"], "s--", color="C3", ms=3, label="control task, same layer")
    per_step = rows.groupby("step")["x_t"].first()
    ax.plot(per_step.index, per_step.to_numpy(), "^-", color="C2", ms=3, label="probe on x_t alone")
    if rows["condition"].notna().any():
        ax.axhline(rows["condition"].iloc[0], color="C4", ls="-.", label="conditioning alone")
    if "vae_latent" in rows and rows["vae_latent"].notna().any():
        ax.axhline(rows["vae_latent"].iloc[0], color="C5", ls="--", label="the video's VAE latent alone")
    if metric == "accuracy" and rows["majority_rate"].notna().any():
        ax.axhline(rows["majority_rate"].iloc[0], color="grey", ls=":", label="majority class")
    ax.set(xlabel="denoising step", ylabel=f"test {metric}", ylim=(limits[0] - 0.02, limits[1] + 0.02))
    ax.set_title("per step (inputs are per step, not per layer)", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="lower right")


def probe_figure(table, target: str):
    """One target's figure (a matplotlib Figure): probe and control heatmaps (layers x steps, one
    scale), selectivity (its own scale), and the per-step curves with the input-only controls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    rows = table[table["target"] == target]
    if rows.empty:
        raise ValueError(f"no rows for target {target!r} in the table")
    metric = rows["metric"].iloc[0]
    limits = metric_limits(rows)
    sel = selectivity_limit(rows)
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.9), gridspec_kw={"width_ratios": [1, 1, 1, 1.25]})
    panels = (("value", "probe", "viridis", limits, metric), ("control", "control task", "viridis", limits, metric),
              ("selectivity", "selectivity (probe - control)", "RdBu_r", (-sel, sel), "selectivity"))  # fmt: skip
    for ax, (column, title, cmap, (vmin, vmax), bar) in zip(axes, panels):
        sns.heatmap(_grid(rows, column), ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, cbar_kws={"label": bar})
        ax.set(title=title, xlabel="denoising step", ylabel="layer")
        ax.title.set_fontsize(10)
    _curves(axes[3], rows, metric, limits)
    flag = input_flag(rows)
    n_test = int(rows["n_test_videos"].iloc[0])
    title = f"{target}: test {metric} per (step, layer), {n_test} test videos"
    fig.suptitle(title + (f"\nWARNING: target {flag}" if flag else ""), color="C3" if flag else "black", fontsize=11)
    fig.tight_layout()
    return fig


def plot_target(table, target: str, path: str | Path) -> Path:
    """``probe_figure`` written to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = probe_figure(table, target)
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
