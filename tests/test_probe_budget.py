"""Probes under a per-video token budget: same rows everywhere, stratified, ridge from Gram sums,
reads bounded by the budget, and the planted feature still found."""

import json

import numpy as np
import pytest
import torch

import probes.streaming as streaming
from activations import ActivationStore, StoreLayout, StoreWriter
from probes.budget import GramRidge, class_quota, select_tokens, token_selection
from probes.fit import Head, fit_fast
from probes.labels import CLASS, Labels, labels_from_array
from probes.run import ProbeConfig, run_probes, save_results

GRID = (2, 8, 8)
N_TOKENS = int(np.prod(GRID))
HIDDEN = 24
N_VIDEOS = 24
SITES = ["blocks.0", "blocks.1"]  # blocks.0: noise; blocks.1: the planted features


def _store(path, seed=0):
    """Block outputs with a binary token label (80/20 %, overlapping classes: logistic fits converge
    fast) and a continuous value planted in blocks.1; a binary conditioning mask per token, so the
    control task has position x mask types."""
    rng = np.random.default_rng(seed)
    cls = rng.choice(2, size=(N_VIDEOS, N_TOKENS), p=[0.7, 0.3])
    value = rng.standard_normal((N_VIDEOS, N_TOKENS))
    directions = np.linalg.qr(rng.standard_normal((HIDDEN, 3)))[0].T  # orthonormal
    layout = StoreLayout(
        model="synthetic", adapter="none", num_steps=2, steps=[0, 1], timesteps=[1000.0, 500.0],
        sigmas=[1.0, 0.5, 0.0], sites=SITES, hidden={s: HIDDEN for s in SITES}, token_grid=GRID,
        pooling=json.dumps({"kind": "none", "factor": 1, "count": 0, "seed": 0}), n_tokens=N_TOKENS,
        latent_shape=(4, *GRID), n_videos=N_VIDEOS, video_keys=[f"v{i}" for i in range(N_VIDEOS)],
        dtype="float16", condition_shape=(1, 1, GRID[1], GRID[2]),
    )  # fmt: skip
    with StoreWriter(path, layout) as writer:
        for start in range(0, N_VIDEOS, 8):
            videos = list(range(start, start + 8))
            part = writer.begin_part(videos)
            for step in (0, 1):
                for site in SITES:
                    x = rng.standard_normal((8, N_TOKENS, HIDDEN)) + 3.0  # an offset, as DiT channels have
                    if site == "blocks.1":
                        x += 3.0 * cls[videos, :, None] * directions[0]
                        x += 2.0 * value[videos, :, None] * directions[2]
                    part.write_site(site, step, x.astype(np.float16))
                part.write_x0_hat(step, rng.standard_normal((8, 4, *GRID)).astype(np.float16))
                part.write_x_t(step, rng.standard_normal((8, 4, *GRID)).astype(np.float16))
            part.write_condition(rng.integers(0, 2, size=(8, 1, 1, GRID[1], GRID[2])).astype(np.float16))
            part.finish(np.zeros((8, 4, *GRID), np.float16), [{"task": "synthetic"}] * 8)
    value[rng.random(value.shape) < 0.1] = np.nan  # tokens without a value: the budget picks labelled ones
    return cls, value


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget")
    cls, value = _store(folder / "s.h5")
    np.save(folder / "cls.npy", cls.astype(np.int64))  # integers: classes; floats: regression
    np.save(folder / "value.npy", value)
    with ActivationStore(folder / "s.h5") as store:
        labels = {
            "cls": labels_from_array(store, "cls", cls.astype(np.int64)),
            "value": labels_from_array(store, "value", value),
        }
    return folder / "s.h5", labels


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These fits are tiny: on a loaded 2-core machine a second torch thread only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(planted, **kw):
    path, _ = planted
    files = {name: str(path.with_name(f"{name}.npy")) for name in ("cls", "value")}
    kw = {"cs": [0.01, 1.0], **kw}  # two Cs keep the logistic paths short
    return run_probes(path, ProbeConfig(targets=[], labels=files, **kw), progress=False)


@pytest.fixture(scope="module")
def whole(planted):
    return _run(planted)


def test_no_budget_is_the_whole_slab_path(planted, whole, monkeypatch):
    """max_tokens=None never enters the budgeted path and gives the default config's table exactly."""
    default = whole

    def refuse(*args, **kwargs):
        raise AssertionError("the budgeted path ran without a budget")

    monkeypatch.setattr(streaming, "probe_budgeted", refuse)
    assert _run(planted, max_tokens=None).equals(default)


