"""Figures of the causal experiments (seaborn / matplotlib): drawing only, from typed results."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from interp.report.mpl import pyplot


def grid_heatmap(grid, path: str | Path, title: str, vmin: float = 0.0, vmax: float = 1.0) -> Path:
    """A (step, layer) DataArray as a layers x steps heatmap."""
    import seaborn as sns

    plt = pyplot()
    # Wide enough for the title even with one or two steps (a swap at the first step only).
    width = max(1.2 + 0.45 * grid.sizes["step"], 0.075 * max(map(len, title.splitlines())) + 1.0)
    fig, ax = plt.subplots(figsize=(width, 1.4 + 0.35 * grid.sizes["layer"]))
    table = grid.transpose("layer", "step").to_pandas().sort_index(ascending=False)
    sns.heatmap(table, ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", annot=table.size <= 200, fmt=".2f")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def noise_curves(baseline: dict, at_step: dict, at_frame: dict, path: str | Path) -> Path:
    """Noise at step vs noise at frame: accuracy curves with 95% intervals (or similarities) and the baseline."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, result, label in ((axes[0], at_step, "denoising step s"), (axes[1], at_frame, "latent frame f")):
        xs = sorted(result, key=int)
        pos = [int(x) for x in xs]  # numeric, whether the keys came as ints or as JSON strings
        if "similarity" in baseline:  # a pipeline model: no verifier
            ax.plot(pos, [result[x]["similarity"] for x in xs], "o-", label="cosine similarity to unperturbed")
            ax.set_xlabel(label)
            ax.set_ylim(-1.02, 1.02)
            continue
        for metric, colour in (("accuracy", "C0"), ("final_exact", "C1")):
            ys = [result[x][metric] for x in xs]
            ci = np.array([result[x]["ci95" if metric == "accuracy" else "final_exact_ci95"] for x in xs])
            ax.plot(pos, ys, "o-", color=colour, label="solved" if metric == "accuracy" else "answer (last frame)")
            ax.fill_between(pos, ci[:, 0], ci[:, 1], color=colour, alpha=0.2)
        ax.axhline(baseline["accuracy"], color="grey", ls="--", label="no noise (solved)")
        ax.set_xlabel(label)
        ax.set_ylim(-0.02, 1.02)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title("x_s of every frame replaced by fresh noise at step s", fontsize=10)
    by_construction = "\n'solved' is 0 by construction (the noised frame is checked)"
    by_construction = "" if "similarity" in baseline else by_construction
    axes[1].set_title("frame f replaced by fresh noise at every step" + by_construction, fontsize=10)
    axes[0].set_ylabel("share of mazes")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def flow_figure(cka, sensitivity: list[float], path: str | Path) -> Path:
    """Sensitivity per injection step, and 1 - CKA (step x layer) averaged over injections."""
    import seaborn as sns

    plt = pyplot()
    injects = [int(s) for s in cka.inject_step.values]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].plot(injects, sensitivity, "o-")
    axes[0].set_xlabel("step s where noise is injected")
    axes[0].set_ylabel("mean 1 - CKA of later block outputs")
    axes[0].set_title("sensitivity to noise injected at step s", fontsize=10)
    with warnings.catch_warnings():  # steps before every injection are all-NaN columns
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(1 - cka.values, axis=0)  # (step, layer) averaged over injections
    grid = cka.isel(inject_step=0).copy(data=mean).transpose("layer", "step").to_pandas().sort_index(ascending=False)
    sns.heatmap(grid, ax=axes[1], vmin=0, vmax=max(0.05, float(np.nanmax(mean))), cmap="magma")
    axes[1].set_title("1 - CKA to the clean run, averaged over injection steps", fontsize=10)
    axes[1].set_xlabel("denoising step")
    axes[1].set_ylabel("layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def knockout_curves(baseline: dict, rows: list[dict], path: str | Path) -> Path:
    """Per rule: the score after a knockout at step s (95% intervals where a verifier scores), its
    random-removal control, and the unknocked run."""
    plt = pyplot()
    rules = list(dict.fromkeys(r["rule"] for r in rows)) or ["none"]
    fig, axes = plt.subplots(1, len(rules), figsize=(4.6 * len(rules), 3.4), sharey=True, squeeze=False)
    value = "accuracy" if "accuracy" in baseline else "similarity"
    for ax, rule in zip(axes[0], rules):
        sel = sorted((r for r in rows if r["rule"] == rule), key=lambda r: r["step"])
        steps = [r["step"] for r in sel]
        for key, colour, label in (("knocked", "C3", f"{rule} knockout"), ("control", "C0", "random control")):
            ax.plot(steps, [r[key][value] for r in sel], "o-", color=colour, label=label)
            if value == "accuracy":
                ci = np.array([r[key]["ci95"] for r in sel]).reshape(-1, 2)
                ax.fill_between(steps, ci[:, 0], ci[:, 1], color=colour, alpha=0.2)
        ax.axhline(baseline[value] if value == "accuracy" else 1.0, color="grey", ls="--", label="no knockout")
        ax.set_xlabel("knocked step s")
        ax.set_title(f"{rule}: attention removed at step s only", fontsize=10)
        ax.set_ylim(-0.02 if value == "accuracy" else -1.02, 1.02)
    axes[0][0].set_ylabel("share of mazes solved" if value == "accuracy" else "similarity to the unknocked output")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
