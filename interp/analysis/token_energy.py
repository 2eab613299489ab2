"""The study's per-layer token energy (L2 norm over the hidden size) and PCA colour maps, from a store.

Everything here reads a store only (no model), one (site, step) slab at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.decomposition import PCA

from activations.axes import block_output_sites
from activations.reader import ActivationStore


def _to_grid(store: ActivationStore, values: np.ndarray) -> np.ndarray:
    """Values on the token axis (last axis) placed on the stored token grid; NaN where no token was kept."""
    grid_shape = tuple(int(v) for v in store.token_positions.max(axis=0) + 1)
    if store.pooling.kind == "random":
        grid_shape = store.layout.token_grid
    out = np.full(values.shape[:-1] + grid_shape, np.nan, dtype=np.float32)
    f, h, w = store.token_positions.T
    out[..., f, h, w] = values
    return out


def token_energy(store: ActivationStore, site: str, videos=None, steps=None) -> np.ndarray:
    """(video, step, frame, h, w) L2 norm of each token's activation."""
    acts = store.activations(site, videos=videos, steps=steps).astype(np.float32)
    return _to_grid(store, np.linalg.norm(acts, axis=-1))


def layer_sites(store: ActivationStore, video: int, step: int) -> dict[int, str]:
    """Per layer, the block-output site that holds data at (video, step): a two-expert model (Wan 2.2)
    runs one expert per step, the other's slab is NaN."""
    chosen = {}
    for layer, sites in block_output_sites(store.sites).items():
        for site in sites:
            if len(sites) == 1 or np.isfinite(store.activations(site, videos=[video], steps=[step])).any():
                chosen[layer] = site
                break
    return chosen


def energy_by_layer(store: ActivationStore, video: int, step: int, sites: Sequence[str] | None = None) -> np.ndarray:
    """(layer, frame) mean token energy per frame: the study's layers x frames heatmap."""
    sites = list(sites) if sites is not None else list(layer_sites(store, video, step).values())
    rows = []
    for site in sites:
        energy = token_energy(store, site, videos=[video], steps=[step])[0, 0]
        rows.append(np.nanmean(energy.reshape(energy.shape[0], -1), axis=1))
    return np.stack(rows)


def pca_rgb(store: ActivationStore, site: str, video: int, step: int, seed: int = 0) -> np.ndarray:
    """(frame, h, w, 3) colours from the first three principal components of the tokens, scaled to [0, 1]."""
    acts = store.activations(site, videos=[video], steps=[step])[0, 0].astype(np.float32)
    n_components = min(3, acts.shape[0], acts.shape[1])
    comps = PCA(n_components=n_components, random_state=seed).fit_transform(acts)
    if n_components < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - n_components)))
    lo, hi = comps.min(axis=0), comps.max(axis=0)
    scaled = (comps - lo) / np.where(hi > lo, hi - lo, 1)
    return np.moveaxis(_to_grid(store, scaled.T), 0, -1)
