"""The seed ensemble's figure and text table: accuracy with 95% intervals per method, one panel per
maze size, each method's paired difference from the single seed (exact McNemar p) beside it."""

from __future__ import annotations

import numpy as np


def row_label(r: dict) -> str:
    parts = [r["method"]]
    if r.get("n_seeds", 1) > 1:
        parts.append(f"N={r['n_seeds']}")
    if "k" in r:
        parts.append(f"K={r['k']}")
    if "scale" in r:
        parts.append(f"x{r['scale']:.2f}")
    return ", ".join(parts)


def text_table(rows: list[dict]) -> list[str]:
    lines = [f"{'size':>4} {'method':<30} {'N':>3} {'K':>3} {'scale':>6} {'accuracy':>9}  95% CI"]
    for r in rows:
        n_seeds, k, scale = r.get("n_seeds", ""), r.get("k", ""), r.get("scale", "")
        scale = f"{scale:.2f}" if scale != "" else ""
        lines.append(
            f"{r['size']:>4} {r['method']:<30} {n_seeds!s:>3} {k!s:>3} {scale:>6} {r['accuracy']:>9.3f}"
            f"  {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}"
        )
    return lines


def _paired_text(r: dict, single: dict | None) -> str:
    if single is None or r is single or "solved" not in r or "solved" not in single:
        return ""
    from interp.analysis.claims import mcnemar

    a, b = np.asarray(r["solved"], bool), np.asarray(single["solved"], bool)
    only_a, only_b, p = mcnemar(a, b)
    return f"{only_a:+d}/{-only_b:+d} vs one seed, p={p:.2f}"


def plot_rows(rows: list[dict], path) -> None:
    """Accuracy with 95% intervals, one panel per maze size; the single seed as a reference line and,
    where rows keep per-maze outcomes, the paired test against it written beside each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    height = max(2.5, 0.32 * max(sum(r["size"] == s for r in rows) for s in sizes) + 1)
    fig, axes = plt.subplots(1, len(sizes), figsize=(7.5 * len(sizes), height), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        sel = [r for r in rows if r["size"] == size]
        ys = np.arange(len(sel))[::-1]
        acc = np.array([r["accuracy"] for r in sel])
        err = np.abs(np.array([r["ci95"] for r in sel]).T - acc)
        colours = ["C3" if r["method"].startswith("control") else "C0" for r in sel]
        ax.errorbar(acc, ys, xerr=err, fmt="none", ecolor="grey")
        ax.scatter(acc, ys, c=colours, zorder=3)
        single = next((r for r in sel if r["method"] == "single seed"), None)
        if single is not None:
            ax.axvline(single["accuracy"], color="grey", ls="--", lw=1)
        for y, r in zip(ys, sel):
            ax.annotate(_paired_text(r, single), (1.04, y), xycoords=("axes fraction", "data"), fontsize=7,
                        va="center")  # fmt: skip
        ax.set_yticks(ys, [row_label(r) for r in sel], fontsize=8)
        ax.set(xlim=(-0.02, 1.02), xlabel="share solved (95% Wilson CI per method)",
               title=f"{size}x{size} mazes, {sel[0].get('n', '?')} mazes (red: controls; right: paired McNemar, "
                     "mazes solved only by the method / only by one seed)")  # fmt: skip
        ax.title.set_fontsize(8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
