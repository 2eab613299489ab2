"""A linear probe fitted on arrays, with its weights kept in raw feature space and saved.

``fit_probe(features, labels)`` takes features (videos, tokens, d) or (videos, d) and labels of the
same leading shape (NaN or negative integers: unlabelled), splits by video as the probing runs do,
fits with the batched fast path (``probes.fit.fit_fast``: same standardisation, regularisation path
and cross-validation), and returns a ``Probe``: its test score and a 95% bootstrap interval over
test videos, its weights and bias on the *unstandardised* features (so ``probe.direction()`` can be
added to a site's output to steer a run, ``interp.api.add_direction``), ``predict``, and ``save`` /
``Probe.load`` (safetensors + JSON metadata; nothing is unpickled). ``fit_probe_on_store`` reads one
(site, step) slab of a store first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probes.fit import DEFAULT_ALPHAS, DEFAULT_CS, Head, fit_fast
from probes.intervals import bootstrap_scores, interval
from probes.labels import CLASS, REGRESSION, standardisation


@dataclass
class Probe:
    kind: str  # "class" or "regression"
    weights: np.ndarray  # (columns, d): one column (binary, regression) or one per class (multinomial)
    bias: np.ndarray  # (columns,)
    classes: np.ndarray  # class values (empty for regression)
    score: float  # test accuracy or R^2
    interval: tuple[float, float]  # 95% bootstrap interval over test videos
    regularisation: float  # chosen C or alpha
    n_test_videos: int

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(..., d) -> (..., columns)."""
        return np.asarray(features, dtype=np.float64) @ self.weights.T + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        z = self.logits(features)
        if self.kind == REGRESSION:
            return z[..., 0]
        if len(self.classes) == 2:
            return np.where(z[..., 0] > 0, self.classes[1], self.classes[0])
        return self.classes[z.argmax(-1)] if len(self.classes) > 2 else np.full(z.shape[:-1], self.classes[0])

    def direction(self, cls: float | None = None) -> np.ndarray:
        """Unit vector in feature space along which the probe's output grows (towards class ``cls``
        of a multinomial probe; binary and regression probes have one)."""
        if len(self.weights) == 1:
            w = self.weights[0]
        else:
            if cls is None:
                raise ValueError(f"a probe of {len(self.classes)} classes needs cls= (one of {self.classes.tolist()})")
            w = self.weights[int(np.searchsorted(self.classes, cls))]
        return w / max(float(np.linalg.norm(w)), 1e-12)

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save_file

        meta = {"kind": self.kind, "score": self.score, "interval": list(self.interval),
                "regularisation": self.regularisation, "n_test_videos": self.n_test_videos}  # fmt: skip
        tensors = {"weights": self.weights, "bias": self.bias, "classes": np.asarray(self.classes, np.float64)}
        save_file(tensors, str(path), metadata={"probe": json.dumps(meta)})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Probe:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads(f.metadata()["probe"])
            t = {k: f.get_tensor(k) for k in ("weights", "bias", "classes")}
        meta["interval"] = tuple(meta["interval"])
        return cls(weights=t["weights"], bias=t["bias"], classes=t["classes"], **meta)


def _video_split(n_videos: int, test_fraction: float, folds: int, seed: int):
    from probes.run import split_videos

    return split_videos(list(range(n_videos)), test_fraction, folds, seed)


def fit_probe(
    features: np.ndarray,
    labels: np.ndarray,
    kind: str | None = None,
    test_fraction: float = 0.25,
    folds: int = 3,
    seed: int = 0,
    cs: tuple[float, ...] = DEFAULT_CS,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
) -> Probe:
    """A probe from arrays: ``features`` (videos, tokens, d) or (videos, d), ``labels`` (videos,
    tokens) or (videos,); ``kind`` defaults to classes for integer/boolean labels, regression for floats."""
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim not in (2, 3) or y.shape != x.shape[:-1]:
        raise ValueError(f"features (videos[, tokens], d) and labels (videos[, tokens]) must match, got "
                         f"{x.shape} and {y.shape}")  # fmt: skip
    kind = kind or (REGRESSION if y.dtype.kind == "f" else CLASS)
    if kind not in (CLASS, REGRESSION):
        raise ValueError(f"kind must be {CLASS!r} or {REGRESSION!r}, got {kind!r}")
    values = y.astype(np.float64)
    if y.dtype.kind in "iu":
        values[y < 0] = np.nan
    x, values = (x, values) if x.ndim == 3 else (x[:, None], values[:, None])
    split = _video_split(len(x), test_fraction, folds, seed)

    def rows(videos):
        keep = np.isfinite(values[videos])
        video_of_row = np.nonzero(keep)[0]
        return x[videos][keep], values[videos][keep], video_of_row

    x_tr, y_tr, v_tr = rows(split.train)
    x_te, y_te, v_te = rows(split.test)
    if not len(y_tr) or not len(y_te):
        raise ValueError("no labelled rows on the training or the test videos")
    fold = np.array([split.fold[v] for v in split.train])[v_tr]
    centre, scale = standardisation(y_tr, np.arange(len(y_tr))) if kind == REGRESSION else (0.0, 1.0)
    head = Head((y_tr - centre) / scale, (y_te - centre) / scale)  # scale-free fits; weights back in label units
    fit = fit_fast(torch.from_numpy(x_tr)[None], torch.from_numpy(x_te)[None], [head], kind, fold,
                   tuple(cs), tuple(alphas))  # fmt: skip
    w = fit.weights[0, 0]  # (columns, d + 1) on standardised features
    std, mean = fit.std[0], fit.mean[0]
    weights = w[:, :-1] / std * scale
    bias = (w[:, -1] - (w[:, :-1] / std) @ mean) * scale + centre
    boot = bootstrap_scores([fit.predictions[0, 0]], [head.y_test], v_te, kind, seed=seed)[:, 0]
    classes = np.unique(y_tr) if kind == CLASS else np.zeros(0)
    return Probe(kind, weights.astype(np.float64), bias.astype(np.float64), classes, float(fit.scores[0, 0]),
                 interval(boot), float(fit.regularisation[0, 0]), len(split.test))  # fmt: skip


def fit_probe_on_store(store_path: str | Path, site: str, step: int, labels: np.ndarray, **options) -> Probe:
    """``fit_probe`` on one (site, step) slab of a store: ``labels`` (videos, stored tokens) or (videos,)
    over every video of the store (incomplete videos are dropped)."""
    from activations import ActivationStore

    with ActivationStore(store_path) as store:
        videos = store.completed_videos
        x = store.activations(site, videos=videos, steps=[step])[:, 0].astype(np.float32)
    y = np.asarray(labels)[videos]
    return fit_probe(x if y.ndim == 2 else x.mean(1), y, **options)
