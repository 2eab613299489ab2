"""Linear probes: scikit-learn for the reference, and a batched torch path that fits many at once.

Both standardise features with the training rows' mean and variance and choose the regularisation
by cross-validation over folds of training *videos* (never tokens), then refit on all training
rows and score the held-out videos:

- classes: L2 logistic regression, objective ``sum(log-loss) + ||w||^2 / (2C)`` (scikit-learn's),
  C from ``cs`` by mean held-out log-loss over the folds (scored by accuracy on the test videos);
- regression: ridge, ``||y - Xw - b||^2 + alpha ||w||^2``, alpha from ``alphas`` by mean fold R^2.

The fast path fits the heads of a group of slabs together. Ridge is closed form, every fold and
alpha at once. Logistic regression follows scikit-learn's ``LogisticRegressionCV``: the fold
problems along the C path (C increasing, each C warm-started by extrapolating the last solutions in
log C, quadratically once three are known), C by mean held-out log-loss, and the fit on all training
rows at each head's C. That refit is solved along the path beside the folds, as one more problem: a
product with X costs about the same for 6 or 8 weight columns (it reads X either way), so the extra
problem is nearly free where a separate refit descent cost ~13% of the iterations (the optimum is the
same: the L2-penalised problem is strictly convex). Each problem runs Boehning's
bound optimisation (steps with the inverse of ``X^T X / 4 + I / C``, so an iteration is two
products with X) with Nesterov momentum and gradient restarts; multiclass targets are multinomial,
as in scikit-learn. A slab stops when the largest gradient entry of its mean losses is below
``tol`` (scikit-learn's lbfgs criterion) or when fewer than 1 in 100,000 of its predicted classes
have changed for ``patience`` iterations (what the scores depend on), and then leaves the batch.
``benchmarks/probe_speed.py`` measures the speed and the distance to scikit-learn's scores.
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


def _standardise(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x_train.mean(1, keepdim=True)
    std = x_train.std(1, unbiased=False, keepdim=True)
    std = torch.where(std > 1e-12 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))

    def augment(x: torch.Tensor) -> torch.Tensor:  # a column of ones: the unpenalised intercept
        z = (x - mean) / std
        return torch.cat([z, torch.ones(*z.shape[:-1], 1, dtype=z.dtype, device=z.device)], dim=-1)

    return augment(x_train), augment(x_test), mean[:, 0], std[:, 0]


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
    # Ridge is solved in float64; logistic iterations run in float32 (see ``_logistic``).
    dev, dt = x_train.device, torch.float64 if kind == REGRESSION else torch.float32
    xtr, xte, mean, std = _standardise(x_train.to(dt), x_test.to(dt))
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
    if kind not in (CLASS, REGRESSION):
        raise ValueError(f"kind must be {CLASS!r} or {REGRESSION!r}, got {kind!r}")
    if kind == REGRESSION:
        result = _ridge(xtr, xte, heads, fold, n_folds, masks, gram, penalty, alphas)
    else:
        result = _logistic(xtr, xte, heads, fold, n_folds, masks, gram, penalty, cs, max_iter, tol, patience)
    result.mean, result.std = mean.cpu().numpy(), std.cpu().numpy()
    return result


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
    pred = torch.einsum("snd,sdh->snh", xte, w_best)
    weights = w_best.transpose(1, 2)[:, :, None].cpu().numpy()  # (S, H, 1, d1)
    pred_np = pred.transpose(1, 2).cpu().numpy()
    return FitResult(_r2(y_te, pred).cpu().numpy(), a[best].cpu().numpy(), 0, pred_np, weights)


@dataclass
class _Columns:
    """How the heads map onto logit columns: a binary head is one logistic column (the higher
    class); a head of m >= 3 classes is m softmax columns (multinomial, as scikit-learn fits it)."""

    classes: list[np.ndarray]
    widths: list[int]
    softmax_spans: list[tuple[int, int]]
    multi: torch.Tensor  # (K, 1) bool: column belongs to a softmax head

    @classmethod
    def of(cls, heads: list[Head], device: torch.device) -> _Columns:
        classes = [np.unique(h.y_train) for h in heads]
        widths = [len(c) - 1 if len(c) <= 2 else len(c) for c in classes]
        starts = np.cumsum([0, *widths])
        spans = [(int(starts[i]), int(starts[i + 1])) for i, w in enumerate(widths) if w >= 3]
        multi = torch.zeros(int(starts[-1]), 1, dtype=torch.bool, device=device)
        for a, b in spans:
            multi[a:b] = True
        return cls(classes, widths, spans, multi)

    @property
    def k(self) -> int:
        return int(sum(self.widths))

    def head_columns(self, h: int) -> slice:
        start = int(sum(self.widths[:h]))
        return slice(start, start + self.widths[h])

    def targets(self, heads: list[Head], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(K, n) one-hot training targets of every column."""
        rows = [(h.y_train == c) for h, cls, w in zip(heads, self.classes, self.widths) for c in cls[len(cls) - w :]]
        n = len(heads[0].y_train)
        return torch.as_tensor(np.stack(rows) if rows else np.zeros((0, n)), dtype=dtype, device=device)


