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


def given_video(store: ActivationStore) -> bool:
    """Whether the store was traced from given videos (``interp trace --video-file``): its final sample is then
    each video's VAE latent, the clean input a probe on the blocks is compared against."""
    return bool((store.layout.extra.get("trace_config") or {}).get("video_file"))


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


CONDITION_TYPES = 64  # default: the most categories of the conditioning a token type may carry
FIT_ROWS = 5_000  # conditioning rows the summary is fitted on (a seeded sample when there are more)
SEARCH_ROWS, SEARCH_K = 1_000, 32  # the search for tight clusters: rows and the most clusters tried
TIGHT = 0.25  # categories: every cluster's RMS radius below this share of the distance to its nearest neighbour


class ConditionSummary:
    """What the given frame shows at a token, as one of at most ``max_types`` categories: the control
    task's memorisable identity beside the token's position.

    The conditioning enters a token's type only where it is categorical: its tokens (rounded to
    0.1) take at most ``max_types`` distinct values, none a neighbour of another on the rounding
    grid (discrete codes: the maze's cells); or else, for some k up to ``min(max_types, SEARCH_K)``,
    fewer than its distinct values, its tokens' k-means clusters (scikit-learn, seeded) are tight
    (``TIGHT``: a VAE-encoded discrete image, a few codes with noise). A
    continuous image, the frame of a real I2V model, is left out (one category): random labels per
    (position, cluster of a continuous latent) are a task no linear read of the model can memorise,
    so such a control would understate memorisation and inflate every selectivity (a target of
    position alone would score well above 0). The content of a continuous frame is what the
    ``condition`` control, the probe on the conditioning alone, measures.
    ``kind``: "values", "clusters" or "none".
    """

    def __init__(self, centres: np.ndarray, kind: str):
        self.centres = centres
        self.kind = kind

    @classmethod
    def fit(cls, rows: np.ndarray, max_types: int = CONDITION_TYPES, seed: int = 0) -> ConditionSummary:
        """Fitted on (..., features) conditioning rows (a seeded sample of ``FIT_ROWS`` when more)."""
        if max_types < 1:
            raise ValueError(f"the control task needs at least 1 conditioning type, got {max_types}")
        rows = rows.reshape(-1, rows.shape[-1]).astype(np.float64)
        if len(rows) > FIT_ROWS:
            rows = rows[np.random.default_rng(seed).choice(len(rows), FIT_ROWS, replace=False)]
        values = np.unique(np.round(rows, 1), axis=0)
        if len(values) <= max_types and _apart(values):  # discrete codes, exactly (the maze's cells)
            return cls(values, "values")
        from sklearn.cluster import KMeans

        # Codes with a little noise (a VAE's), which rounding splits: some k tight clusters, searched
        # on a seeded sample of SEARCH_ROWS rows (at most SEARCH_K fits), the chosen k refitted on all.
        search = rows[np.random.default_rng(seed).choice(len(rows), min(len(rows), SEARCH_ROWS), replace=False)]
        for k in range(2, min(max_types, SEARCH_K, len(values) - 1) + 1):
            if _tight(search, *_kmeans(KMeans, k, seed, search)):
                labels, centres = _kmeans(KMeans, k, seed, rows)
                if _tight(rows, labels, centres):
                    return cls(centres, "clusters")
        return cls(rows.mean(0, keepdims=True), "none")

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """(..., features) -> (...) index of the nearest category (a rounded row's own value if it is one)."""
        flat = rows.reshape(-1, rows.shape[-1]).astype(np.float64)
        if self.kind == "values":
            flat = np.round(flat, 1)
        out = np.empty(len(flat), dtype=np.int64)
        centres_sq = (self.centres**2).sum(1)
        for start in range(0, len(flat), 65_536):  # bounded memory: (block, centres) distances
            block = flat[start : start + 65_536]
            out[start : start + len(block)] = np.argmin(centres_sq[None] - 2 * block @ self.centres.T, axis=1)
        return out.reshape(rows.shape[:-1])


def _kmeans(kmeans_class, k: int, seed: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fit = kmeans_class(n_clusters=k, n_init=2, random_state=seed).fit(rows)
    return fit.labels_, fit.cluster_centers_


def _apart(values: np.ndarray) -> bool:
    """No two distinct rounded values are neighbours on the 0.1 grid: discrete codes, not a continuous
    input that rounding happened to leave with few values (one channel rounds to a few dozen)."""
    gaps = np.sqrt(((values[:, None] - values[None]) ** 2).sum(-1))
    np.fill_diagonal(gaps, np.inf)
    return bool(gaps.min() > 0.15)


def _tight(rows: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> bool:
    """Every cluster's RMS radius is below ``TIGHT`` times the distance to its nearest other centre."""
    gaps = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    np.fill_diagonal(gaps, np.inf)
    for c in range(len(centres)):
        members = rows[labels == c]
        radius = np.sqrt(((members - centres[c]) ** 2).sum(1).mean()) if len(members) else 0.0
        if radius >= TIGHT * gaps[c].min():
            return False
    return True


def token_types(
    store: ActivationStore,
    videos: list[int],
    condition: np.ndarray | None = None,
    max_condition_types: int = CONDITION_TYPES,
    seed: int = 0,
) -> np.ndarray:
    """(videos, stored tokens) integer type of each token for the control task.

    A type is what a probe could memorise without reading the property: the token's position
    (frame, h, w) and, where the store keeps a categorical conditioning latent, which category the
    given frame shows at that place (``ConditionSummary``: at most ``max_condition_types``). ``condition``:
    ``condition_tokens(store, videos)`` when the caller already has it.
    """
    n_t = store.layout.n_tokens
    position = np.broadcast_to(np.arange(n_t)[None], (len(videos), n_t))
    if not store.has_condition:
        return position.copy()
    if condition is None:
        condition = condition_tokens(store, videos)
    summary = ConditionSummary.fit(condition, max_condition_types, seed)
    _, types = np.unique(position * len(summary.centres) + summary(condition), return_inverse=True)
    return types.reshape(len(videos), n_t)
