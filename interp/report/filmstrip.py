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


def save_filmstrip(
    x0_videos: np.ndarray,
    sigmas: Sequence[float],
    path: str | Path,
    steps: Sequence | None = None,
    title: str | None = None,
    frames: Sequence[int] | None = None,
) -> Path:
    """Decoded x0_hat of every step, (S, T, H, W, 3), as one PNG grid like the study's Figure 1
    (``frames``: the video frames the columns show, when they are a subset)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_steps, n_frames = x0_videos.shape[:2]
    steps = list(steps) if steps is not None else list(range(n_steps))
    fig, axes = plt.subplots(n_steps, n_frames, figsize=(1.1 * n_frames + 1.2, 1.1 * n_steps + 0.4), squeeze=False)
    for i in range(n_steps):
        for j in range(n_frames):
            ax = axes[i, j]
            ax.imshow(x0_videos[i, j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"frame {j if frames is None else frames[j]}", fontsize=8)
            if j == 0:
                label = f"step {steps[i]}" if not isinstance(steps[i], str) else steps[i]
                ax.set_ylabel(f"{label}\nσ={sigmas[i]:.2f}", fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    # Keep half an inch at the top for the title, clear of the column headings.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_side_by_side(videos: dict[str, np.ndarray], path: str | Path, max_frames: int = 8) -> Path:
    """Videos (name -> (T, H, W, 3) uint8) as rows of one PNG, frames as columns (evenly spaced ones
    when there are more than ``max_frames``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(videos)
    n_frames = min(len(v) for v in videos.values())
    cols = sorted({int(round(i)) for i in np.linspace(0, n_frames - 1, min(n_frames, max_frames))})
    fig, axes = plt.subplots(len(names), len(cols), figsize=(1.3 * len(cols) + 1.8, 1.3 * len(names) + 0.3),
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
                ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