class _CurvatureBound:
    """Inverses of Boehning's bound ``a X^T X + diag(1/C, ..., 1/C, 0)`` for any a and C, from one
    eigendecomposition per Gram matrix (the last feature is the unpenalised intercept).

    a is 1/4 for logistic and 1/2 for softmax columns (Boehning 1992; the softmax bound acts on
    the subspace the gradient stays in). The intercept is eliminated by its Schur complement: with
    the Gram ``[[G, g], [g^T, m]]`` the inverse is assembled from
    ``(a (G - g g^T / m) + I / C)^-1 = Q diag(1 / (a lambda + 1/C)) Q^T``, one matrix product per C
    instead of a Cholesky factorisation and inverse per C.
    """

    def __init__(self, grams: torch.Tensor, dtype: torch.dtype):
        g64 = grams.to(torch.float64)
        rows = g64[..., -1, -1]
        cross = g64[..., :-1, -1]
        centred = g64[..., :-1, :-1] - cross[..., :, None] * cross[..., None, :] / rows[..., None, None]
        eigenvalues, vectors = torch.linalg.eigh(centred)
        self.eigenvalues = eigenvalues.clamp_min(0).to(dtype)
        self.vectors = vectors.to(dtype)
        self.mean = (cross / rows[..., None]).to(dtype)  # (..., d)
        self.rows = rows.to(dtype)

    def inverse(self, curvature: float, inv_c: torch.Tensor) -> torch.Tensor:
        """(..., d1, d1) for 1/C ``inv_c`` broadcastable to the Grams' batch shape."""
        scale = 1.0 / (curvature * self.eigenvalues + inv_c[..., None])
        core = (self.vectors * scale[..., None, :]) @ self.vectors.transpose(-1, -2)  # (..., d, d)
        core_mean = core @ self.mean[..., None]  # (..., d, 1)
        corner = 1.0 / (curvature * self.rows) + (self.mean[..., None, :] @ core_mean)[..., 0, 0]
        top = torch.cat([core, -core_mean], -1)
        bottom = torch.cat([-core_mean.transpose(-1, -2), corner[..., None, None]], -1)
        return torch.cat([top, bottom], -2)


