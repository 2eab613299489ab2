"""Figures of attention across frames: frame x frame maps on a step x layer grid, locality curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from activations.axes import parse_site
from interp.report.mpl import pyplot


def frame_map_grid(mass: np.ndarray, sites: list[str], steps: list[int], path: str | Path) -> Path:
    """``mass`` (sites, steps, T, T): one map per (step row, layer column), one colour scale (0-1)."""
    plt = pyplot()
    n_sites, n_steps = mass.shape[:2]
    fig, axes = plt.subplots(n_steps, n_sites, figsize=(1.3 * n_sites + 1.2, 1.3 * n_steps + 0.6), squeeze=False)
    image = None
    for i in range(n_steps):
        for j in range(n_sites):
            ax = axes[i][j]
            image = ax.imshow(mass[j, i], vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"layer {parse_site(sites[j])[1]}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"step {steps[i]}", fontsize=8)
    fig.suptitle("attention mass: query frame (rows) to key frame (columns)", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, fraction=0.02)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def locality_curves(locality: dict, sites: list[str], steps: list[int], path: str | Path) -> Path:
    """One panel per locality kind: its share over the steps, one line per layer."""
    plt = pyplot()
    kinds = [k for k in locality if np.nanmax(np.nan_to_num(locality[k], nan=0.0)) > 0 or k != "text"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3.0), sharey=True, squeeze=False)
    colours = plt.get_cmap("viridis")(np.linspace(0, 1, max(len(sites), 2)))
    for ax, kind in zip(axes[0], kinds):
        for i, site in enumerate(sites):
            ax.plot(steps, locality[kind][i], "-", color=colours[i], label=f"layer {parse_site(site)[1]}")
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("denoising step")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("share of a query frame's attention")
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
