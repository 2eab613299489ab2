"""The fast path's classifier: L2 logistic regression of many problems at once, along a C path.

A slab's problems (the cross-validation folds and the refit on every training row, each with one
column per binary head and one per class of a multiclass head) share the slab's rows, so every
product with the rows is one batched matrix product for all of them. Each C is solved by
preconditioned nonlinear conjugate gradients (Polak-Ribiere+, restarted where a direction does not
descend):

- the line search along a direction d is one Newton step, which needs ``X d`` once: the logits move
  linearly, ``z + t X d``, so the curvature along d is an elementwise sum, and the next logits need no
  second product. A step past the point where the slope has turned as steep as it started (a
  heuristic guard against a Newton step that overshoots: rare, ~0.2% of steps on the benchmark store)
  is drawn back to the secant root of the slope; convergence is judged by the gradient alone;
- the preconditioner of C is the Hessian of the refit problem at the previous C's solution (at zero,
  where every row has the same curvature, a multiple of the Gram matrix), one per slab and column,
  shared by the fold problems. Along the path the Hessian changes little from one C to the next,
  so a C takes ~6-10 iterations where Boehning's fixed bound ``X^T X / 4`` took 30-60 with Nesterov
  momentum: confident rows have a curvature far below 1/4, and the bound cannot see it.

Multiclass heads are multinomial (softmax over their columns), as in scikit-learn; their
preconditioner is block diagonal over the classes, their line search joint. A slab stops when every
gradient entry of each problem's mean loss is below ``tol`` (scikit-learn's lbfgs criterion) or when
fewer than 1 in 100,000 of its predicted classes have changed for ``patience`` iterations, and
leaves the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GRAM_SPREAD = 4.0  # see ``preconditioner``


@dataclass
class Columns:
    """How the heads map onto logit columns: a binary head is one logistic column (the higher
    class); a head of m >= 3 classes is m softmax columns (multinomial, as scikit-learn fits it)."""

    classes: list[np.ndarray]
    widths: list[int]
    softmax_spans: list[tuple[int, int]]

    @classmethod
    def of(cls, labels: list[np.ndarray], device: torch.device) -> Columns:
        classes = [np.unique(y) for y in labels]
        widths = [len(c) - 1 if len(c) <= 2 else len(c) for c in classes]
        starts = np.cumsum([0, *widths])
        spans = [(int(starts[i]), int(starts[i + 1])) for i, w in enumerate(widths) if w >= 3]
        return cls(classes, widths, spans)

    @property
    def k(self) -> int:
        return int(sum(self.widths))

    def head_columns(self, h: int) -> slice:
        start = int(sum(self.widths[:h]))
        return slice(start, start + self.widths[h])

    def targets(self, labels: list[np.ndarray], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(K, n) one-hot training targets of every column."""
        rows = [(y == c) for y, cls, w in zip(labels, self.classes, self.widths) for c in cls[len(cls) - w :]]
        n = len(labels[0])
        return torch.as_tensor(np.stack(rows) if rows else np.zeros((0, n)), dtype=dtype, device=device)

    def probabilities(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities of logits z (..., K, n) and each head's predicted class index per column."""
        p = torch.sigmoid(z)
        if not self.softmax_spans:
            return p, z > 0
        parts, start = [], 0
        for a, b in self.softmax_spans:
            if a > start:
                parts.append((z[..., start:a, :] > 0).to(torch.int64))
            p[..., a:b, :] = torch.softmax(z[..., a:b, :], -2)
            parts.append(z[..., a:b, :].argmax(-2, keepdim=True))
            start = b
        if start < self.k:
            parts.append((z[..., start:, :] > 0).to(torch.int64))
        return p, torch.cat(parts, -2)

    def curvature(self, p: torch.Tensor) -> torch.Tensor:
        """Each column's own curvature per row: p (1 - p), the diagonal of a softmax block."""
        return torch.addcmul(p, p, p, value=-1)

    def exact_curvature(self, z: torch.Tensor) -> torch.Tensor:
        """``curvature`` from the logits (..., K, n): sigmoid(z) sigmoid(-z) for a binary column, which
        stays exact where p (1 - p) rounds to 0 in float32 (|z| > ~17)."""
        weight = torch.sigmoid(z) * torch.sigmoid(-z)
        for a, b in self.softmax_spans:
            weight[..., a:b, :] = self.curvature(torch.softmax(z[..., a:b, :], -2))
        return weight

    def head_sum(self, q: torch.Tensor) -> torch.Tensor:
        """q (..., K) summed over each softmax head's columns (one line search, one CG beta per head)."""
        if not self.softmax_spans:
            return q
        q = q.clone()
        for a, b in self.softmax_spans:
            q[..., a:b] = q[..., a:b].sum(-1, keepdim=True)
        return q


def preconditioner(
    x_t: torch.Tensor, gram: torch.Tensor, z: torch.Tensor, cols: Columns, penalty: torch.Tensor
) -> torch.Tensor:
    """(S, K, d1, d1): the lower Cholesky factor of the Hessian of each column's penalised loss on every
    row at logits ``z`` (S, K, n), block diagonal over a softmax head's classes. ``x_t`` (S, d1, n) the
    rows, transposed; ``gram`` (S, d1, d1) their Gram matrix; ``penalty`` (d1,) 1/C per weight (0: the
    intercept).

    A column whose rows' curvatures lie within a factor of ``GRAM_SPREAD`` of each other gets the Gram
    matrix times its mean curvature instead: the preconditioned Hessian's condition number is then at
    most that factor, so the weighted Gram (the cost here) would buy little. That is every column at
    zero, and on the benchmark store the control task's columns (spread 2-6) and undecodable slabs."""
    d1, n = x_t.shape[1:]
    weight = cols.exact_curvature(z)  # (S, K, n)
    low, high = weight.amin(-1), weight.amax(-1)
    h = weight.mean(-1)[:, :, None, None] * gram[:, None]
    build = high > GRAM_SPREAD * low  # (S, K)
    for i in torch.nonzero(build.any(1))[:, 0].tolist():
        ks = torch.nonzero(build[i])[:, 0]
        weighted = (x_t[i, None] * weight[i, ks, None, :]).reshape(len(ks) * d1, n)
        h[i, ks] = (weighted @ x_t[i].T).view(len(ks), d1, d1)
    h = h.double()
    h = (h + h.transpose(-1, -2)) / 2 + torch.diag_embed(penalty.double())  # summed in float32: symmetrise
    # Confident rows have a curvature near 0: a floor above float32 rounding keeps an unpenalised
    # intercept invertible (it changes only how fast the solver goes, never where it ends).
    h.diagonal(dim1=-2, dim2=-1).add_(1e-6 * h.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True) + 1e-12)
    lower, info = torch.linalg.cholesky_ex(h)
    if bool((info != 0).any()):
        raise ValueError("a probe's Hessian is not positive definite: are the features finite?")
    # The factor, not the inverse: two triangular solves an iteration cost less than inverting these
    # small matrices one LAPACK call at a time.
    return lower.to(x_t.dtype).contiguous()