def test_a_budget_of_every_token_reproduces_the_whole_slab_path(planted, whole):
    """Same rows, so classes (logistic, control task, x_t, condition) agree exactly; ridge from Gram
    sums in float64 agrees with the fast path's float32 Grams to rounding. The bootstrap intervals over
    test videos too: the budgeted ridge predicts its test rows as they stream past."""
    budget = _run(planted, max_tokens=N_TOKENS)
    cls = whole["target"] == "cls"
    intervals = ("value_lo", "value_hi", "selectivity_lo", "selectivity_hi")
    assert np.isfinite(budget[list(intervals)].to_numpy()).all()
    for column in ("value", "control", "x_t", "condition", "regularisation", "majority_rate", *intervals):
        assert np.array_equal(whole[cls][column].to_numpy(), budget[cls][column].to_numpy()), column
    for column in ("value", "control", "x_t", "condition", *intervals):
        assert np.abs(whole[~cls][column].to_numpy() - budget[~cls][column].to_numpy()).max() < 1e-4, column
    assert np.array_equal(whole["regularisation"].to_numpy(), budget["regularisation"].to_numpy())


def test_selection_is_reproducible_stratified_and_read_once_per_video(planted, monkeypatch):
    path, labels = planted
    calls = []
    original = streaming.TokenReader.read

    def spy(self, site, step, video, positions):
        calls.append((site, step, video, tuple(positions)))
        return original(self, site, step, video, positions)

    def whole_slab(*args, **kwargs):
        raise AssertionError("a budgeted probe read a whole slab")

    monkeypatch.setattr(streaming.TokenReader, "read", spy)
    monkeypatch.setattr(ActivationStore, "activations", whole_slab)
    first = _run(planted, max_tokens=16)
    assert _run(planted, max_tokens=16).equals(first)  # reproducible run to run
    per_video: dict[int, set] = {}
    for _, _, video, positions in calls:
        per_video.setdefault(video, set()).add(positions)
        assert len(positions) <= 2 * 16  # the union of two targets' budgets, never the whole video
    assert all(len(p) == 1 for p in per_video.values())  # the same tokens at every (site, step), both runs
    assert len(calls) == 2 * len(SITES) * 2 * N_VIDEOS  # each (site, step) of each video read once per run

    videos = list(range(N_VIDEOS))
    picks = token_selection(labels["cls"], videos, N_TOKENS, 16, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(picks, token_selection(labels["cls"], videos, N_TOKENS, 16, 0)))
    assert any(not np.array_equal(a, b) for a, b in zip(picks, token_selection(labels["cls"], videos, N_TOKENS, 16, 1)))
    for v, p in zip(videos, picks):
        assert len(p) == 16 and np.all(np.diff(p) > 0)
        present = np.unique(labels["cls"].values[v])
        assert set(np.unique(labels["cls"].values[v][p])) == set(present)  # rare classes keep a row
    value_picks = token_selection(labels["value"], videos, N_TOKENS, 16, seed=0)
    assert all(np.isfinite(labels["value"].values[v][p]).all() for v, p in zip(videos, value_picks))


def test_stratified_sample_keeps_class_proportions():
    rng = np.random.default_rng(3)
    values = rng.permutation(np.repeat([0.0, 1.0, 2.0, np.nan], [9000, 900, 12, 88])).astype(float)
    picked = values[select_tokens(values, CLASS, 500, rng)]
    counts = np.array([(picked == c).sum() for c in (0, 1, 2)])
    assert counts.sum() == 500 and np.isfinite(picked).all()
    assert np.abs(counts - 500 * np.array([9000, 900, 12]) / 9912).max() <= 1  # proportional, to a row
    assert list(class_quota(np.array([990, 9, 1]), 100)) == [98, 1, 1]  # the rarest class keeps a row
    assert list(class_quota(np.array([5, 3, 2]), 2)) == [1, 1, 0]  # no room for every class
    assert class_quota(np.array([1, 1, 1]), 2).sum() == 2
    assert len(select_tokens(values, CLASS, 20000, rng)) == 9912  # a video under the budget gives all


