"""Figures of the exploration experiment and of early-step selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from interp.report.mpl import pyplot

BEHAVIOUR_LABELS = {"explore_then_prune": "explore, then prune", "self_correction": "self-correction",
                    "superposition": "superposition"}  # fmt: skip


def exploration_figure(result: dict, path: Path) -> Path:
    """Left: share of mazes per behaviour, per (size, model), with 95% intervals; right: x0_hat solved
    per step per (model, size)."""
    plt = pyplot()
    models = list(result)
    sizes = sorted({s for r in result.values() for s in r})
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    width = 0.8 / (len(models) * len(BEHAVIOUR_LABELS))
    for b, (label, title) in enumerate(BEHAVIOUR_LABELS.items()):
        for m, model in enumerate(models):
            offset = (b * len(models) + m) * width - 0.4 + width / 2
            shares = [result[model][s][label]["share"] for s in sizes]
            # max(0, .): a Wilson bound at a share of 0 or 1 can miss it by one rounding step
            lo = [max(0.0, result[model][s][label]["share"] - result[model][s][label]["ci95"][0]) for s in sizes]
            hi = [max(0.0, result[model][s][label]["ci95"][1] - result[model][s][label]["share"]) for s in sizes]
            axes[0].bar(np.arange(len(sizes)) + offset, shares, width, yerr=[lo, hi], capsize=2,
                        color=f"C{b}", alpha=1.0 if m == 0 else 0.45, label=f"{title}: {model}")  # fmt: skip
    axes[0].set_xticks(np.arange(len(sizes)), [f"{s}x{s}" for s in sizes])
    axes[0].set(ylabel="share of mazes", ylim=(0, 1.02), title="behaviours along the steps (95% Wilson)")
    axes[0].legend(fontsize=7, ncol=1)
    for m, model in enumerate(models):
        for k, size in enumerate(sizes):
            curve = result[model][size]["solved_per_step"]
            axes[1].plot(range(len(curve)), curve, color=f"C{k}", ls="-" if m == 0 else "--",
                         label=f"{model} {size}x{size}")  # fmt: skip
    axes[1].set(xlabel="denoising step", ylabel="x0_hat solved", ylim=(-0.02, 1.02), title="verifier on x0_hat")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def selection_figure(rows: list[dict], path: Path) -> Path:
    """Accuracy (95% intervals) against model calls per maze, one line per (method, scorer, k)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        key = r["method"] if r.get("k") is None else f"{r['method']} ({r['scorer']}, k={r['k']})"
        groups.setdefault(key, []).append(r)
    for i, (key, sel) in enumerate(groups.items()):
        sel = sorted(sel, key=lambda r: r["model_calls"])
        x = [r["model_calls"] for r in sel]
        y = [r["accuracy"] for r in sel]
        err = [[max(0.0, r["accuracy"] - r["ci95"][0]) for r in sel],  # rounding at 0 or 1 (see above)
               [max(0.0, r["ci95"][1] - r["accuracy"]) for r in sel]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=2, color=f"C{i % 10}", label=key)
    ax.set(xscale="log", xlabel="model calls per maze", ylabel="solved", ylim=(-0.02, 1.02),
           title="early-step selection: accuracy against compute")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