def _descend(
    x: torch.Tensor,
    w: torch.Tensor,
    minus_y: torch.Tensor,
    row_mask: torch.Tensor,
    penalty: torch.Tensor,
    inv_bin: torch.Tensor | None,
    inv_multi: torch.Tensor | None,
    cols: _Columns,
    max_iter: int,
    tol: float,
    patience: int,
) -> tuple[torch.Tensor, int]:
    """Minimise the penalised log-loss of P problems per slab from ``w`` (S, P, K, d1).

    ``x`` (S, n, d1) rows; ``minus_y`` (P, K, n) minus the targets on each problem's rows;
    ``row_mask`` (P, 1, n) which rows each problem trains on; ``penalty`` (S, P, 1, d1) 1/C per
    weight (0 for the intercept); ``inv_bin`` / ``inv_multi`` (S, P, d1, d1) inverses of the
    curvature bound for logistic / softmax columns. Boehning's bound step with Nesterov momentum
    and gradient restarts. Each slab stops on its own, when the largest gradient entry of its mean
    loss is below ``tol`` (scikit-learn's lbfgs criterion) or when fewer than 1 in 100,000 of its
    predicted classes have changed for ``patience`` iterations (0: never; what the scores depend on);
    converged slabs leave the batch, so a slow slab does not hold the others back.
    Returns the weights and the number of iterations of the batch.
    """
    s, n, d1 = x.shape
    p_count, k = w.shape[1], w.shape[2]
    if k == 0 or s == 0:
        return w, 0
    spans = cols.softmax_spans

    def gradient(v: torch.Tensor, x_a: torch.Tensor, pen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient at v (m, P, K, d1) and the predicted class of every row under every problem."""
        m = v.shape[0]
        # (columns, d) @ (d, rows): with few columns, 3-4x faster on CPU than (rows, d) @ (d, columns).
        z = torch.bmm(v.reshape(m, p_count * k, d1), x_a.transpose(1, 2)).view(m, p_count, k, n)
        p = torch.sigmoid(z)
        if not spans:
            predicted = z > 0
        else:
            parts, start = [], 0
            for a, b in spans:
                if a > start:
                    parts.append((z[:, :, start:a] > 0).to(torch.int64))
                p[:, :, a:b] = torch.softmax(z[:, :, a:b], 2)
                parts.append(z[:, :, a:b].argmax(2, keepdim=True))
                start = b
            if start < k:
                parts.append((z[:, :, start:] > 0).to(torch.int64))
            predicted = torch.cat(parts, 2)
        r = torch.addcmul(minus_y, p, row_mask)  # p - y on each problem's training rows, 0 elsewhere
        grad = torch.baddbmm((pen * v).view(m, p_count * k, d1), r.reshape(m, p_count * k, n), x_a)
        return grad.view(m, p_count, k, d1), predicted

    out = w.clone()
    active = torch.arange(s, device=w.device)
    x_a, w_a, pen = x, w, penalty
    # Momentum and stopping bookkeeping per (slab, problem) in numpy: a few numbers per slab,
    # where each torch call would cost more than the arithmetic.
    w_prev, theta = w_a.clone(), np.ones((s, p_count))
    last_predicted, stable = None, np.zeros(s, dtype=np.int64)
    gradient_limit = (tol * row_mask.sum(-1).reshape(p_count)).cpu().numpy()  # tol on each mean loss
    iterations = 0
    for iterations in range(1, max_iter + 1):
        theta_next = (1 + np.sqrt(1 + 4 * theta**2)) / 2
        momentum = torch.as_tensor((theta - 1) / theta_next, dtype=w.dtype, device=w.device)[:, :, None, None]
        v = torch.lerp(w_a, w_prev, -momentum)  # w + momentum * (w - w_prev)
        grad, predicted = gradient(v, x_a, pen)
        if last_predicted is not None:
            changed = torch.count_nonzero(predicted != last_predicted, dim=(1, 2, 3)).cpu().numpy()
            stable = np.where(changed < 1e-5 * predicted[0].numel(), stable + 1, 0)
        last_predicted = predicted
        if inv_multi is None:
            step = grad @ inv_bin
        elif inv_bin is None:
            step = grad @ inv_multi
        else:
            step = torch.where(cols.multi, grad @ inv_multi, grad @ inv_bin)
        w_new = v - step
        # Restart momentum where it points uphill (O'Donoghue and Candes, 2015).
        uphill = ((grad * (w_new - w_a)).sum((-2, -1)) > 0).cpu().numpy()
        theta = np.where(uphill, 1.0, theta_next)
        w_prev, w_a = w_a, w_new
        largest = torch.linalg.vector_norm(grad, ord=float("inf"), dim=(2, 3)).cpu().numpy()  # (m, P)
        done = (largest < gradient_limit).all(1)
        if patience > 0:
            done |= stable >= patience
        if done.any():
            done_t = torch.as_tensor(done, device=w.device)
            out[active[done_t]] = w_a[done_t]
            if done.all():
                return out, iterations
            keep, keep_t = ~done, ~done_t
            active, w_a, w_prev, theta = active[keep_t], w_a[keep_t], w_prev[keep_t], theta[keep]
            last_predicted, stable, pen = last_predicted[keep_t], stable[keep], pen[keep_t]
            x_a = x[active]
            inv_bin = inv_bin[keep_t] if inv_bin is not None else None
            inv_multi = inv_multi[keep_t] if inv_multi is not None else None
    out[active] = w_a  # max_iter reached
    return out, iterations


def _logistic(xtr, xte, heads, fold, n_folds, masks, gram, penalty, cs, max_iter, tol, patience) -> FitResult:
    # The C path, C choice and refit as scikit-learn's LogisticRegressionCV (module docstring).
    # Eigendecompositions in float64, iterations in float32: twice the matrix-product speed, and the
    # accuracies agree with float64 runs (the iterates only need to get the signs of logits right).
    dev, dt = xtr.device, torch.float32
    xtr, xte, penalty = xtr.to(dt), xte.to(dt), penalty.to(dt)
    s, _, d1 = xtr.shape
    cols = _Columns.of(heads, dev)
    k, n_h = cols.k, len(heads)
    y = cols.targets(heads, dt, dev)  # (K, n)
    cs = sorted(cs)  # the path runs from strong to weak regularisation
    c = torch.as_tensor(cs, dtype=dt, device=dev)
    inv_cs = 1.0 / c
    penalties = inv_cs[:, None] * penalty  # (L, d1)
    need_bin, need_multi = not bool(cols.multi.all()), bool(cols.softmax_spans)
    # Problems: the folds' training rows, then every training row (the refit), each along the C path.
    bound = _CurvatureBound(gram, dt)  # (S, F + 1)
    row_mask = masks.T.to(dt).contiguous()[:, None, :]  # (F + 1, 1, n)
    minus_y = -(y[None] * row_mask)  # (F + 1, K, n)
    w = torch.zeros(s, n_folds + 1, k, d1, dtype=dt, device=dev)
    path, iterations = [], 0
    for l_c in range(len(cs)):
        inv_b = bound.inverse(0.25, inv_cs[l_c]) if need_bin else None
        inv_m = bound.inverse(0.5, inv_cs[l_c]) if need_multi else None
        pen = penalties[l_c].expand(s, n_folds + 1, 1, d1)
        start = _extrapolate(path, np.log(cs[: l_c + 1])) if path else w
        w, used = _descend(xtr, start, minus_y, row_mask, pen, inv_b, inv_m, cols, max_iter, tol, patience)
        path.append(w)
        iterations += used
    w_path = torch.stack(path, 2)  # (S, F + 1, L, K, d1)

    fold_np = fold.cpu().numpy()
    # C by mean held-out log-loss over the folds (scikit-learn's ``scoring="neg_log_loss"``): a
    # proper score, with far fewer near-ties between Cs than accuracy.
    cv_loss = torch.stack(
        [
            _evaluate(xtr[:, fold == f], w_path[:, f], cols, [h.y_train[fold_np == f] for h in heads], False)[1]
            for f in range(n_folds)
        ]
    ).mean(0)  # (S, L, H)
    best = cv_loss.argmin(1)  # (S, H)
    # The refit of head h: the all-rows problem at head h's C (each head keeps its own columns from it).
    w_refit = torch.take_along_dim(w_path[:, n_folds, None], best[:, :, None, None, None], dim=2)[:, :, 0]
    test_all, _, pred = _evaluate(xte, w_refit, cols, [h.y_test for h in heads])  # (S, H problems, H heads)
    test = torch.diagonal(test_all, dim1=1, dim2=2)
    pred = torch.stack([pred[h][:, h] for h in range(n_h)], 1).cpu().numpy()  # (S, H, m): problem h's head h
    weights = np.stack([w_refit[:, h].cpu().numpy() for h in range(n_h)], 1)  # each head keeps all K columns
    return FitResult(test.cpu().numpy(), c[best].cpu().numpy(), iterations, pred, weights)


def _extrapolate(path: list[torch.Tensor], log_c: np.ndarray) -> torch.Tensor:
    """The next C's warm start from the solutions so far (at ``log_c[:-1]``): the path is smooth in log C,
    so a polynomial through the last two (linear) or three (quadratic) solutions, evaluated at the next
    log C. Lagrange weights; a step longer than the last spacing is shortened to it (as before)."""
    known = log_c[:-1][-3:]
    if len(set(known.tolist())) < len(known):  # a C given twice: start from the last solution
        return path[-1]
    target = min(log_c[-1], known[-1] + (known[-1] - known[-2])) if len(known) >= 2 else log_c[-1]
    weights = [np.prod([(target - b) / (a - b) for b in known if b != a]) for a in known]
    return sum(float(c) * w for c, w in zip(weights, path[-len(known) :]))


def _evaluate(
    x: torch.Tensor, weights: torch.Tensor, cols: _Columns, y_rows: list[np.ndarray], keep: bool = True
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """weights (S, L, K, d1) on rows x (S, m, d1) -> (accuracy, mean log-loss), each (S, L, H), and
    each head's predictions (S, L, m) when ``keep``."""
    dt, dev = x.dtype, x.device
    z = torch.einsum("smd,slkd->slmk", x, weights)
    acc, loss, preds = [], [], []
    for h, (cls, labels) in enumerate(zip(cols.classes, y_rows)):
        zh = z[..., cols.head_columns(h)]
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
        preds += [pred] if keep else []
    return torch.stack(acc, -1), torch.stack(loss, -1), preds
