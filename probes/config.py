"""A probing run's configuration and its split of videos (training folds, held-out test videos):
what ``probes.run``, ``probes.streaming`` and ``probes.tables`` share, with no import between them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from probes.features import CONDITION_TYPES
from probes.fit import DEFAULT_ALPHAS, DEFAULT_CS

METHODS = ("fast", "sklearn")
@dataclass
class ProbeConfig:
    targets: list[str] = field(default_factory=lambda: ["on_path"])
    labels: dict[str, str] = field(default_factory=dict)  # name -> .npy file of user labels
    layers: str = "all"
    steps: str = "all"
    method: str = "fast"
    test_fraction: float = 0.25
    folds: int = 3
    seed: int = 0
    cs: list[float] = field(default_factory=lambda: list(DEFAULT_CS))
    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    tol: float = 1e-4  # logistic fits stop when the largest gradient entry is below this (scikit-learn's)
    max_iter: int = 1000  # and after at most this many iterations per C (scikit-learn's lbfgs default here)
    patience: int = 10  # fast path: or once no predicted class changed for this many iterations (0: never)
    group: int = 4  # slabs fitted together by the fast path (on a GPU, more pay)
    device: str = "cpu"
    name: str = "probes"  # table name inside the store: /results/probes/<name>
    # At most this many tokens per video (and target), chosen once per video, read in blocks
    # (probes.streaming); None: every token, each slab read whole (the original path, unchanged).
    max_tokens: int | None = None
    # The control task's token types: position x at most this many summaries of the conditioning
    # (probes.features.ConditionSummary; stores without a conditioning latent: position alone).
    control_condition_types: int = CONDITION_TYPES

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ProbeConfig:
        return cls(**json.loads(text))


@dataclass
class Split:
    train: list[int]  # video indices
    test: list[int]
    fold: dict[int, int]  # training video -> cross-validation fold


def split_videos(videos: list[int], test_fraction: float, folds: int, seed: int) -> Split:
    """Held-out videos and cross-validation folds, by video: no video is on two sides."""
    rng = np.random.default_rng(seed)
    order = [int(v) for v in rng.permutation(videos)]
    n_test = max(1, int(round(test_fraction * len(order))))
    train, test = sorted(order[n_test:]), sorted(order[:n_test])
    if len(train) < folds:
        raise ValueError(
            f"{len(videos)} labelled videos leave {len(train)} for training, fewer than the {folds} folds; "
            "trace more videos or lower --folds / --test-fraction"
        )
    shuffled = [int(v) for v in rng.permutation(train)]
    return Split(train, test, {v: i % folds for i, v in enumerate(shuffled)})