def _precondition(lower: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The inverse of the Hessian factored as ``lower`` (m, K, d1, d1) applied to the gradient g
    (m, P, K, d1) of every problem."""
    m, p_count, k, d1 = g.shape
    factor = lower.reshape(m * k, d1, d1)
    rhs = g.permute(0, 2, 3, 1).reshape(m * k, d1, p_count)
    half = torch.linalg.solve_triangular(factor, rhs, upper=False)
    u = torch.linalg.solve_triangular(factor.transpose(1, 2), half, upper=True)
    return u.view(m, k, d1, p_count).permute(0, 3, 1, 2)


def _logits(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(m, P, K, n) from weights (m, P, K, d1) on rows x (m, n, d1): (columns, d) @ (d, rows), with few
    columns several times faster on a CPU than (rows, d) @ (d, columns)."""
    m, p_count, k, d1 = w.shape
    return torch.bmm(w.reshape(m, p_count * k, d1), x.transpose(1, 2)).view(m, p_count, k, x.shape[1])


def descend(
    x: torch.Tensor,
    w: torch.Tensor,
    z: torch.Tensor,
    minus_y: torch.Tensor,
    row_mask: torch.Tensor,
    penalty: torch.Tensor,
    factor: torch.Tensor,
    cols: Columns,
    max_iter: int,
    tol: float,
    patience: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise the penalised log-loss of P problems per slab from ``w`` (S, P, K, d1), logits ``z``
    (S, P, K, n) = ``w`` on every row.

    ``x`` (S, n, d1) rows; ``minus_y`` (P, K, n) minus the targets on each problem's rows;
    ``row_mask`` (P, 1, n) which rows each problem trains on; ``penalty`` (d1,) 1/C per weight;
    ``factor`` (S, K, d1, d1) the preconditioner's Cholesky factor (``preconditioner``). Returns the
    weights, their logits and the number of iterations of the batch (module docstring: the method and
    the stopping rule)."""
    s, n, d1 = x.shape
    p_count, k = w.shape[1], w.shape[2]
    if k == 0 or s == 0:
        return w, z, 0
    out, out_z = w.clone(), z.clone()
    active = torch.arange(s, device=w.device)
    x_a, w_a, factor_a = x, w, factor
    d = u_prev = gu_prev = step = None
    last_predicted, stable = None, np.zeros(s, dtype=np.int64)
    gradient_limit = (tol * row_mask.sum(-1).reshape(p_count)).cpu().numpy()  # tol on each mean loss
    iterations = 0
    for iterations in range(1, max_iter + 1):
        m = w_a.shape[0]
        if iterations % 50 == 0:  # the logits move by sums: recompute them in a long descent
            z = _logits(w_a, x_a)
        for check in (True, False):
            p, predicted = cols.probabilities(z)
            r = torch.addcmul(minus_y, p, row_mask)  # p - y on each problem's training rows, 0 elsewhere
            g = torch.baddbmm((penalty * w_a).view(m, p_count * k, d1), r.view(m, p_count * k, n), x_a)
            g = g.view(m, p_count, k, d1)
            if not check or step is None:
                break
            t, slope, a = step
            # A heuristic guard: the slope at the new point should be no steeper, upwards, than it
            # started downwards; past that, the Newton step overshot and is drawn back.
            end = cols.head_sum(torch.linalg.vecdot(g, d))
            over = end > -slope
            if not bool(over.any()):
                break
            back = torch.where(over, t - t * slope / (slope - end), torch.zeros_like(t))[..., None]
            w_a, z = w_a - back * d, z - back * a
        if last_predicted is not None:
            changed = torch.count_nonzero(predicted != last_predicted, dim=(1, 2, 3)).cpu().numpy()
            stable = np.where(changed < 1e-5 * predicted[0].numel(), stable + 1, 0)
        last_predicted = predicted
        largest = g.abs().amax((2, 3)).cpu().numpy()  # (m, P)
        done = (largest < gradient_limit).all(1)
        if patience > 0:
            done |= stable >= patience
        if done.any():
            done_t = torch.as_tensor(done, device=w.device)
            out[active[done_t]], out_z[active[done_t]] = w_a[done_t], z[done_t]
            if done.all():
                return out, out_z, iterations
            keep = ~done_t
            active, w_a, z, g, p, factor_a = active[keep], w_a[keep], z[keep], g[keep], p[keep], factor_a[keep]
            last_predicted, stable = last_predicted[keep], stable[~done]
            if d is not None:
                d, u_prev, gu_prev = d[keep], u_prev[keep], gu_prev[keep]
            x_a, m = x[active], int(keep.sum())
        # Polak-Ribiere+ conjugate direction in the preconditioner's metric.
        u = _precondition(factor_a, g)
        gu = cols.head_sum(torch.linalg.vecdot(g, u))
        if d is None:
            d = -u
        else:
            beta = ((gu - cols.head_sum(torch.linalg.vecdot(g, u_prev))) / gu_prev.clamp_min(1e-30)).clamp_min(0)
            d = torch.addcmul(-u, beta[..., None], d)
        for a0, b0 in cols.softmax_spans:
            # A softmax head's loss is blind to a shift shared by its intercepts, and its block-diagonal
            # preconditioner does not keep d out of that direction: drop it (slope and loss unchanged).
            d[..., a0:b0, -1] -= d[..., a0:b0, -1].mean(-1, keepdim=True)
        slope = cols.head_sum(torch.linalg.vecdot(g, d))
        downhill = slope < 0
        if not bool(downhill.all()):  # restart where the direction does not descend
            d = torch.where(downhill[..., None], d, -u)
            slope = torch.where(downhill, slope, -gu)
        u_prev, gu_prev = u, gu
        # One Newton step along d: the curvature there is an elementwise sum over the rows.
        a = _logits(d, x_a)
        curv = cols.head_sum(torch.linalg.vecdot((cols.curvature(p) * row_mask) * a, a))
        for a0, b0 in cols.softmax_spans:  # a softmax head's curvature: E_p[(a - E_p[a])^2] per row
            p_h, a_h = p[:, :, a0:b0], a[:, :, a0:b0]
            centred = a_h - (p_h * a_h).sum(2, keepdim=True)
            curv[:, :, a0:b0] = torch.linalg.vecdot(p_h * row_mask * centred, centred).sum(-1, keepdim=True)
        curv = curv + cols.head_sum(torch.linalg.vecdot(penalty * d, d))
        t = -slope / curv.clamp_min(1e-30)
        w_a = torch.addcmul(w_a, t[..., None], d)
        z = torch.addcmul(z, t[..., None], a)
        step = (t, slope, a)
    out[active], out_z[active] = w_a, z  # max_iter reached
    return out, out_z, iterations


def fit_path(
    xtr: torch.Tensor,
    xte: torch.Tensor,
    y_train: list[np.ndarray],
    y_test: list[np.ndarray],
    fold: torch.Tensor,
    masks: torch.Tensor,
    penalty: torch.Tensor,
    cs: tuple[float, ...],
    max_iter: int,
    tol: float,
    patience: int,
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """scikit-learn's ``LogisticRegressionCV`` on every slab of standardised rows ``xtr`` (S, n, d1), the
    last feature the intercept: the folds' problems and the refit along the C path (C increasing, each
    warm-started by extrapolating the path so far in log C), C by mean held-out log-loss, each head
    scored on ``xte`` at its C. ``masks`` (n, F + 1): each problem's training rows (the last is every
    row). Returns (test accuracy (S, H), chosen C (S, H), iterations, test predictions (S, H, m),
    each head's weights (S, H, K, d1))."""
    # Iterations in float32: twice the matrix-product speed of float64, and the accuracies agree with
    # float64 runs (the iterates only need to get the signs of logits right).
    dev, dt = xtr.device, torch.float32
    xtr, xte, penalty = xtr.to(dt), xte.to(dt), penalty.to(dt)
    s, _, d1 = xtr.shape
    n_folds = masks.shape[1] - 1
    cols = Columns.of(y_train, dev)
    y = cols.targets(y_train, dt, dev)  # (K, n)
    cs = sorted(cs)  # the path runs from strong to weak regularisation
    row_mask = masks.T.to(dt).contiguous()[:, None, :]  # (F + 1, 1, n)
    minus_y = -(y[None] * row_mask)  # (F + 1, K, n)
    x_t = xtr.transpose(1, 2).contiguous()
    gram = torch.bmm(x_t, xtr)  # every row's Gram: the Hessian at zero, up to each column's curvature
    fold_np = fold.cpu().numpy()
    held_out_np = [np.flatnonzero(fold_np == f) for f in range(n_folds)]
    held_out = [torch.as_tensor(rows, device=dev) for rows in held_out_np]
    path, path_z, held_out_z, iterations, since_exact = [], [], [], 0, 0
    w = torch.zeros(s, n_folds + 1, cols.k, d1, dtype=dt, device=dev)
    z = torch.zeros(s, n_folds + 1, cols.k, xtr.shape[1], dtype=dt, device=dev)
    for l_c, c in enumerate(cs):
        pen = penalty / c
        factor = preconditioner(x_t, gram, z[:, -1], cols, pen)  # at the last solution: the refit's logits
        if path:  # the logits are linear in the weights: they extrapolate with them, no product
            w, z = (_extrapolate(p, np.log(cs[: l_c + 1])) for p in (path, path_z))
        if since_exact >= 50:  # the logits move by sums: recompute them now and then along the path
            z, since_exact = _logits(w, xtr), 0
        w, z, used = descend(xtr, w, z, minus_y, row_mask, pen, factor, cols, max_iter, tol, patience)
        path.append(w)
        path_z = [*path_z[-2:], z]  # extrapolation needs the last three; logits are rows x columns
        iterations, since_exact = iterations + used, since_exact + used
        held_out_z.append([z[:, f][..., rows] for f, rows in enumerate(held_out)])  # each fold's own rows
    w_path = torch.stack(path, 2)  # (S, F + 1, L, K, d1)
    # C by mean held-out log-loss over the folds (scikit-learn's ``scoring="neg_log_loss"``): a proper
    # score, with far fewer near-ties between Cs than accuracy. The logits are the descent's own.
    fold_losses = []
    for f, rows in enumerate(held_out_np):
        z_f = torch.stack([z_c[f] for z_c in held_out_z], 1).transpose(2, 3)  # (S, L, rows, K)
        fold_losses.append(scores(z_f, cols, [labels[rows] for labels in y_train], False)[1])
    cv_loss = torch.stack(fold_losses).mean(0)  # (S, L, H)
    best = cv_loss.argmin(1)  # (S, H)
    # The refit of head h: the all-rows problem at head h's C (each head keeps its own columns from it).
    w_refit = torch.take_along_dim(w_path[:, n_folds, None], best[:, :, None, None, None], dim=2)[:, :, 0]
    test_all, _, pred = evaluate(xte, w_refit, cols, y_test)  # (S, H problems, H heads)
    test = torch.diagonal(test_all, dim1=1, dim2=2)
    n_h = len(y_train)
    pred = torch.stack([pred[h][:, h] for h in range(n_h)], 1).cpu().numpy()  # (S, H, m): problem h's head h
    weights = np.stack([w_refit[:, h].cpu().numpy() for h in range(n_h)], 1)  # each head keeps all K columns
    chosen = np.asarray(cs, dtype=float)[best.cpu().numpy()]
    chosen[:, [w == 0 for w in cols.widths]] = np.nan  # a one-class head has nothing to regularise
    return test.cpu().numpy(), chosen, iterations, pred, weights


def _extrapolate(path: list[torch.Tensor], log_c: np.ndarray) -> torch.Tensor:
    """The next C's warm start from the solutions so far (at ``log_c[:-1]``): the path is smooth in log C,
    so a polynomial through the last two (linear) or three (quadratic) solutions, evaluated at the next
    log C. Lagrange weights; a step longer than the last spacing is shortened to it."""
    known = log_c[:-1][-3:]
    if len(set(known.tolist())) < len(known):  # a C given twice: start from the last solution
        return path[-1]
    target = min(log_c[-1], known[-1] + (known[-1] - known[-2])) if len(known) >= 2 else log_c[-1]
    weights = [np.prod([(target - b) / (a - b) for b in known if b != a]) for a in known]
    return sum(float(c) * w for c, w in zip(weights, path[-len(known) :]))


def evaluate(
    x: torch.Tensor, weights: torch.Tensor, cols: Columns, y_rows: list[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """``scores`` of weights (S, L, K, d1) on rows x (S, m, d1)."""
    return scores(torch.einsum("smd,slkd->slmk", x, weights), cols, y_rows)


def scores(
    z: torch.Tensor, cols: Columns, y_rows: list[np.ndarray], keep: bool = True
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Logits z (S, L, m, K) of m rows -> (accuracy, mean log-loss), each (S, L, H), and each head's
    predictions (S, L, m) when ``keep``."""
    dt, dev = z.dtype, z.device
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
