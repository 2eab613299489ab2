"""Linear probes: scikit-learn for the reference, and a batched torch path that fits many at once.

Both standardise features with the training rows' mean and variance and choose the regularisation
by cross-validation over folds of training *videos* (never tokens), then refit on all training
rows and score the held-out videos:

- classes: L2 logistic regression, objective ``sum(log-loss) + ||w||^2 / (2C)`` (scikit-learn's),
  C from ``cs`` by mean held-out log-loss over the folds (scored by accuracy on the test videos);
- regression: ridge, ``||y - Xw - b||^2 + alpha ||w||^2``, alpha from ``alphas`` by mean fold R^2.

The fast path solves every (slab, fold, C, class) problem of a group of slabs together. Ridge is
closed form. Logistic regression runs Boehning's bound optimisation (each step solves with
``X^T X / 4 + I / C``, factorised once, so an iteration is two matrix products) with Nesterov
momentum and gradient restarts, along the C path from strong to weak regularisation, each C
warm-started from the last; multiclass targets are multinomial, as in scikit-learn. A C stops when
the largest gradient entry of the mean loss is below ``tol`` (scikit-learn's lbfgs criterion) or
when fewer than 1 in 100,000 predicted classes have changed for ``patience`` iterations (what the
scores depend on). ``benchmarks/probe_speed.py`` measures the distance to scikit-learn's scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probes.labels import CLASS, REGRESSION

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


def _r2(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """R^2 along dim -2 (rows), scikit-learn's convention (1 when y is constant and predicted exactly)."""
    ss_res = ((y - pred) ** 2).sum(-2)
    ss_tot = ((y - y.mean(-2, keepdim=True)) ** 2).sum(-2)
    return torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), (ss_res == 0).to(y.dtype))


def _standardise(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x_train.mean(1, keepdim=True)
    std = x_train.std(1, unbiased=False, keepdim=True)
    std = torch.where(std > 1e-12 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))

    def augment(x: torch.Tensor) -> torch.Tensor:  # a column of ones: the unpenalised intercept
        z = (x - mean) / std
        return torch.cat([z, torch.ones(*z.shape[:-1], 1, dtype=z.dtype, device=z.device)], dim=-1)

    return augment(x_train), augment(x_test)


def fit_fast(
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    heads: list[Head],
    kind: str,
    folds: np.ndarray,
    cs: tuple[float, ...] = DEFAULT_CS,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    max_iter: int = 300,
    tol: float = 1e-4,
    patience: int = 10,
) -> FitResult:
    """Fit every head on every slab: ``x_train`` (slabs, rows, features), ``folds`` (rows,) fold id."""
    dev, dt = x_train.device, torch.float64
    xtr, xte = _standardise(x_train.to(dt), x_test.to(dt))
    s, n, d1 = xtr.shape
    n_folds = int(folds.max()) + 1
    fold = torch.as_tensor(folds, device=dev)
    # Row masks: fold f trains on the rows outside f; the last "fold" is the refit on every row.
    masks = torch.stack([fold != f for f in range(n_folds)] + [torch.ones_like(fold, dtype=torch.bool)], 1).to(dt)
    # Gram matrices of each fold's training rows: all rows' Gram minus the held-out fold's.
    x32 = xtr.float()
    held_out = torch.stack([x32[:, fold == f].transpose(1, 2) @ x32[:, fold == f] for f in range(n_folds)], 1)
    held_out = held_out.to(dt)
    total = held_out.sum(1, keepdim=True)
    gram = torch.cat([total - held_out, total], 1)  # (S, F+1, d1, d1)
    penalty = torch.ones(d1, dtype=dt, device=dev)
    penalty[-1] = 0
    if kind == REGRESSION:
        return _ridge(xtr, xte, heads, fold, n_folds, masks, gram, penalty, alphas)
    if kind != CLASS:
        raise ValueError(f"kind must be {CLASS!r} or {REGRESSION!r}, got {kind!r}")
    return _logistic(xtr, xte, heads, fold, n_folds, masks, gram, penalty, cs, max_iter, tol, patience)


def _ridge(xtr, xte, heads, fold, n_folds, masks, gram, penalty, alphas) -> FitResult:
    dt, dev = xtr.dtype, xtr.device
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
    test = _r2(y_te, torch.einsum("snd,sdh->snh", xte, w_best))
    return FitResult(test.cpu().numpy(), a[best].cpu().numpy())


