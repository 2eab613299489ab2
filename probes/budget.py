"""A per-video token budget for probes, and ridge from sums accumulated over blocks of rows.

- ``check_max_tokens``: the budget is ``None`` (every token) or a positive int.
- ``select_tokens`` / ``token_selection``: for each video, at most ``max_tokens`` labelled token
  positions, sorted, drawn once from a generator seeded by (run seed, video index), so the same
  tokens are read at every (step, layer, site) and by every control, and a video's selection does
  not depend on the split or on the other videos. Class targets are stratified (each class keeps
  its share of the video's labelled tokens, largest remainders, and every class present keeps at
  least one row); regression targets and per-video targets are sampled uniformly.
- ``GramRidge``: the ridge of ``probes.fit`` (standardised on the training rows, alpha from the
  grid by mean R^2 over the video folds, refit on every training row, R^2 on the test rows), from
  X^T X, X^T y, column sums and y sums per fold and for the test rows, accumulated in float64, so
  no design matrix is ever held.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from probes.labels import CLASS, Labels

_SALT = 0x70726F62  # keeps the token draw apart from the other users of the run seed


def check_max_tokens(max_tokens: object) -> None:
    """Raise a ValueError unless ``max_tokens`` is None or a positive int."""
    if max_tokens is None:
        return
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, numbers.Integral) or max_tokens < 1:
        raise ValueError(
            f"max_tokens must be a positive whole number of tokens per video (or None for every token), "
            f"got {max_tokens!r}"
        )


def class_quota(counts: np.ndarray, budget: int) -> np.ndarray:
    """Rows per class out of ``budget`` (< counts.sum()): proportional, largest remainders first,
    at least one per class when the budget has room for every class."""
    counts = np.asarray(counts, dtype=np.int64)
    exact = counts * budget / counts.sum()
    quota = np.minimum(np.floor(exact).astype(np.int64), counts)
    if budget >= len(counts):  # a rare class keeps a row in every video it appears in
        quota = np.maximum(quota, np.minimum(counts, 1))
    while quota.sum() > budget:  # the minimum of one overshot: take from the largest share
        quota[np.argmax(np.where(quota > 1, quota - exact, -np.inf))] -= 1
    while quota.sum() < budget:
        room = quota < counts
        quota[np.argmax(np.where(room, exact - quota, -np.inf))] += 1
    return quota


def select_tokens(values: np.ndarray, kind: str, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of at most ``budget`` labelled (finite) entries of one video's ``values``."""
    valid = np.flatnonzero(np.isfinite(values))
    if len(valid) <= budget:
        return valid
    if kind != CLASS:
        return np.sort(rng.choice(valid, size=budget, replace=False))
    classes, inverse, counts = np.unique(values[valid], return_inverse=True, return_counts=True)
    quota = class_quota(counts, budget)
    inverse = inverse.reshape(-1)
    chosen = [rng.choice(valid[inverse == k], size=int(q), replace=False) for k, q in enumerate(quota) if q]
    return np.sort(np.concatenate(chosen))


def token_selection(labels: Labels, videos: list[int], n_tokens: int, max_tokens: int, seed: int) -> list[np.ndarray]:
    """Per video (store indices, in the given order): the sorted token positions a probe reads.

    Token targets: at most ``max_tokens`` labelled tokens (stratified for classes). Per-video
    targets: the video's feature is the mean over a uniform sample of at most ``max_tokens`` tokens
    (none where the video has no label)."""
    out = []
    for v in videos:
        rng = np.random.default_rng([_SALT, int(seed) % 2**32, int(v)])
        if labels.per_video:
            if not np.isfinite(labels.values[v]):
                out.append(np.zeros(0, dtype=np.int64))
            elif n_tokens <= max_tokens:
                out.append(np.arange(n_tokens))
            else:
                out.append(np.sort(rng.choice(n_tokens, size=max_tokens, replace=False)))
        else:
            out.append(select_tokens(labels.values[v], labels.kind, max_tokens, rng))
    return out


