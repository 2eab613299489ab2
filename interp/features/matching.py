"""Features against truth (issue 31, item 3): for each per-token target, the one SAE latent that tracks it best,
chosen on the training videos and scored on the held-out ones, beside the same choice made on the target's
control task (Hewitt and Liang's random labels per token type, ``probes.targets``): the selectivity (score minus
control) says how much of a latent's score comes from the property and not from what a token's position and
given frame already tell. Choosing the best of thousands of latents on the data it is scored on would flatter
every target; here the choice and the score never see the same video.

The choice is streamed: per block of training tokens (``TokenBatches.in_order``), the SAE's latents of the
block, and per latent the sums that give its correlation with the labels (Pearson r for a regression target;
for a class target the point-biserial r with each class against the rest). Memory: one block of tokens x
latents, and a few sums per latent. The chosen latent's held-out score: AUROC of that class against the rest,
or Pearson r (signed as chosen: a latent that reverses on new videos scores below 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from activations.reader import ActivationStore
from interp.features.saes import encoded_blocks
from probes.intervals import N_BOOT, interval
from probes.labels import CLASS
from probes.targets import Target

LEVELS = 1024  # AUROC intervals: held-out scores binned to this many rank levels (the point value is exact)


@dataclass
class _Sums:
    """Per-latent sums over one head's labelled training rows (float64)."""

    d_sae: int
    classes: np.ndarray | None  # a class target's classes; None: regression
    n: int = 0
    s: np.ndarray = field(init=False)
    q: np.ndarray = field(init=False)
    by_class: np.ndarray | None = None  # (classes, d_sae) sums of the rows of each class
    n_class: np.ndarray | None = None
    sy: float = 0.0
    syy: float = 0.0
    szy: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.s, self.q = np.zeros(self.d_sae), np.zeros(self.d_sae)
        if self.classes is None:
            self.szy = np.zeros(self.d_sae)
        else:
            self.by_class = np.zeros((len(self.classes), self.d_sae))
            self.n_class = np.zeros(len(self.classes))

    def add(self, z: np.ndarray, y: np.ndarray) -> None:
        self.n += len(y)
        self.s += z.sum(0)
        self.q += (z * z).sum(0)
        if self.classes is None:
            self.sy += float(y.sum())
            self.syy += float((y * y).sum())
            self.szy += y @ z
            return
        onehot = (y[:, None] == self.classes[None]).astype(np.float64)  # (rows, classes)
        self.by_class += onehot.T @ z
        self.n_class += onehot.sum(0)

    def correlations(self) -> np.ndarray:
        """(classes, d_sae) point-biserial r of each latent with each class against the rest, or (1, d_sae)
        Pearson r with the regression labels; 0 where a latent or the labels do not vary."""
        mean = self.s / self.n
        sd = np.sqrt(np.maximum(self.q / self.n - mean**2, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.classes is None:
                sd_y = np.sqrt(max(self.syy / self.n - (self.sy / self.n) ** 2, 0.0))
                r = (self.szy / self.n - mean * self.sy / self.n) / (sd * sd_y)
                return np.nan_to_num(r[None], nan=0.0, posinf=0.0, neginf=0.0)
            p = self.n_class / self.n  # (classes,)
            in_class = self.by_class / self.n_class[:, None]
            rest = (self.s[None] - self.by_class) / (self.n - self.n_class)[:, None]
            r = (in_class - rest) * np.sqrt(p * (1 - p))[:, None] / sd[None]
        return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass
class _Choice:
    feature: int
    label: float | None  # the class the latent marks; None: regression
    train_r: float


def _label_grid(target: Target, n_videos: int, n_tokens: int, control: bool) -> tuple[np.ndarray, np.ndarray]:
    """(training labels, held-out labels), each (videos, tokens) with NaN off its rows (videos: ``Target``'s
    order, training videos first)."""
    head = target.control if control else target.head
    train, test = np.full(n_videos * n_tokens, np.nan), np.full(n_videos * n_tokens, np.nan)
    train[target.rows_train], test[target.rows_test] = head.y_train, head.y_test
    return train.reshape(n_videos, n_tokens), test.reshape(n_videos, n_tokens)


def _choose(sums: _Sums) -> _Choice:
    r = sums.correlations()
    pick = np.unravel_index(int(np.argmax(r if sums.classes is not None else np.abs(r))), r.shape)
    label = None if sums.classes is None else float(sums.classes[pick[0]])
    return _Choice(int(pick[1]), label, float(r[pick]))


def _held_out_score(values: np.ndarray, labels: np.ndarray, choice: _Choice) -> float:
    """AUROC of the chosen latent for its class against the rest, or its Pearson r signed as chosen."""
    from sklearn.metrics import roc_auc_score

    if choice.label is not None:
        positive = labels == choice.label
        return float(roc_auc_score(positive, values)) if 0 < positive.sum() < len(positive) else float("nan")
    if values.std() == 0 or labels.std() == 0:
        return float("nan")
    return float(np.corrcoef(values, labels)[0, 1] * np.sign(choice.train_r))


def _video_sums(values: np.ndarray, labels: np.ndarray, video: np.ndarray, n_videos: int, choice: _Choice):
    """Per-video sums from which a resample's score is pooled: (videos, levels, 2) positives and negatives per
    score level (AUROC; scores binned to at most ``LEVELS`` rank levels) or (videos, 6) moments (Pearson r)."""
    if choice.label is None:
        sums = np.zeros((n_videos, 6))
        for col, term in enumerate((np.ones_like(values), values, labels, values**2, labels**2, values * labels)):
            np.add.at(sums[:, col], video, term)
        return sums
    _, level = np.unique(values, return_inverse=True)
    level = (level.reshape(-1) * LEVELS // (int(level.max()) + 1)).astype(int)
    sums = np.zeros((n_videos, LEVELS, 2))
    np.add.at(sums, (video, level, (labels != choice.label).astype(int)), 1.0)
    return sums


def _pooled(sums: np.ndarray, choice: _Choice) -> np.ndarray:
    """The score of resampled sums: (B, levels, 2) -> AUROC, (B, 6) -> Pearson r signed as chosen."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if choice.label is None:
            n, sx, sy, sxx, syy, sxy = np.moveaxis(sums, -1, 0)
            r = (n * sxy - sx * sy) / np.sqrt((n * sxx - sx**2) * (n * syy - sy**2))
            return r * np.sign(choice.train_r)
        pos, neg = sums[..., 0], sums[..., 1]
        below = np.cumsum(neg, -1) - neg  # negatives strictly below each level
        return (pos * (below + 0.5 * neg)).sum(-1) / (pos.sum(-1) * neg.sum(-1))


def _intervals(heads: list[tuple[np.ndarray, np.ndarray, _Choice]], video: np.ndarray, seed: int) -> tuple:
    """95% intervals over held-out videos (resampled with replacement, as the probes' ``probes.intervals``) of
    the feature's score and of its selectivity, both heads on the same resampled videos."""
    video = np.unique(video, return_inverse=True)[1].reshape(-1)
    n_videos = int(video.max()) + 1 if len(video) else 0
    if n_videos < 2:
        return (float("nan"),) * 4
    counts = np.random.default_rng(seed).multinomial(n_videos, np.full(n_videos, 1 / n_videos), size=N_BOOT)
    boot = [_pooled(np.tensordot(counts, _video_sums(v, y, video, n_videos, c), 1), c) for v, y, c in heads]
    return (*interval(boot[0]), *interval(boot[0] - boot[1]))


def match_features(
    store: ActivationStore, sae, site: str, step: int, targets: list[Target], train: list[int], test: list[int],
    seed: int = 0,
) -> list[dict]:
    """Per per-token target (``probes.targets.prepare_target`` on the split ``train`` + ``test``): the latent of
    ``sae`` at (``site``, ``step``) chosen on the training videos, its held-out score and the control task's."""
    targets = [t for t in targets if not t.labels.per_video]
    videos, n_tok = list(train) + list(test), store.layout.n_tokens
    where = {v: i for i, v in enumerate(videos)}
    d_sae = int(sae.cfg.d_sae)
    heads = []  # (target, control?, training labels, held-out labels, sums)
    for t in targets:
        for control in (False, True):
            y_train, y_test = _label_grid(t, len(videos), n_tok, control)
            classes = np.unique(y_train[np.isfinite(y_train)]) if t.labels.kind == CLASS else None
            heads.append((t, control, y_train, y_test, _Sums(d_sae, classes)))
    for block, start, stop, z in encoded_blocks(store, sae, site, step, sorted(train)):
        index = [where[v] for v in block]
        for _, _, y_train, _, sums in heads:
            y = y_train[index, start:stop].reshape(-1)
            keep = np.isfinite(y)
            if keep.any():
                sums.add(z[keep], y[keep])
    choices = [_choose(sums) for *_, sums in heads]
    chosen = sorted({c.feature for c in choices})
    kept: dict[int, tuple] = {i: ([], []) for i in range(len(heads))}  # held-out values of each head's latent
    kept_video: dict[int, list] = {i: [] for i in range(len(heads))}  # ... and the video of each value
    for block, start, stop, z in encoded_blocks(store, sae, site, step, sorted(test), chosen):
        index = [where[v] for v in block]
        for i, (_, _, _, y_test, _) in enumerate(heads):
            y = y_test[index, start:stop].reshape(-1)
            keep = np.isfinite(y)
            kept[i][0].append(z[keep, chosen.index(choices[i].feature)])
            kept[i][1].append(y[keep])
            kept_video[i].append(np.repeat(block, stop - start)[keep])
    held = [(np.concatenate(kept[i][0]), np.concatenate(kept[i][1]), c) for i, c in enumerate(choices)]
    kept_video = {i: np.concatenate(v) for i, v in kept_video.items()}
    scores = [_held_out_score(*h) for h in held]
    rows = []
    for i in range(0, len(heads), 2):
        t, choice = heads[i][0], choices[i]
        value, control = scores[i], scores[i + 1]
        ci = _intervals(held[i : i + 2], kept_video[i], seed)
        rows.append({"target": t.labels.name, "kind": t.labels.kind, "site": site, "step": step,
                     "metric": "auroc" if t.labels.kind == CLASS else "r", "feature": choice.feature,
                     "marks": choice.label, "train_r": choice.train_r, "value": value, "control": control,
                     "selectivity": value - control, "control_feature": choices[i + 1].feature,
                     "chance": 0.5 if t.labels.kind == CLASS else 0.0, "value_lo": ci[0], "value_hi": ci[1],
                     "selectivity_lo": ci[2], "selectivity_hi": ci[3]})  # fmt: skip
    return rows
