"""Figures of token energy and PCA maps (seaborn / matplotlib). Energy maps of one video at several
steps can share one colour scale per layer (``scale_steps``), each row has its colour bar, and a
maze testbed's walls are drawn over its token maps (one token per cell)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402


def plot_layer_frame_energy(
    matrix: np.ndarray, layers: Sequence[int], path: str | Path, title: str = "", limits=None
) -> Path:
    """Heatmap of mean token energy, rows: layers, columns: frames (``limits``: a shared (vmin, vmax))."""
    fig, ax = plt.subplots(figsize=(1.6 + 0.6 * matrix.shape[1], 1.0 + 0.35 * matrix.shape[0]))
    vmin, vmax = limits if limits is not None else (None, None)
    sns.heatmap(matrix, ax=ax, cmap="viridis", yticklabels=[f"block {k}" for k in layers], cbar_kws={"label": "L2"},
                vmin=vmin, vmax=vmax)  # fmt: skip
    ax.set_xlabel("latent frame")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def maze_walls(open_sides: np.ndarray) -> Callable:
    """An overlay drawing a maze's inner walls on a (N, N) token map (token (r, c) = cell (r, c))."""
    n = open_sides.shape[0]

    def draw(ax) -> None:
        for r in range(n):
            for c in range(n):
                if c < n - 1 and not open_sides[r, c, 1]:  # east wall
                    ax.plot([c + 0.5, c + 0.5], [r - 0.5, r + 0.5], color="cyan", lw=1.2)
                if r < n - 1 and not open_sides[r, c, 2]:  # south wall
                    ax.plot([c - 0.5, c + 0.5], [r + 0.5, r + 0.5], color="cyan", lw=1.2)

    return draw


def plot_token_maps(
    maps: np.ndarray,
    layers: Sequence[int],
    path: str | Path,
    title: str = "",
    rgb: bool = False,
    limits: Sequence[tuple[float, float]] | None = None,
    overlay: Callable | None = None,
) -> Path:
    """Grid of per-token maps, rows: layers, columns: frames; ``maps`` is (layer, frame, h, w[, 3]).
    ``limits``: per layer (vmin, vmax), e.g. shared across steps (default: the row's own range);
    every row of scalar maps gets its colour bar; ``overlay(ax)`` draws on every map."""
    n_layers, n_frames = maps.shape[:2]
    fig, axes = plt.subplots(n_layers, n_frames, figsize=(1.1 * n_frames + 1.8, 1.0 * n_layers + 0.6), squeeze=False,
                             layout="constrained")  # fmt: skip
    for i in range(n_layers):
        if rgb:
            vmin, vmax = None, None
        elif limits is not None:
            vmin, vmax = limits[i]
        else:
            vmin, vmax = float(np.nanmin(maps[i])), float(np.nanmax(maps[i]))
        for j in range(n_frames):
            ax = axes[i, j]
            image = ax.imshow(np.nan_to_num(maps[i, j]), interpolation="nearest", vmin=vmin, vmax=vmax,
                              cmap=None if rgb else "magma")  # fmt: skip
            if overlay is not None:
                overlay(ax)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"latent frame {j}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"block {layers[i]}", fontsize=8)
        if not rgb:
            bar = fig.colorbar(image, ax=list(axes[i]), shrink=0.9, pad=0.02)
            bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _maze_overlay(store, video: int, grid: tuple[int, ...]) -> Callable | None:
    meta = store.meta(video)
    if meta.get("task") != "maze" or tuple(grid) != (meta.get("size"), meta.get("size")):
        return None
    from interp.tasks import maze as maze_task

    return maze_walls(maze_task.generate_maze(int(meta["size"]), int(meta["maze_seed"])).open_sides)


def write_energy_figures(
    store, video: int, step: int, out_dir: str | Path, scale_steps: Sequence[int] | None = None
) -> list[Path]:
    """Token energy (layers x frames heatmap, per-token maps) and PCA colour maps of one video at one
    step of a store, plus the heatmap's numbers as .npy; returns the paths written. ``scale_steps``:
    the steps whose energies set each layer's colour scale (so figures of those steps compare);
    default this step alone."""
    from interp.analysis.token_energy import energy_by_layer, layer_sites, pca_rgb, token_energy

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = layer_sites(store, video, step)
    layers, sites = list(chosen), list(chosen.values())
    scale_steps = sorted({*(scale_steps or []), step})
    shared = f"colour scale per layer shared by steps {', '.join(map(str, scale_steps))}"
    shared = shared if len(scale_steps) > 1 else ""
    tag = f"video {video}, step {step} (sigma {store.sigma(step):.2f})" + (f"\n{shared}" if shared else "")
    matrix = energy_by_layer(store, video, step, sites)
    energies = [token_energy(store, s, [video], scale_steps)[0] for s in sites]  # (steps, frame, h, w) per layer
    at = scale_steps.index(step)
    maps = np.stack([e[at] for e in energies])
    limits = [(float(np.nanmin(e)), float(np.nanmax(e))) for e in energies]
    frame_means = np.concatenate([np.nanmean(e.reshape(*e.shape[:2], -1), -1).ravel() for e in energies])
    rgb = np.stack([pca_rgb(store, s, video, step) for s in sites])
    overlay = _maze_overlay(store, video, maps.shape[-2:])
    np.save(out_dir / "energy_layers_frames.npy", matrix)
    heat_limits = (float(np.nanmin(frame_means)), float(np.nanmax(frame_means)))
    return [
        plot_layer_frame_energy(matrix, layers, out_dir / "energy_layers_frames.png", f"token energy, {tag}",
                                heat_limits if shared else None),  # fmt: skip
        plot_token_maps(maps, layers, out_dir / "energy_maps.png", f"token L2 norm, {tag}", limits=limits,
                        overlay=overlay),  # fmt: skip
        plot_token_maps(rgb, layers, out_dir / "pca_maps.png", f"PCA of tokens, {tag}", rgb=True, overlay=overlay),
        out_dir / "energy_layers_frames.npy",
    ]