def _logistic(xtr, xte, heads, fold, n_folds, masks, gram, penalty, cs, max_iter, tol, patience) -> FitResult:
    # Factorisations in float64, iterations in float32: twice the matrix-product speed, and the
    # accuracies agree with float64 runs (the iterates only need to get the signs of logits right).
    dev, dt = xtr.device, torch.float32
    xtr, xte, masks, penalty = xtr.to(dt), xte.to(dt), masks.to(dt), penalty.to(dt)
    s, n, d1 = xtr.shape
    # Columns: a binary head is one logistic column (the higher class); a head of m >= 3 classes is
    # m softmax columns (multinomial, as scikit-learn fits it).
    classes, columns, targets = [], [], []
    for h in heads:
        cls = np.unique(h.y_train)
        classes.append(cls)
        cols = cls[1:] if len(cls) <= 2 else cls
        columns.append(len(cols))
        targets.extend((h.y_train == c).astype(np.float64) for c in cols)
    y = torch.as_tensor(np.stack(targets, 1) if targets else np.zeros((n, 0)), dtype=dt, device=dev)  # (n, K)
    k = y.shape[1]
    spans = np.cumsum([0, *columns])
    multi = torch.zeros(k, dtype=torch.bool, device=dev)
    for h, width in enumerate(columns):
        multi[spans[h] : spans[h + 1]] = width >= 3
    c = torch.as_tensor(cs, dtype=dt, device=dev)
    n_c = len(cs)
    inv_c = (1.0 / c)[None, None, :, None, None] * penalty[:, None]  # (1, 1, L, d1, 1)
    ridge = torch.diag_embed(inv_c[..., 0].expand(1, 1, n_c, d1))

    def bound_inverse(curvature: float) -> torch.Tensor:
        """(S, F+1, L, d1, d1) inverse of the curvature bound: 1/4 for logistic, 1/2 for softmax
        (Boehning 1992; the softmax bound acts on the subspace the gradient stays in)."""
        ridge64 = ridge.to(torch.float64)
        return torch.cholesky_inverse(torch.linalg.cholesky(curvature * gram[:, :, None] + ridge64)).to(dt)

    inv_bin = bound_inverse(0.25) if not bool(multi.all()) else None
    inv_multi = bound_inverse(0.5) if bool(multi.any()) else None
    f1 = n_folds + 1
    xt = xtr.transpose(1, 2).contiguous()
    row_mask = masks[None, :, :, None]  # (1, n, F+1, 1)
    rows_per_fold = masks.sum(0)[None, :, None, None]  # (1, F+1, 1, 1)

    def gradient(v: torch.Tensor, inv_c_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient of the penalised log-loss at v (S, F+1, d1, K), and the predicted class of every
        row under every problem (held-out rows of each fold included)."""
        z = torch.bmm(xtr, v.permute(0, 2, 1, 3).reshape(s, d1, -1)).reshape(s, n, f1, k)
        p = torch.sigmoid(z)
        predicted = [z > 0]
        for h, width in enumerate(columns):
            if width >= 3:
                p[..., spans[h] : spans[h + 1]] = torch.softmax(z[..., spans[h] : spans[h + 1]], -1)
                predicted.append(z[..., spans[h] : spans[h + 1]].argmax(-1, keepdim=True))
        r = (p - y[None, :, None, :]) * row_mask
        grad = torch.bmm(xt, r.reshape(s, n, -1)).reshape(s, d1, f1, k).permute(0, 2, 1, 3) + inv_c_l * v
        return grad, torch.cat([q.to(torch.int64) for q in predicted], -1)

    # The C path in increasing order, each C warm-started from the previous solution: weakly
    # regularised problems, where the bound is loosest, start close to their optimum.
    w = torch.zeros(s, f1, d1, k, dtype=dt, device=dev)
    path, iterations = [], 0
    for l_c in range(n_c):
        inv_c_l = inv_c[:, :, l_c]  # (1, 1, d1, 1)
        inv_b = inv_bin[:, :, l_c] if inv_bin is not None else None
        inv_m = inv_multi[:, :, l_c] if inv_multi is not None else None
        w_prev, theta = w.clone(), torch.ones(s, f1, 1, 1, dtype=dt, device=dev)
        last_predicted, stable = None, 0
        for _ in range(max_iter if k else 0):
            iterations += 1
            theta_next = (1 + torch.sqrt(1 + 4 * theta**2)) / 2
            v = w + ((theta - 1) / theta_next) * (w - w_prev)
            grad, predicted = gradient(v, inv_c_l)
            changed = 1.0 if last_predicted is None else float((predicted != last_predicted).float().mean())
            stable = stable + 1 if changed < 1e-5 else 0
            last_predicted = predicted
            if inv_m is None:
                step = inv_b @ grad
            elif inv_b is None:
                step = inv_m @ grad
            else:
                step = torch.where(multi, inv_m @ grad, inv_b @ grad)
            w_new = v - step
            # Restart momentum where it points uphill (O'Donoghue and Candes, 2015).
            uphill = (grad * (w_new - w)).sum((-2, -1), keepdim=True) > 0
            theta = torch.where(uphill, torch.ones_like(theta), theta_next)
            w_prev, w = w, w_new
            # Converged for scikit-learn's lbfgs (largest gradient entry of the mean loss below tol),
            # or for what is scored: no row's predicted class has changed for ``patience`` steps.
            if stable >= patience or float((grad.abs() / rows_per_fold).amax()) < tol:
                break
        path.append(w)
    w = torch.stack(path, 2)  # (S, F+1, L, d1, K)

    def evaluate(x: torch.Tensor, weights: torch.Tensor, y_rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """weights (S, L, d1, K) on rows x (S, m, d1) -> (accuracy, mean log-loss), each (S, L, H)."""
        z = torch.einsum("smd,sldk->slmk", x, weights)
        acc, loss, start = [], [], 0
        for cls, width, labels in zip(classes, columns, y_rows):
            zh = z[..., start : start + width]
            start += width
            y_h = torch.as_tensor(labels, dtype=dt, device=dev)
            if len(cls) == 1:
                pred = torch.full(zh.shape[:-1], float(cls[0]), dtype=dt, device=dev)
                nll = torch.zeros(zh.shape[:-1], dtype=dt, device=dev)
            elif len(cls) == 2:
                pred = torch.where(zh[..., 0] > 0, float(cls[1]), float(cls[0]))
                positive = (y_h == float(cls[1])).to(dt)
                nll = torch.nn.functional.binary_cross_entropy_with_logits(
                    zh[..., 0], positive.expand_as(zh[..., 0]), reduction="none"
                )
            else:
                pred = torch.as_tensor(cls, dtype=dt, device=dev)[zh.argmax(-1)]
                index = torch.as_tensor(np.searchsorted(cls, labels).clip(0, len(cls) - 1), device=dev)
                nll = -torch.log_softmax(zh, -1).gather(-1, index.expand(zh.shape[:-1])[..., None])[..., 0]
            acc.append((pred == y_h).to(dt).mean(-1))
            loss.append(nll.mean(-1))
        return torch.stack(acc, -1), torch.stack(loss, -1)

    fold_np = fold.cpu().numpy()
    # C by mean held-out log-loss over the folds (scikit-learn's ``scoring="neg_log_loss"``): a
    # proper score, with far fewer near-ties between Cs than accuracy.
    cv_loss = torch.stack(
        [evaluate(xtr[:, fold == f], w[:, f], [h.y_train[fold_np == f] for h in heads])[1] for f in range(n_folds)]
    ).mean(0)  # (S, L, H)
    best = cv_loss.argmin(1)  # (S, H)
    test_all, _ = evaluate(xte, w[:, -1], [h.y_test for h in heads])  # (S, L, H)
    test = torch.take_along_dim(test_all, best[:, None, :], dim=1)[:, 0]
    return FitResult(test.cpu().numpy(), c[best].cpu().numpy(), iterations)


def fit_sklearn(
    x_train: np.ndarray,
    x_test: np.ndarray,
    head: Head,
    kind: str,
    folds: np.ndarray,
    cs: tuple[float, ...] = DEFAULT_CS,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    max_iter: int = 1000,
) -> tuple[float, float]:
    """The reference: StandardScaler, then LogisticRegressionCV or RidgeCV over the same video folds.
    Returns (test score, chosen C or alpha)."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    xtr, xte = scaler.transform(x_train), scaler.transform(x_test)
    splits = [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(int(folds.max()) + 1)]
    if kind == REGRESSION:
        model = RidgeCV(alphas=list(alphas), cv=splits, scoring="r2").fit(xtr, head.y_train)
        return float(model.score(xte, head.y_test)), float(model.alpha_)
    if len(np.unique(head.y_train)) < 2:
        only = head.y_train[0]
        return float(np.mean(head.y_test == only)), float("nan")
    model = LogisticRegressionCV(
        Cs=list(cs),
        cv=splits,
        l1_ratios=(0.0,),
        scoring="neg_log_loss",
        solver="lbfgs",
        max_iter=max_iter,
        use_legacy_attributes=False,
    ).fit(xtr, head.y_train)
    # ``model.score`` would use the CV scoring (log-loss); the reported score is test accuracy.
    return float(np.mean(model.predict(xte) == head.y_test)), float(model.C_)
