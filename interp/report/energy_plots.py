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


def write_energy_figures(store, video: int, step: int, out_dir: str | Path) -> list[Path]:
    """Token energy (layers x frames heatmap, per-token maps) and PCA colour maps of one video at one
    step of a store, plus the heatmap's numbers as .npy; returns the paths written."""
    from interp.analysis.token_energy import energy_by_layer, layer_sites, pca_rgb, token_energy

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = layer_sites(store, video, step)
    layers, sites = list(chosen), list(chosen.values())
    tag = f"video {video}, step {step} (sigma {store.sigma(step):.2f})"
    matrix = energy_by_layer(store, video, step, sites)
    maps = np.stack([token_energy(store, s, [video], [step])[0, 0] for s in sites])
    rgb = np.stack([pca_rgb(store, s, video, step) for s in sites])
    np.save(out_dir / "energy_layers_frames.npy", matrix)
    return [
        plot_layer_frame_energy(matrix, layers, out_dir / "energy_layers_frames.png", f"token energy, {tag}"),
        plot_token_maps(maps, layers, out_dir / "energy_maps.png", f"token L2 norm, {tag}"),
        plot_token_maps(rgb, layers, out_dir / "pca_maps.png", f"PCA of tokens, {tag}", rgb=True),
        out_dir / "energy_layers_frames.npy",
    ]
