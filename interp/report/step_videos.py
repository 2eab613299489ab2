"""x0_hat step videos of any model: one video per chosen step and a filmstrip (rows steps, columns
frames), decoded one step at a time so memory holds one decoded video plus small thumbnails."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from interp.report.filmstrip import save_filmstrip, save_gif


def _thumb(frame: np.ndarray, width: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if w <= width:
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, max(1, round(h * width / w))), Image.BILINEAR))


def frame_subset(n_frames: int, max_frames: int) -> list[int]:
    """At most ``max_frames`` evenly spaced frames, the first and the last included."""
    if n_frames <= max_frames:
        return list(range(n_frames))
    return sorted({int(round(i)) for i in np.linspace(0, n_frames - 1, max_frames)})


def write_step_videos(
    decode: Callable[[torch.Tensor], np.ndarray],
    x0_hats: dict[int, torch.Tensor],
    sigmas: dict[int, float],
    final: torch.Tensor,
    out: str | Path,
    title: str = "",
    max_frames: int = 8,
    thumb_width: int = 160,
    gif_scale: int | None = None,
    legend: dict | None = None,
    only_changes: bool = False,
) -> dict[str, Path]:
    """``step_SS.gif`` per step of ``x0_hats`` (one latent each, the adapter's layout), ``video.gif``
    of ``final`` and ``filmstrip.png``; ``decode`` maps a batch of latents to (B, T, H, W, 3) uint8.
    ``gif_scale`` None: small videos (the testbed's mazes) are upscaled to about 128 pixels. ``legend``: colour
    name -> RGB drawn under the filmstrip; ``only_changes``: its rows only the steps whose picture changes (a
    discrete renderer's picture settles; ``filmstrip.changing_rows``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    rows, labels, frames = [], [], None
    for step in sorted(x0_hats):
        with torch.no_grad():
            video = decode(x0_hats[step][None])[0]
        gif_scale = gif_scale or max(1, 128 // video.shape[2])
        paths[f"step_{step:02d}"] = save_gif(video, out / f"step_{step:02d}.gif", scale=gif_scale)
        frames = frames or frame_subset(len(video), max_frames)
        rows.append(np.stack([_thumb(video[f], thumb_width) for f in frames]))
        labels.append(step)
        del video
    with torch.no_grad():
        video = decode(final[None])[0]
    paths["video"] = save_gif(video, out / "video.gif", scale=gif_scale or max(1, 128 // video.shape[2]))
    frames = frames or frame_subset(len(video), max_frames)
    rows.append(np.stack([_thumb(video[f], thumb_width) for f in frames]))
    strip = np.stack(rows)
    sig = [sigmas[s] for s in labels] + [0.0]
    paths["filmstrip"] = save_filmstrip(strip, sig, out / "filmstrip.png", steps=[*labels, "final"], title=title,
                                        frames=frames, legend=legend, only_changes=only_changes)  # fmt: skip
    return paths


def check_steps(steps: Sequence[int], num_steps: int) -> None:
    bad = [s for s in steps if not 0 <= s < num_steps]
    if bad:
        raise ValueError(f"step {bad[0]} is out of range (0-{num_steps - 1})")
