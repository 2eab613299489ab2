"""Figures of token energy and PCA maps (seaborn / matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402


def plot_layer_frame_energy(matrix: np.ndarray, layers: Sequence[int], path: str | Path, title: str = "") -> Path:
    """Heatmap of mean token energy, rows: layers, columns: frames."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * matrix.shape[1], 1.0 + 0.35 * matrix.shape[0]))
    sns.heatmap(matrix, ax=ax, cmap="viridis", yticklabels=[f"block {k}" for k in layers], cbar_kws={"label": "L2"})
    ax.set_xlabel("frame")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_token_maps(
    maps: np.ndarray, layers: Sequence[int], path: str | Path, title: str = "", rgb: bool = False
) -> Path:
    """Grid of per-token maps, rows: layers, columns: frames; ``maps`` is (layer, frame, h, w[, 3])."""
    n_layers, n_frames = maps.shape[:2]
    fig, axes = plt.subplots(n_layers, n_frames, figsize=(1.0 * n_frames + 1, 1.0 * n_layers + 0.4), squeeze=False)
    for i in range(n_layers):
        vmin, vmax = (None, None) if rgb else (np.nanmin(maps[i]), np.nanmax(maps[i]))
        for j in range(n_frames):
            ax = axes[i, j]
            ax.imshow(
                np.nan_to_num(maps[i, j]), interpolation="nearest", vmin=vmin, vmax=vmax, cmap=None if rgb else "magma"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"frame {j}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"block {layers[i]}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
