"""Pixel-space masks (video frames x H x W) brought to a store's token grid, for probe labels.

Video diffusion models see *latent* frames: a causal video VAE (Wan, HunyuanVideo, CogVideoX,
LTX-Video) encodes video frame 0 alone and then every ``r`` frames together (Wan: r = 4, so 81 video
frames are 21 latent frames; LTX: r = 8), and the transformer groups latent pixels into patches.
A "frame" in a store is a token frame on that grid. Given only the video's and the grid's sizes:

- frames: the same count maps one to one; otherwise, with ``(F - 1) % (T - 1) == 0``, token frame 0
  is video frame 0 and token frame k >= 1 covers video frames ``(k-1) r + 1 .. k r``;
- space: ``H = 2h + 1`` is the maze renderer (a cell's pixel at (2i+1, 2j+1)); otherwise ``H`` must
  be a multiple of ``h`` and each token covers an ``H/h x W/w`` block.

Each token gets the share of its pixels inside the mask (or that share >= ``threshold``).
"""

from __future__ import annotations

import numpy as np


def _frame_groups(n_frames: int, t: int) -> list[np.ndarray]:
    if n_frames == t:
        return [np.array([f]) for f in range(t)]
    if t > 1 and (n_frames - 1) % (t - 1) == 0:
        r = (n_frames - 1) // (t - 1)
        return [np.array([0])] + [np.arange((k - 1) * r + 1, k * r + 1) for k in range(1, t)]
    raise ValueError(f"{n_frames} video frames do not map to {t} token frames (causal VAE: F = 1 + r (T - 1))")


def pixel_masks_to_tokens(masks: np.ndarray, token_grid: tuple[int, int, int], threshold: float | None = None):
    """(videos, F, H, W) masks -> (videos, T, h, w) share of each token's pixels in the mask (float),
    or booleans (share >= ``threshold``)."""
    masks = np.asarray(masks)
    if masks.ndim != 4:
        raise ValueError(f"pixel masks must be (videos, frames, H, W), got shape {masks.shape}")
    t, h, w = (int(v) for v in token_grid)
    n, f, height, width = masks.shape
    values = masks.astype(np.float64)
    if height == 2 * h + 1 and width == 2 * w + 1:  # the maze renderer: a cell's pixel at (2i+1, 2j+1)
        space = values[:, :, 1::2, 1::2]
    elif height % h == 0 and width % w == 0:
        space = values.reshape(n, f, h, height // h, w, width // w).mean(axis=(3, 5))
    else:
        raise ValueError(f"{height}x{width} pixels do not map to a {h}x{w} token grid (not a multiple)")
    out = np.stack([space[:, g].mean(axis=1) for g in _frame_groups(f, t)], axis=1)
    return out if threshold is None else out >= threshold


def labels_from_pixel_masks(store, name: str, masks: np.ndarray, threshold: float = 0.5):
    """Class labels (token in the mask or not) for a store, from pixel masks of its videos."""
    from probes.labels import labels_from_array

    tokens = pixel_masks_to_tokens(masks, tuple(store.layout.token_grid), threshold)
    return labels_from_array(store, name, tokens.astype(np.int64), source="pixel masks")
