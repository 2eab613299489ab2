"""A probing run as data: ``ProbeConfig`` + a store -> a tidy table of scores with their controls.

For every target and every (step, layer) of the store, one linear probe is trained on the block
output of training videos and scored on held-out videos. Beside every score:

- ``control``: the same probe on the control task of Hewitt and Liang (2019): every token type
  (position, and a bounded summary of what the given frame shows there: at most
  ``control_condition_types`` values, ``probes.features.ConditionSummary``) gets a random label
  drawn from the target's training distribution; ``selectivity = value - control``, and
  ``control_types`` says how many types there were;
- ``x_t``: the same probe on the noisy latent that entered the model at that step (per step);
- ``condition``: the same probe on the conditioning latent alone (one figure per target);
- ``vae_latent``: for a store traced from given videos (``features.given_video``), the same probe on each
  video's clean VAE latent (the raw latent baseline; NaN for a generated store);
- ``majority_rate``: the test accuracy of always answering the commonest training class.

Slabs are read one (step, site) at a time; the fast path fits ``group`` slabs together, so memory
depends on ``group``, not on how many steps and layers the store holds. With ``max_tokens`` set,
each video gives at most that many tokens, chosen once per video and read in blocks, and ridge
heads are fitted from accumulated Gram sums (``probes.streaming``): memory is bounded by the budget.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from activations import ActivationStore, parse_index_spec
from activations.axes import parse_site
from probes.budget import check_max_tokens
from probes.config import METHODS, ProbeConfig, Split, split_videos
from probes.features import condition_tokens, final_tokens, given_video, token_types, x_t_tokens
from probes.fit import fit_fast
from probes.labels import CLASS, LabelProvider, Labels, labels_from_array, load_label_file
from probes.tables import read_results, save_results, write_into_store
from probes.targets import Target, groups, prepare_target, sklearn_scores, target_intervals

__all__ = ["COLUMNS", "ProbeConfig", "Split", "read_results", "run_probes", "save_results", "split_videos"]

COLUMNS = (
    "target", "kind", "site", "layer", "step", "sigma", "metric", "value", "control", "selectivity",
    "control_types", "majority_rate", "x_t", "condition", "vae_latent", "regularisation", "n_train_videos",
    "n_test_videos", "method",
    "value_lo", "value_hi", "selectivity_lo", "selectivity_hi",
)  # fmt: skip
# value_lo/hi, selectivity_lo/hi: 95% bootstrap intervals over the test videos (probes.intervals).
# control_types: how many token types the control task drew labels for (probes.features.token_types).


def _check_config(cfg: ProbeConfig, store: ActivationStore, arrays: int = 0) -> tuple[list[str], list[int]]:
    check_max_tokens(cfg.max_tokens)
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
    if not 0 < cfg.test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {cfg.test_fraction}")
    if cfg.folds < 2:
        raise ValueError(f"folds must be at least 2, got {cfg.folds}")
    if cfg.group < 1:
        raise ValueError(f"group must be at least 1, got {cfg.group}")
    types = cfg.control_condition_types
    if isinstance(types, bool) or not isinstance(types, int) or types < 1:
        raise ValueError(f"control_condition_types must be an integer of at least 1, got {types!r}")
    if not cfg.targets and not cfg.labels and not arrays:
        raise ValueError("nothing to probe: give at least one target or label file")
    if not cfg.cs or not cfg.alphas or min(cfg.cs) <= 0 or min(cfg.alphas) <= 0:
        raise ValueError("cs and alphas must be non-empty lists of positive numbers")
    if not cfg.tol > 0 or cfg.max_iter < 1 or cfg.patience < 0:
        raise ValueError(
            f"tol must be positive, max_iter at least 1 and patience at least 0; got {cfg.tol}, {cfg.max_iter}, "
            f"{cfg.patience}"
        )
    # "all" means every stored layer / step; explicit indices must have been stored.
    layers = store.layers
    if cfg.layers.strip().lower() != "all":
        layers = parse_index_spec(cfg.layers, max(store.layers) + 1 if store.layers else 0, "layer")
        missing = [k for k in layers if k not in store.layers]
        if missing:
            raise ValueError(f"layer {missing[0]} is not in the store (stored layers: {store.layers})")
    steps = store.steps
    if cfg.steps.strip().lower() != "all":
        steps = parse_index_spec(cfg.steps, store.layout.num_steps, "step")
        absent = [s for s in steps if s not in store.steps]
        if absent:
            raise ValueError(f"step {absent[0]} is not in the store (stored steps: {store.steps})")
    sites = [s for s in store.sites if parse_site(s)[2] is None and parse_site(s)[1] in layers]
    return sites, steps


def _rows(features: np.ndarray, per_video: bool) -> np.ndarray:
    """(V, tokens, d) -> rows (V*tokens, d), or per-video means (V, d) for per-video targets."""
    return features.mean(1) if per_video else features.reshape(-1, features.shape[-1])


class Prober:
    """Fits every target on a sequence of feature slabs with the configured method."""

    def __init__(self, cfg: ProbeConfig, targets: list[Target]):
        self.cfg = cfg
        self.targets = targets
        self.device = torch.device(cfg.device)

    def scores(self, slabs: list[np.ndarray]) -> list[dict[str, tuple]]:
        """Per slab, per target name: (score, control score, chosen regularisation[, intervals])."""
        out: list[dict[str, tuple[float, float, float]]] = [{} for _ in slabs]
        for t in self.targets:
            rows = [_rows(s, t.labels.per_video) for s in slabs]
            if self.cfg.method == "sklearn":
                for i, x in enumerate(rows):
                    out[i][t.labels.name] = sklearn_scores(x[t.rows_train], x[t.rows_test], t, t.test_video, self.cfg)
                continue
            # Slabs of different widths (x_t vs blocks) never share a call.
            x = torch.from_numpy(np.stack(rows)).to(self.device)
            cfg = self.cfg
            fit = fit_fast(
                x[:, t.rows_train], x[:, t.rows_test], [t.head, t.control], t.labels.kind, t.folds, tuple(cfg.cs),
                tuple(cfg.alphas), max_iter=cfg.max_iter, tol=cfg.tol, patience=cfg.patience,
            )  # fmt: skip
            for i in range(len(slabs)):
                ci = target_intervals(t, *fit.predictions[i], t.test_video, self.cfg.seed)
                scores = float(fit.scores[i, 0]), float(fit.scores[i, 1]), float(fit.regularisation[i, 0])
                out[i][t.labels.name] = (*scores, ci)
        return out


def load_targets(
    store: ActivationStore, cfg: ProbeConfig, providers: Sequence[LabelProvider] = (), arrays: dict | None = None
) -> list[Labels]:
    """Every target's labels, checked against the store before any probe is fitted: named targets
    from the first provider that knows them, label files, and labels given in memory."""
    arrays = arrays or {}
    labels = []
    for target in cfg.targets:
        provider = next((p for p in providers if target in p.targets), None)
        if provider is None:
            known = ", ".join(t for p in providers for t in p.targets) or "none without a task's label provider"
            raise ValueError(f"unknown target {target!r}; known targets: {known} (or supply labels with --labels)")
        labels.append(provider.labels(store, target))
    labels += [load_label_file(store, name, path) for name, path in cfg.labels.items()]
    labels += [a if isinstance(a, Labels) else labels_from_array(store, k, np.asarray(a)) for k, a in arrays.items()]
    names = [lab.name for lab in labels]
    if len(set(names)) != len(names):
        raise ValueError(f"target names must be unique, got {names}")
    return labels


def _probe_whole(
    store: ActivationStore, cfg: ProbeConfig, all_labels: list[Labels], split: Split, slabs: list, steps: list, progress
) -> tuple[list[Target], dict, dict, dict, dict]:
    """Every token: each (step, site) slab of every video read whole, ``group`` slabs at a time."""
    videos = split.train + split.test
    condition = condition_tokens(store, videos) if store.has_condition else None
    types = token_types(store, videos, condition, cfg.control_condition_types, cfg.seed)
    targets = [prepare_target(lab, split, types, cfg.seed + i) for i, lab in enumerate(all_labels)]
    prober = Prober(cfg, targets)
    results: dict[tuple[str, int], dict] = {}
    bar = tqdm(total=len(slabs) + len(steps) + 1, disable=not progress, desc="probing slabs")
    for group in groups(slabs, cfg.group if cfg.method == "fast" else 1):
        data = [store.activations(site, videos=videos, steps=[step])[:, 0].astype(np.float32) for site, step in group]
        # A slab never computed (all NaN: a multi-expert model runs one expert per step) has no probe.
        kept = [(key, x) for key, x in zip(group, data) if not np.isnan(x).all()]
        if kept:
            for (key, _), scores in zip(kept, prober.scores([x for _, x in kept])):
                results[key] = scores
        bar.update(len(group))
    x_t_scores: dict[int, dict] = {}
    for group in groups(steps, cfg.group if cfg.method == "fast" else 1):
        for step, scores in zip(group, prober.scores([x_t_tokens(store, videos, s) for s in group])):
            x_t_scores[step] = scores
        bar.update(len(group))
    condition_scores = prober.scores([condition])[0] if condition is not None else {}
    clean_scores = prober.scores([final_tokens(store, videos)])[0] if given_video(store) else {}
    bar.update(1)
    bar.close()
    return targets, results, x_t_scores, condition_scores, clean_scores


def run_probes(
    store_path: str | Path,
    cfg: ProbeConfig,
    progress: bool = True,
    providers: Sequence[LabelProvider] = (),
    labels: dict[str, Labels | np.ndarray] | None = None,
    write: bool = True,
):
    """Fit and score every probe; returns the results as a pandas DataFrame (columns ``COLUMNS``),
    also written into the store as ``results/probes/<cfg.name>`` unless ``write=False``
    (``read_results(store, cfg.name)`` reads it back).

    ``providers``: where named targets come from (a task's label provider); ``labels``: labels in
    memory by name, as arrays (videos x stored tokens, videos x h x w of the stored grid, or one per
    video; floats are regression targets, integers classes, negative integers unlabelled) or as
    ``probes.labels.labels_from_array`` results."""
    import pandas as pd

    with ActivationStore(store_path) as store:
        sites, steps = _check_config(cfg, store, len(labels or {}))
        all_labels = load_targets(store, cfg, providers, labels)
        labelled = [v for v in store.completed_videos if all(np.isfinite(lab.values[v]).any() for lab in all_labels)]
        split = split_videos(labelled, cfg.test_fraction, cfg.folds, cfg.seed)
        slabs = [(site, step) for site in sites for step in steps]
        if cfg.max_tokens is not None:  # the token budget: blocks of chosen rows, no slab read whole
            from probes.streaming import probe_budgeted

            targets, results, x_t_scores, condition_scores, clean_scores = probe_budgeted(
                store, cfg, all_labels, split, slabs, steps, progress
            )
        else:
            targets, results, x_t_scores, condition_scores, clean_scores = _probe_whole(
                store, cfg, all_labels, split, slabs, steps, progress
            )
        rows = []
        for t in targets:
            name, kind = t.labels.name, t.labels.kind
            for site, step in slabs:
                if (site, step) not in results:
                    continue
                value, control, reg, *ci = results[(site, step)][name]
                ci = ci[0] if ci else (float("nan"),) * 4
                rows.append(
                    {
                        "target": name,
                        "kind": kind,
                        "site": site,
                        "layer": parse_site(site)[1],
                        "step": step,
                        "sigma": store.sigma(step),
                        "metric": "accuracy" if kind == CLASS else "r2",
                        "value": value,
                        "control": control,
                        "selectivity": value - control,
                        "control_types": t.control_types,
                        "majority_rate": t.majority_rate,
                        "x_t": x_t_scores[step][name][0],
                        "condition": condition_scores[name][0] if condition_scores else float("nan"),
                        "vae_latent": clean_scores[name][0] if clean_scores else float("nan"),
                        "regularisation": reg,
                        "n_train_videos": len(split.train),
                        "n_test_videos": len(split.test),
                        "method": cfg.method,
                        **dict(zip(COLUMNS[-4:], ci)),
                    }
                )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    if write:
        problem = write_into_store(table, store_path, cfg)
        if problem:  # a read-only store, a full disk, a writer past the wait: the table is still returned
            warnings.warn(problem, stacklevel=2)
    return table
