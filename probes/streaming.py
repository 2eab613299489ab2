"""Probing under a per-video token budget (``ProbeConfig.max_tokens``), with memory bounded by it.

``probe_budgeted`` is what ``run_probes`` runs when ``max_tokens`` is set:

- each target's tokens are chosen once per video (``probes.budget.token_selection``); a video's
  store read is the sorted union of its targets' tokens, the same for every (step, site) slab and
  for the x_t and conditioning controls, so the rows line up across slabs and controls;
- videos are taken in blocks of about ``BLOCK_ROWS`` selected rows; one video's slab is read in
  windows of ``WINDOW_TOKENS`` tokens (contiguous HDF5 reads, the selected rows kept), so a read
  holds at most one window, and a block at most its selected rows, whatever the store's size;
- regression heads (and their control task) are ridge fits from Gram sums accumulated block by
  block (``probes.budget.GramRidge``): no design matrix at all; classification heads fill the
  budgeted design matrix, (group, rows, hidden) float32, and run the fast path's logistic fit on it;
- the control task gives one random label per token type (position, and what the given frame
  shows there), the types counted over the selected rows.

Memory is then about the budgeted rows of the classification targets (x ``group``, and the
copies the logistic fit makes), plus one block and one read window: nothing grows with the
number of tokens beyond the budget, and nothing grows with the number of videos for regression
targets. The disk still delivers every HDF5 chunk that holds a selected token: a random sample
touches nearly every chunk, so a budget bounds memory and compute, not the bytes read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from activations import ActivationStore
from probes.budget import GramRidge, token_selection
from probes.config import ProbeConfig, Split
from probes.features import FIT_ROWS, ConditionSummary, condition_tokens, final_tokens, given_video, x_t_tokens
from probes.fit import Head, fit_fast
from probes.labels import CLASS, REGRESSION, Labels, standardised
from probes.targets import Target, control_labels, groups, sklearn_scores, target_intervals

BLOCK_ROWS = 8192  # selected rows of a block of videos: 48 MB of float32 at hidden 1536
WINDOW_TOKENS = 4096  # tokens per read of one video's slab: 12 MB of fp16 at hidden 1536

Source = Callable[[list[int]], list[np.ndarray]]  # video positions -> per video (union rows, d) float32


class TokenReader:
    """Reads chosen tokens of one video's (step, site) slab, a window of tokens at a time.

    h5py's point selections on the token axis were 10x slower than reading the whole range and
    indexing in memory (8,190 x 1,536 fp16, page cache); a window bounds what one read holds.
    Every block-output read of a budgeted probe goes through ``read`` (tests count its rows)."""

    def __init__(self, store: ActivationStore, window: int | None = None):
        self.store = store
        self.window = window or WINDOW_TOKENS
        self.rows_read = 0
        self._datasets: dict = {}

    def _dataset(self, site: str):
        if site not in self._datasets:  # a lookup by name costs ~0.5 ms; a probe reads per video
            name = f"sites/{site}"
            # ``ActivationStore.dataset`` resolves the parts of a moved store; a reader without it has the file.
            get = getattr(self.store, "dataset", None)
            self._datasets[site] = get(name) if get is not None else self.store._file[name]
        return self._datasets[site]

    def read(self, site: str, step: int, video: int, positions: np.ndarray) -> np.ndarray:
        """(len(positions), hidden) float32 of ``site`` at ``step`` for sorted token ``positions``."""
        ds = self._dataset(site)
        pos = self.store.layout.steps.index(step)
        out = np.empty((len(positions), ds.shape[-1]), dtype=np.float32)
        done = 0
        while done < len(positions):
            start = int(positions[done])
            stop = int(np.searchsorted(positions, start + self.window))  # positions in [start, start + window)
            chunk = ds[int(video), pos, start : int(positions[stop - 1]) + 1]
            out[done:stop] = chunk[positions[done:stop] - start]
            done = stop
        self.rows_read += len(positions)
        return out


@dataclass
class BudgetTarget:
    """A target's rows under the budget: row order is video order (training videos first), each
    video's chosen tokens in token order; ``local[j]`` indexes video j's union read."""

    target: Target
    local: list[np.ndarray]
    offsets: np.ndarray  # (V + 1,) first row of each video
    n_train_rows: int
    y: np.ndarray  # (rows, 2): the labels and the control task's labels

    def test_video(self) -> np.ndarray:
        """The test video (0..) of each test row, for intervals resampled over videos."""
        test_rows = np.arange(self.n_train_rows, int(self.offsets[-1]))
        return np.searchsorted(self.offsets, test_rows, side="right") - 1  # ids need not start at 0 (intervals)

    def rows(self, j: int, union_rows: np.ndarray) -> np.ndarray:
        x = union_rows[self.local[j]]
        return x.mean(0, keepdims=True) if self.target.labels.per_video and len(x) else x


def _blocks(sizes: list[int], limit: int) -> list[list[int]]:
    """Consecutive video positions whose selected rows add up to about ``limit`` (at least one video)."""
    blocks, current, rows = [], [], 0
    for j, n in enumerate(sizes):
        if current and rows + n > limit:
            blocks.append(current)
            current, rows = [], 0
        current.append(j)
        rows += n
    return blocks + ([current] if current else [])


def _types(store: ActivationStore, videos: list[int], union: list[np.ndarray], blocks: list[list[int]],
           max_condition_types: int, seed: int) -> list:  # fmt: skip
    """Per video, the control task's token type of each union row (as ``features.token_types``): the
    conditioning summary is fitted on a seeded sample of the union rows, block by block, then applied."""
    if not store.has_condition:
        keys = [u.astype(np.int64) for u in union]
    else:
        rng = np.random.default_rng(seed)
        per_video = -(-FIT_ROWS // len(videos))
        sample = []
        for block in blocks:
            cond = condition_tokens(store, [videos[j] for j in block])
            for i, j in enumerate(block):
                rows = cond[i, union[j]]
                sample.append(rows[rng.choice(len(rows), min(per_video, len(rows)), replace=False)])
        summary = ConditionSummary.fit(np.concatenate(sample), max_condition_types, seed)
        keys = []
        for block in blocks:
            cond = condition_tokens(store, [videos[j] for j in block])
            keys += [union[j] * len(summary.centres) + summary(cond[i, union[j]]) for i, j in enumerate(block)]
    _, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    return np.split(inverse.reshape(-1), np.cumsum([len(u) for u in union])[:-1])


def _prepare(labels: Labels, split: Split, picks, union, types, seed: int) -> BudgetTarget:
    videos = split.train + split.test
    n_tr = len(split.train)
    local = [np.searchsorted(u, p) for u, p in zip(union, picks)]
    if labels.per_video:
        counts = [int(len(p) > 0) for p in picks]
        y = np.concatenate([np.full(c, labels.values[v]) for v, c in zip(videos, counts)])
        row_types = np.concatenate([np.full(c, j) for j, c in enumerate(counts)])
    else:
        counts = [len(p) for p in picks]
        y = np.concatenate([labels.values[v][p] for v, p in zip(videos, picks)])
        row_types = np.concatenate([t[loc] for t, loc in zip(types, local)])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n_train_rows = int(offsets[n_tr])
    if n_train_rows == 0 or n_train_rows == len(y):
        raise ValueError(f"target {labels.name!r} has no labels on the training or the test videos")
    if labels.kind == REGRESSION:
        y = standardised(y, np.arange(n_train_rows))
    folds = np.repeat([split.fold[v] for v in split.train], counts[:n_tr])
    control = control_labels(y, row_types.astype(np.int64), np.arange(n_train_rows), np.random.default_rng(seed))
    majority = float("nan")
    if labels.kind == CLASS:
        classes, class_counts = np.unique(y[:n_train_rows], return_counts=True)
        majority = float(np.mean(y[n_train_rows:] == classes[np.argmax(class_counts)]))
    head = Head(y[:n_train_rows], y[n_train_rows:])
    control_head = Head(control[:n_train_rows], control[n_train_rows:])
    rows = np.arange(len(y))
    target = Target(labels, rows[:n_train_rows], rows[n_train_rows:], head, control_head, folds, majority,
                     control_types=len(np.unique(row_types)))  # fmt: skip
    return BudgetTarget(target, local, offsets, n_train_rows, np.stack([y, control], 1))


class BudgetProber:
    """Scores every target on slabs read block by block: Gram ridge or logistic on budgeted rows."""

    def __init__(self, store: ActivationStore, cfg: ProbeConfig, all_labels: list[Labels], split: Split):
        self.store, self.cfg, self.split = store, cfg, split
        self.videos = split.train + split.test
        n_tok = store.layout.n_tokens
        picks = [token_selection(lab, self.videos, n_tok, cfg.max_tokens, cfg.seed) for lab in all_labels]
        self.union = [np.unique(np.concatenate([p[j] for p in picks])) for j in range(len(self.videos))]
        self.blocks = _blocks([len(u) for u in self.union], BLOCK_ROWS)
        types = _types(store, self.videos, self.union, self.blocks, cfg.control_condition_types, cfg.seed)
        self.targets = [
            _prepare(lab, split, p, self.union, types, cfg.seed + i)
            for i, (lab, p) in enumerate(zip(all_labels, picks))
        ]
        # Group of each video: its cross-validation fold, or ``folds`` for the test videos.
        self.video_group = [split.fold[v] for v in split.train] + [cfg.folds] * len(split.test)
        self.reader = TokenReader(store)
        self.device = torch.device(cfg.device)

    def site_source(self, site: str, step: int) -> Source:
        return lambda block: [self.reader.read(site, step, self.videos[j], self.union[j]) for j in block]

    def input_source(self, features: Callable[[list[int]], np.ndarray]) -> Source:
        """A control's features (``x_t_tokens`` / ``condition_tokens`` of a block of videos) on the union rows."""

        def read(block: list[int]) -> list[np.ndarray]:
            x = features([self.videos[j] for j in block])
            return [x[i, self.union[j]] for i, j in enumerate(block)]

        return read

    def _fill(self, sources: list[Source]):
        """One pass over the blocks: per target, Gram sums per slab (regression, fast path) or one
        (slabs, rows, d) design matrix; and which slabs hold any finite value."""
        gram = self.cfg.method == "fast"
        state: list = [None] * len(self.targets)
        finite = np.zeros(len(sources), dtype=bool)
        for block in self.blocks:
            groups = np.array([self.video_group[j] for j in block])
            for s, source in enumerate(sources):
                union_rows = source(block)
                finite[s] |= any(np.isfinite(x).any() for x in union_rows)
                for i, bt in enumerate(self.targets):
                    rows = [bt.rows(j, x) for j, x in zip(block, union_rows)]
                    if gram and bt.target.labels.kind == REGRESSION:
                        if state[i] is None:
                            state[i] = [GramRidge(self.cfg.folds, self.device, tuple(self.cfg.alphas)) for _ in sources]
                        # Video by video: the float64 copy holds one video's rows, whatever the block holds.
                        for j, r, g in zip(block, rows, groups):
                            state[i][s].add(r, bt.y[bt.offsets[j] : bt.offsets[j + 1]], int(g))
                        continue
                    if state[i] is None:  # one array for the group: the logistic fit takes it without a copy
                        state[i] = np.empty((len(sources), bt.offsets[-1], union_rows[0].shape[-1]), np.float32)
                    for j, r in zip(block, rows):
                        state[i][s, bt.offsets[j] : bt.offsets[j + 1]] = r
        return state, finite

    def scores(self, sources: list[Source], skip_empty: bool = True) -> list[dict[str, tuple[float, float, float]]]:
        """Per source (slab): per target name (score, control score, chosen regularisation); with
        ``skip_empty``, an empty dict for a slab never computed (all NaN: a multi-expert model runs
        one expert per step)."""
        state, finite = self._fill(sources)
        out: list[dict] = [{} for _ in sources]
        kept = [s for s in range(len(sources)) if finite[s] or not skip_empty]
        cfg = self.cfg
        for bt, fitted in zip(self.targets, state):
            t, n_tr = bt.target, bt.n_train_rows
            name, kind = t.labels.name, t.labels.kind
            if not kept:
                continue
            video = bt.test_video()
            if isinstance(fitted, list):  # Gram sums per slab; the test rows were predicted as they came
                for s in kept:
                    value, reg = fitted[s].solve(tuple(cfg.alphas))
                    pred = np.concatenate(fitted[s].test_predictions)  # (test rows, heads) in row order
                    ci = target_intervals(t, pred[:, 0], pred[:, 1], video, cfg.seed)
                    out[s][name] = (float(value[0]), float(value[1]), float(reg[0]), ci)
                continue
            if cfg.method == "sklearn":
                for s in kept:
                    out[s][name] = sklearn_scores(fitted[s][:n_tr], fitted[s][n_tr:], t, video, cfg)
                continue
            x = torch.from_numpy(fitted if len(kept) == len(sources) else fitted[kept]).to(self.device)
            fit = fit_fast(
                x[:, :n_tr], x[:, n_tr:], [t.head, t.control], kind, t.folds, tuple(cfg.cs), tuple(cfg.alphas),
                max_iter=cfg.max_iter, tol=cfg.tol, patience=cfg.patience,
            )  # fmt: skip
            del x
            for i, s in enumerate(kept):
                ci = target_intervals(t, *fit.predictions[i], video, cfg.seed)
                out[s][name] = (float(fit.scores[i, 0]), float(fit.scores[i, 1]), float(fit.regularisation[i, 0]), ci)
        return out


