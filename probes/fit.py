"""Linear probes: scikit-learn for the reference, and a batched torch path that fits many at once.

Both standardise features with the training rows' mean and variance and choose the regularisation
by cross-validation over folds of training *videos* (never tokens), then refit on all training
rows and score the held-out videos:

- classes: L2 logistic regression, objective ``sum(log-loss) + ||w||^2 / (2C)`` (scikit-learn's),
  C from ``cs`` by mean held-out log-loss over the folds (scored by accuracy on the test videos);
- regression: ridge, ``||y - Xw - b||^2 + alpha ||w||^2``, alpha from ``alphas`` by mean fold R^2.

The fast path fits the heads of a group of slabs together. Ridge is closed form, every fold and
alpha at once. Logistic regression follows scikit-learn's ``LogisticRegressionCV`` (the folds'
problems and the refit along the C path, C by mean held-out log-loss), solved for every slab, fold
and head at once by ``probes.logistic`` (preconditioned conjugate gradients; the module says how
and when it stops). ``benchmarks/probe_speed.py`` measures the speed and the distance to
scikit-learn's scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probes.labels import CLASS, REGRESSION
from probes.logistic import fit_path

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_ALPHAS = (1e-1, 1.0, 1e1, 1e2, 1e3, 1e4)


@dataclass
class Head:
    """One probe target on shared features: training and test labels (classes as floats)."""

    y_train: np.ndarray
    y_test: np.ndarray


@dataclass
class FitResult:
    scores: np.ndarray  # (slabs, heads): accuracy (classes) or R^2 (regression) on the test rows
    regularisation: np.ndarray  # (slabs, heads): chosen C or alpha
    iterations: int = 0
    predictions: np.ndarray | None = None  # (slabs, heads, test rows): predicted class or value
    # Head h's weights on standardised features + the intercept, (slabs, heads, columns, d + 1), and the
    # standardisation (slabs, d): ``probes.arrays`` brings them back to raw feature space.
    weights: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None


def _r2(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """R^2 along dim -2 (rows), scikit-learn's convention (1 when y is constant and predicted exactly)."""
    ss_res = ((y - pred) ** 2).sum(-2)
    ss_tot = ((y - y.mean(-2, keepdim=True)) ** 2).sum(-2)
    return torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), (ss_res == 0).to(y.dtype))


def _standardise(
    x_train: torch.Tensor, x_test: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training and test rows standardised by the training rows, each with a column of ones, and the
    mean and standard deviation used (1 for a constant feature)."""
    n = x_train.shape[1]
    # Sums along the rows (torch's std along a strided axis is ~20x slower); the mean corrected by the
    # mean of what is left, so a constant feature centres to exactly 0, as in float64.
    mean = x_train.mean(1, keepdim=True)
    mean = mean + (x_train - mean).mean(1, keepdim=True)
    centred = x_train - mean
    var = ((centred * centred).sum(1, keepdim=True) / n).double()
    eps = torch.finfo(torch.float64).eps  # scikit-learn's test for a constant feature (StandardScaler)
    constant = var <= n * eps * var + (n * mean.double() * eps) ** 2
    scale = torch.where(constant, 1.0, 1 / var.sqrt()).to(x_train.dtype)

    def augment(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:  # a column of ones: the intercept
        out = torch.empty(*x.shape[:-1], x.shape[-1] + 1, dtype=x.dtype, device=x.device)
        torch.addcmul(shift * scale, x, scale, out=out[..., :-1])
        out[..., -1] = 1
        return out

    return augment(centred, torch.zeros_like(mean)), augment(x_test, -mean), mean[:, 0], 1 / scale[:, 0]


def fit_fast(
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    heads: list[Head],
    kind: str,
    folds: np.ndarray,
    cs: tuple[float, ...] = DEFAULT_CS,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    max_iter: int = 1000,
    tol: float = 1e-4,
    patience: int = 10,
) -> FitResult:
    """Fit every head on every slab: ``x_train`` (slabs, rows, features), ``folds`` (rows,) fold id."""
    # Ridge is solved in float64; logistic iterations run in float32 (``probes.logistic.fit_path``).
    if kind not in (CLASS, REGRESSION):
        raise ValueError(f"kind must be {CLASS!r} or {REGRESSION!r}, got {kind!r}")
    dev, dt = x_train.device, torch.float64 if kind == REGRESSION else torch.float32
    xtr, xte, mean, std = _standardise(x_train.to(dt), x_test.to(dt))
    d1 = xtr.shape[-1]
    n_folds = int(folds.max()) + 1
    fold = torch.as_tensor(folds, device=dev)
    # Row masks: fold f trains on the rows outside f; the last "fold" is the refit on every row.
    masks = torch.stack([fold != f for f in range(n_folds)] + [torch.ones_like(fold, dtype=torch.bool)], 1).to(dt)
    penalty = torch.ones(d1, dtype=dt, device=dev)
    penalty[-1] = 0
    if kind == REGRESSION:
        result = _ridge(xtr, xte, heads, fold, n_folds, masks, penalty, alphas)
    else:
        y_train, y_test = [h.y_train for h in heads], [h.y_test for h in heads]
        result = FitResult(*fit_path(xtr, xte, y_train, y_test, fold, masks, penalty, cs, max_iter, tol, patience))
    result.mean, result.std = mean.cpu().numpy(), std.cpu().numpy()
    return result


def _ridge(xtr, xte, heads, fold, n_folds, masks, penalty, alphas) -> FitResult:
    dt, dev = xtr.dtype, xtr.device
    # Gram matrices of each fold's training rows: all rows' Gram minus the held-out fold's.
    x32 = xtr.float()
    held_out = torch.stack([x32[:, fold == f].transpose(1, 2) @ x32[:, fold == f] for f in range(n_folds)], 1)
    total = held_out.sum(1, keepdim=True).to(dt)
    gram = torch.cat([total - held_out.to(dt), total], 1)  # (S, F+1, d1, d1)
    y = torch.as_tensor(np.stack([h.y_train for h in heads], 1), dtype=dt, device=dev)  # (n, H)
    y_te = torch.as_tensor(np.stack([h.y_test for h in heads], 1), dtype=dt, device=dev)
    a = torch.as_tensor(alphas, dtype=dt, device=dev)
    system = gram[:, :, None] + a[None, None, :, None, None] * torch.diag(penalty)  # (S, F+1, A, d1, d1)
    rhs = torch.einsum("snd,nf,nh->sfdh", xtr, masks, y)[:, :, None].expand(-1, -1, len(alphas), -1, -1)
    w = torch.linalg.solve(system, rhs)  # (S, F+1, A, d1, H)
    cv = torch.stack(
        [_r2(y[fold == f], torch.einsum("snd,sadh->sanh", xtr[:, fold == f], w[:, f])) for f in range(n_folds)]
    ).mean(0)  # (S, A, H)
    best = cv.argmax(1)  # (S, H): first of the best, as scikit-learn
    w_best = torch.take_along_dim(w[:, -1], best[:, None, None, :], dim=1)[:, 0]  # (S, d1, H)
    pred = torch.einsum("snd,sdh->snh", xte, w_best)
    weights = w_best.transpose(1, 2)[:, :, None].cpu().numpy()  # (S, H, 1, d1)
    pred_np = pred.transpose(1, 2).cpu().numpy()
    return FitResult(_r2(y_te, pred).cpu().numpy(), a[best].cpu().numpy(), 0, pred_np, weights)