def test_gram_ridge_equals_a_direct_ridge_on_the_same_rows():
    rng = np.random.default_rng(1)
    n, m, d = 1200, 400, 30
    scale, offset = rng.uniform(0.1, 3.0, d), rng.uniform(-100.0, 100.0, d)  # large means: the shift matters
    x = (rng.standard_normal((n + m, d)) * scale + offset).astype(np.float32)
    y = np.stack([x[:, :3] @ [1.0, -2.0, 0.5] + 3 * rng.standard_normal(n + m) + 50, rng.standard_normal(n + m)], 1)
    folds = (np.arange(n) // 40) % 3
    alphas = (0.1, 1.0, 10.0, 100.0, 1000.0)
    gram = GramRidge(3)
    for start in range(0, n, 250):  # blocks that cut across folds
        rows = np.arange(start, min(start + 250, n))
        for f in range(3):
            gram.add(x[rows[folds[rows] == f]], y[rows[folds[rows] == f]], f)
    gram.add(x[n:], y[n:], 3)
    score, alpha = gram.solve(alphas)
    xt = torch.from_numpy(x)[None]
    heads = [Head(y[:n, h], y[n:, h]) for h in range(2)]
    fast = fit_fast(xt[:, :n], xt[:, n:], heads, "regression", folds, alphas=alphas)
    assert np.array_equal(alpha, fast.regularisation[0]) and np.abs(score - fast.scores[0]).max() < 1e-6
    # and against the closed form on the standardised rows, in float64
    x64 = x.astype(np.float64)
    mean, std = x64[:n].mean(0), x64[:n].std(0)
    z = np.hstack([(x64 - mean) / std, np.ones((n + m, 1))])
    penalty = np.diag(np.r_[np.ones(d), 0.0])
    w = np.linalg.solve(z[:n].T @ z[:n] + alpha[0] * penalty, z[:n].T @ y[:n, 0])
    residual = y[n:, 0] - z[n:] @ w
    r2 = 1 - (residual**2).sum() / ((y[n:, 0] - y[n:, 0].mean()) ** 2).sum()
    assert abs(score[0] - r2) < 1e-9


def test_a_budgeted_probe_finds_the_planted_features(planted):
    table = _run(planted, max_tokens=12)
    for target, floor, selective in (("cls", 0.9, 0.15), ("value", 0.6, 0.5)):
        rows = table[table["target"] == target].set_index("site")
        assert (rows.loc["blocks.1", "value"] > floor).all(), target
        assert (rows.loc["blocks.1", "selectivity"] > selective).all(), target
        assert (rows.loc["blocks.0", "selectivity"].abs() < 0.2).all(), target
        assert np.isfinite(rows["x_t"]).all() and np.isfinite(rows["condition"]).all()  # controls measured
    cls = table[table["target"] == "cls"]
    assert (cls["value"] > cls["majority_rate"] + 0.2)[cls["site"] == "blocks.1"].all()


def test_reads_are_bounded_by_the_window_and_blocks_by_their_rows(planted, monkeypatch):
    """Peak memory, indirectly: no read holds more than a window of one video's tokens, and a block
    of videos holds about BLOCK_ROWS selected rows (one video more at most)."""
    sizes = []

    class Proxy:
        def __init__(self, ds):
            self.ds, self.shape = ds, ds.shape

        def __getitem__(self, key):
            sizes.append(key[2].stop - key[2].start)
            return self.ds[key]

    original = streaming.TokenReader._dataset
    monkeypatch.setattr(streaming.TokenReader, "_dataset", lambda self, site: Proxy(original(self, site)))
    monkeypatch.setattr(streaming, "WINDOW_TOKENS", 40)
    monkeypatch.setattr(streaming, "BLOCK_ROWS", 50)
    blocks = []
    original_blocks = streaming._blocks

    def record(sizes, limit):
        blocks.extend(original_blocks(sizes, limit))
        return blocks

    monkeypatch.setattr(streaming, "_blocks", record)
    _run(planted, max_tokens=N_TOKENS, layers="1", steps="1")
    assert sizes and max(sizes) <= 40
    assert len(blocks) == N_VIDEOS  # 128 labelled tokens per video: one video per block of 50 rows
    assert original_blocks([20, 20, 20, 60, 5], 50) == [[0, 1], [2], [3], [4]]


@pytest.mark.parametrize("bad", [0, -3, 2.5, "100", True])
def test_bad_budgets_are_refused_before_any_compute(planted, monkeypatch, bad):
    import probes.run as run

    def no_compute(*args, **kwargs):
        raise AssertionError("labels were loaded before the config was checked")

    monkeypatch.setattr(run, "load_targets", no_compute)
    with pytest.raises(ValueError, match="max_tokens must be a positive whole number"):
        _run(planted, max_tokens=bad)


def test_the_budget_is_recorded_with_the_run(planted, tmp_path):
    cfg = ProbeConfig(targets=[], max_tokens=12, name="budget")
    assert ProbeConfig.from_json(cfg.to_json()) == cfg and json.loads(cfg.to_json())["max_tokens"] == 12
    table = _run(planted, max_tokens=12, layers="1", steps="1")
    paths = save_results(table, planted[0], cfg, tmp_path)
    assert json.loads(paths["config"].read_text())["max_tokens"] == 12


def test_per_video_targets_average_their_budgeted_tokens(planted):
    path, labels = planted
    with ActivationStore(path) as store:
        per_video = Labels("mean_cls", "regression", np.nanmean(labels["cls"].values, 1), "test")
        assert store.n_videos == len(per_video.values)
    files = {"value": str(path.with_name("value.npy"))}
    cfg = ProbeConfig(targets=[], labels=files, max_tokens=32, layers="1", steps="1")
    table = run_probes(path, cfg, progress=False, labels={"m": per_video})
    mean = table[table["target"] == "mean_cls"]
    assert len(mean) == 1 and np.isfinite(mean[["value", "control", "x_t", "condition"]].to_numpy()).all()
