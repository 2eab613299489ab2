"""Pictures of videos: the final video as a GIF and the x0_hat filmstrip (rows: steps, columns: frames)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def upscale(frame: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling so one-pixel-per-cell mazes are visible."""
    return np.repeat(np.repeat(frame, factor, axis=-3), factor, axis=-2)


def save_gif(video: np.ndarray, path: str | Path, scale: int = 16, frame_ms: int = 500) -> Path:
    """An RGB video (T, H, W, 3) uint8 as a looping GIF."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.fromarray(upscale(f, scale)) for f in video]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return path


def changing_rows(x0_videos: np.ndarray, max_rows: int = 8) -> list[int]:
    """Rows (steps) where the decoded x0_hat differs from the row before, the first and the last
    always kept; at most ``max_rows`` (evenly thinned, the last kept)."""
    rows = [0] + [i for i in range(1, len(x0_videos)) if not np.array_equal(x0_videos[i], x0_videos[i - 1])]
    rows = sorted({*rows, len(x0_videos) - 1})
    if len(rows) > max_rows:
        keep = np.linspace(0, len(rows) - 1, max_rows).round().astype(int)
        rows = [rows[i] for i in sorted(set(keep.tolist()))]
    return rows


def _legend(fig, legend: dict[str, tuple[int, int, int]]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.array(c) / 255, edgecolor="grey", label=name) for name, c in legend.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)


def save_filmstrip(
    x0_videos: np.ndarray,
    sigmas: Sequence[float],
    path: str | Path,
    steps: Sequence | None = None,
    title: str | None = None,
    frames: Sequence[int] | None = None,
    legend: dict[str, tuple[int, int, int]] | None = None,
    only_changes: bool = False,
) -> Path:
    """Decoded x0_hat of every step, (S, T, H, W, 3), as one PNG grid like the study's Figure 1
    (``frames``: the video frames the columns show, when they are a subset; ``legend``: colour
    name -> RGB drawn under the grid; ``only_changes``: only the steps where the picture changes,
    ``changing_rows``, labelled with their step numbers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = list(steps) if steps is not None else list(range(x0_videos.shape[0]))
    if only_changes:
        rows = changing_rows(x0_videos)
        x0_videos, sigmas, steps = x0_videos[rows], [sigmas[i] for i in rows], [steps[i] for i in rows]
    n_steps, n_frames = x0_videos.shape[:2]
    bottom = 0.45 if legend else 0.0
    fig, axes = plt.subplots(n_steps, n_frames, figsize=(1.2 * n_frames + 1.5, 1.2 * n_steps + 0.5 + bottom),
                             squeeze=False)  # fmt: skip
    for i in range(n_steps):
        for j in range(n_frames):
            ax = axes[i, j]
            ax.imshow(x0_videos[i, j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"frame {j if frames is None else frames[j]}", fontsize=9)
            if j == 0:
                label = f"step {steps[i]}" if not isinstance(steps[i], str) else steps[i]
                ax.set_ylabel(f"{label}\nσ={sigmas[i]:.2f}", fontsize=9, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    if legend:
        _legend(fig, legend)
    # Keep half an inch at the top for the title, clear of the column headings, and room for the legend.
    fig.tight_layout(rect=(0, bottom / fig.get_figheight(), 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_side_by_side(
    videos: dict[str, np.ndarray], path: str | Path, max_frames: int = 8, legend: dict | None = None
) -> Path:
    """Videos (name -> (T, H, W, 3) uint8) as rows of one PNG, frames as columns (evenly spaced ones
    when there are more than ``max_frames``); ``legend``: colour name -> RGB drawn underneath."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(videos)
    n_frames = min(len(v) for v in videos.values())
    cols = sorted({int(round(i)) for i in np.linspace(0, n_frames - 1, min(n_frames, max_frames))})
    bottom = 0.45 if legend else 0.0
    fig, axes = plt.subplots(len(names), len(cols), figsize=(1.3 * len(cols) + 1.8, 1.3 * len(names) + 0.3 + bottom),
                             squeeze=False)  # fmt: skip
    for i, name in enumerate(names):
        for j, f in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(videos[name][f], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"frame {f}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    if legend:
        _legend(fig, legend)
    fig.tight_layout(rect=(0, bottom / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