def probe_budgeted(
    store: ActivationStore,
    cfg: ProbeConfig,
    all_labels: list[Labels],
    split: Split,
    slabs: list[tuple[str, int]],
    steps: list[int],
    progress: bool = True,
) -> tuple[list[Target], dict, dict, dict, dict]:
    """(targets, scores per (site, step), x_t scores per step, condition scores, the given videos' VAE latent
    scores) under the budget."""
    prober = BudgetProber(store, cfg, all_labels, split)
    size = cfg.group if cfg.method == "fast" else 1
    results: dict[tuple[str, int], dict] = {}
    bar = tqdm(total=len(slabs) + len(steps) + 1, disable=not progress, desc="probing slabs (token budget)")
    for group in groups(slabs, size):
        for key, scores in zip(group, prober.scores([prober.site_source(site, step) for site, step in group])):
            if scores:
                results[key] = scores
        bar.update(len(group))
    x_t_scores: dict[int, dict] = {}
    for group in groups(steps, size):
        sources = [prober.input_source(lambda vs, s=s: x_t_tokens(store, vs, s)) for s in group]
        for step, scores in zip(group, prober.scores(sources, skip_empty=False)):
            x_t_scores[step] = scores
        bar.update(len(group))
    condition_scores: dict = {}
    if store.has_condition:
        condition_scores = prober.scores([prober.input_source(lambda vs: condition_tokens(store, vs))], False)[0]
    clean_scores: dict = {}
    if given_video(store):
        clean_scores = prober.scores([prober.input_source(lambda vs: final_tokens(store, vs))], False)[0]
    bar.update(1)
    bar.close()
    return [bt.target for bt in prober.targets], results, x_t_scores, condition_scores, clean_scores
