"""What a probe reads: a (step, site) slab of the store, or the model's inputs on the same tokens.

The inputs are the controls "what is decodable without the network": the noisy latent x_t that
entered the model at the step, and the conditioning latent (the given frame), both cut into the
transformer's token grid (each token's patch of latent channels) and pooled as the store pools.
"""

from __future__ import annotations

import numpy as np
import torch

from activations import ActivationStore


def _patch_tokens(latent: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """(V, C, T, H, W) latent -> (V, T'*H'*W', C*pt*ph*pw): each token's patch, frame-major."""
    v, c, t, h, w = latent.shape
    gt, gh, gw = grid
    if t % gt or h % gh or w % gw:
        raise ValueError(f"latent of shape {latent.shape[1:]} does not tile the token grid {grid}")
    pt, ph, pw = t // gt, h // gh, w // gw
    x = latent.reshape(v, c, gt, pt, gh, ph, gw, pw).transpose(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(v, gt * gh * gw, c * pt * ph * pw)


def _pool(store: ActivationStore, tokens: np.ndarray) -> np.ndarray:
    as_tensor = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32))
    pooled = store.pooling.apply(as_tensor, store.layout.token_grid)
    return pooled.numpy()


def x_t_tokens(store: ActivationStore, videos: list[int], step: int) -> np.ndarray:
    """(videos, stored tokens, patch features) of the noisy latent entering the model at ``step``."""
    latent = store.x_t(videos=videos, steps=[step])[:, 0].astype(np.float32)
    if latent.ndim != 5:
        raise ValueError(f"x_t of shape {latent.shape[1:]} is not a (C, T, H, W) latent")
    return _pool(store, _patch_tokens(latent, store.layout.token_grid))


def final_tokens(store: ActivationStore, videos: list[int]) -> np.ndarray:
    """(videos, stored tokens, patch features) of each video's final sample, cut and pooled like x_t."""
    latent = store.final(videos).astype(np.float32)
    if latent.ndim != 5:
        raise ValueError(f"final sample of shape {latent.shape[1:]} is not a (C, T, H, W) latent")
    return _pool(store, _patch_tokens(latent, store.layout.token_grid))


def condition_tokens(store: ActivationStore, videos: list[int]) -> np.ndarray:
    """(videos, stored tokens, features): each token sees the conditioning latent at its spatial
    place, all conditioning frames folded into features, the same for every frame of the video."""
    cond = store.condition(videos).astype(np.float32)
    if cond.ndim != 5:
        raise ValueError(f"conditioning latent of shape {cond.shape[1:]} is not (C, T, H, W)")
    gt, gh, gw = store.layout.token_grid
    v, c, t, h, w = cond.shape
    spatial = _patch_tokens(cond.reshape(v, c * t, 1, h, w), (1, gh, gw))  # (V, gh*gw, features)
    tokens = np.broadcast_to(spatial[:, None], (v, gt, gh * gw, spatial.shape[-1])).reshape(v, gt * gh * gw, -1)
    return _pool(store, tokens)


def token_types(store: ActivationStore, videos: list[int], condition: np.ndarray | None = None) -> np.ndarray:
    """(videos, stored tokens) integer type of each token for the control task.

    A type is what a probe could memorise without reading the property: the token's position
    (frame, h, w) and, where the store keeps the conditioning latent, what the given frame shows at
    that place (rounded, so that a discrete input such as the maze's cells gives a few types).
    ``condition``: ``condition_tokens(store, videos)`` when the caller already has it.
    """
    n_t = store.layout.n_tokens
    keys = np.broadcast_to(store.token_positions[None].astype(np.float64), (len(videos), n_t, 3))
    if store.has_condition:
        if condition is None:
            condition = condition_tokens(store, videos)
        keys = np.concatenate([keys, np.round(condition.astype(np.float64), 1)], axis=-1)
    flat = keys.reshape(len(videos) * n_t, -1)
    _, types = np.unique(flat, axis=0, return_inverse=True)
    return types.reshape(len(videos), n_t)
