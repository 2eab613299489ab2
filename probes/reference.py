"""The scikit-learn reference the fast path (``probes.fit``) is checked against: one fit at a time,
on the same standardisation, folds and regularisation grids."""

from __future__ import annotations

import numpy as np

from probes.fit import DEFAULT_ALPHAS, DEFAULT_CS, Head
from probes.labels import REGRESSION


def fit_sklearn(*args, **kwargs) -> tuple[float, float]:
    """(test score, chosen C or alpha) of ``fit_sklearn_predict`` (same arguments)."""
    return fit_sklearn_predict(*args, **kwargs)[:2]


def fit_sklearn_predict(
    x_train: np.ndarray,
    x_test: np.ndarray,
    head: Head,
    kind: str,
    folds: np.ndarray,
    cs: tuple[float, ...] = DEFAULT_CS,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    max_iter: int = 1000,
    tol: float = 1e-4,
) -> tuple[float, float, np.ndarray]:
    """The reference: StandardScaler, then LogisticRegressionCV or RidgeCV over the same video folds.
    Returns (test score, chosen C or alpha, predictions on the test rows: for intervals over test videos)."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    xtr, xte = scaler.transform(x_train), scaler.transform(x_test)
    splits = [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(int(folds.max()) + 1)]
    if kind == REGRESSION:
        model = RidgeCV(alphas=list(alphas), cv=splits, scoring="r2").fit(xtr, head.y_train)
        return float(model.score(xte, head.y_test)), float(model.alpha_), model.predict(xte)
    if len(np.unique(head.y_train)) < 2:
        only = head.y_train[0]
        return float(np.mean(head.y_test == only)), float("nan"), np.full(len(head.y_test), only)
    model = LogisticRegressionCV(
        Cs=list(cs),
        cv=splits,
        l1_ratios=(0.0,),
        scoring="neg_log_loss",
        solver="lbfgs",
        tol=tol,
        max_iter=max_iter,
        use_legacy_attributes=False,
    ).fit(xtr, head.y_train)
    # ``model.score`` would use the CV scoring (log-loss); the reported score is test accuracy.
    pred = model.predict(xte)
    return float(np.mean(pred == head.y_test)), float(model.C_), pred