class GramRidge:
    """Ridge regression of ``heads`` targets from sums accumulated block by block.

    Rows belong to a group: a cross-validation fold of the training videos (0 .. n_folds - 1) or
    the test videos (``n_folds``). Sums are taken of rows shifted by the first block's mean (x and
    y), so that standardising afterwards does not cancel digits when a feature's mean is large
    against its spread (DiT block outputs have such channels).
    """

    def __init__(self, n_folds: int, device: torch.device | str = "cpu", alphas: tuple[float, ...] | None = None):
        self.n_folds = n_folds
        self.device = torch.device(device)
        self.shift_x: torch.Tensor | None = None
        # With ``alphas``, test rows are predicted as they come (every training row precedes them), so
        # their scores can be resampled over videos without holding a design matrix: ``test_predictions``.
        self.alphas = alphas
        self._fitted: tuple[torch.Tensor, ...] | None = None  # (w_best, best, mean, inv std) from the training rows
        self.test_predictions: list[np.ndarray] = []  # per test add (video): (rows, H)

    def add(self, x: np.ndarray | torch.Tensor, y: np.ndarray, group: int) -> None:
        """``x`` (rows, d) features, ``y`` (rows, heads) targets of rows in ``group``."""
        if len(x) == 0:
            return
        dt = torch.float64
        x = torch.as_tensor(x).to(self.device, dt, copy=True)  # ours to shift in place: one float64 copy
        y = torch.as_tensor(np.asarray(y, dtype=np.float64).reshape(len(x), -1), device=self.device)
        if self._fitted is not None and group != self.n_folds:
            raise ValueError("training rows after test rows: the test rows were predicted without them")
        predict = self.alphas is not None and self.shift_x is not None and bool(torch.isfinite(self.shift_x).all())
        if group == self.n_folds and predict:  # (a slab never computed, all NaN, is not: it has no probe)
            if self._fitted is None:
                w_best, best, _, _, mean, inv = self._fit(self.alphas)
                self._fitted = (w_best, best, mean, inv)
            w_best, _, mean, inv = self._fitted
            z = torch.cat([(x - mean) * inv, torch.ones(len(x), 1, dtype=dt, device=self.device)], 1)
            self.test_predictions.append((z @ w_best + self.shift_y).cpu().numpy())  # the sums' y is shifted
        if self.shift_x is None:
            d, h, g = x.shape[1], y.shape[1], self.n_folds + 1
            self.shift_x, self.shift_y = x.mean(0).clone(), y.mean(0)
            self.n = torch.zeros(g, dtype=dt, device=self.device)
            self.sx = torch.zeros(g, d, dtype=dt, device=self.device)
            self.xx = torch.zeros(g, d, d, dtype=dt, device=self.device)
            self.xy = torch.zeros(g, d, h, dtype=dt, device=self.device)
            self.sy = torch.zeros(g, h, dtype=dt, device=self.device)
            self.yy = torch.zeros(g, h, dtype=dt, device=self.device)
        u, r = x.sub_(self.shift_x), y - self.shift_y
        self.n[group] += len(u)
        self.sx[group] += u.sum(0)
        self.xx[group] += u.T @ u
        self.xy[group] += u.T @ r
        self.sy[group] += r.sum(0)
        self.yy[group] += (r * r).sum(0)

    def _standardised(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per group: Z^T Z (G, d+1, d+1) and Z^T y (G, d+1, H) of the standardised rows with a
        column of ones, Z = [(x - mean) / std, 1], mean and std of the training rows (biased); and the
        mean and 1 / std (of the unshifted features)."""
        f = self.n_folds
        n_train = self.n[:f].sum()
        mu = self.sx[:f].sum(0) / n_train  # training mean of the shifted rows
        var = torch.diagonal(self.xx[:f].sum(0)) / n_train - mu * mu
        std = var.clamp_min(0).sqrt()
        mean = self.shift_x + mu
        std = torch.where(std > 1e-12 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
        inv = 1.0 / std
        sx, g, d = self.sx, self.sx.shape[0], self.sx.shape[1]
        # One group at a time, in place: a (d, d) temporary, not (groups, d, d) ones (75 MB each at d 1536).
        zz = torch.empty(g, d + 1, d + 1, dtype=sx.dtype, device=sx.device)
        for k in range(g):
            c = zz[k, :d, :d]  # sum (u - mu)(u - mu)^T = xx - sx mu^T - mu sx^T + n mu mu^T
            c.copy_(self.xx[k])
            c -= torch.outer(sx[k], mu)
            c -= torch.outer(mu, sx[k])
            c += self.n[k] * torch.outer(mu, mu)
            c *= inv[:, None]
            c *= inv[None, :]
        cross = (sx - self.n[:, None] * mu) * inv  # (G, d): sum of standardised rows
        zz[:, :d, d], zz[:, d, :d], zz[:, d, d] = cross, cross, self.n
        zy = torch.cat([inv[:, None] * (self.xy - mu[None, :, None] * self.sy[:, None, :]), self.sy[:, None, :]], 1)
        return zz, zy, mean, inv

    def _r2(self, w: torch.Tensor, zz: torch.Tensor, zy: torch.Tensor, group: int) -> torch.Tensor:
        """R^2 on ``group``'s rows of weights w (..., d+1, H), scikit-learn's convention."""
        ss_res = self.yy[group] - 2 * (w * zy[group]).sum(-2) + (w * (zz[group] @ w)).sum(-2)
        ss_tot = self.yy[group] - self.sy[group] ** 2 / self.n[group].clamp_min(1)
        exact = (ss_res.abs() <= 1e-9 * (1 + self.yy[group].abs())).to(ss_res.dtype)
        return torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), exact)

    def solve(self, alphas: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(test R^2 per head, chosen alpha per head)."""
        if self.shift_x is None:
            raise ValueError("no rows were added")
        if self._fitted is not None and tuple(alphas) == tuple(self.alphas):  # fitted when the test rows came
            (w_best, best, _, _), (zz, zy, _, _) = self._fitted, self._standardised()
        else:
            w_best, best, zz, zy, _, _ = self._fit(alphas)
        test = self._r2(w_best, zz, zy, self.n_folds)
        a = torch.as_tensor(alphas, dtype=zz.dtype, device=zz.device)
        return test.cpu().numpy(), a[best].cpu().numpy()

    def _fit(self, alphas: tuple[float, ...]) -> tuple[torch.Tensor, ...]:
        """From the training sums: the refit weights at each head's alpha (d1, H), that alpha's index
        per head, the standardised sums (``_standardised``) and the standardisation (mean, 1 / std)."""
        f = self.n_folds
        zz, zy, mean, inv = self._standardised()
        d1 = zz.shape[-1]
        penalty = torch.ones(d1, dtype=zz.dtype, device=zz.device)
        penalty[-1] = 0  # the intercept is not penalised
        total, total_y = zz[:f].sum(0), zy[:f].sum(0)
        # Each fold's training rows, then all of them; one (d1, d1) system at a time (memory, not speed).
        w = torch.empty(f + 1, len(alphas), d1, zy.shape[-1], dtype=zz.dtype, device=zz.device)
        for k in range(f + 1):
            gram, rhs = (total - zz[k], total_y - zy[k]) if k < f else (total, total_y)
            for i, alpha in enumerate(alphas):
                w[k, i] = torch.linalg.solve(gram + alpha * torch.diag(penalty), rhs)
        cv = torch.stack([self._r2(w[k], zz, zy, k) for k in range(f)]).mean(0)  # (A, H)
        best = cv.argmax(0)  # first of the best, as scikit-learn
        w_best = w[-1][best, :, torch.arange(w.shape[-1])].T  # (d1, H)
        return w_best, best, zz, zy, mean, inv
