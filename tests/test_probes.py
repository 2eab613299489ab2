"""Probes: planted signals are found where they are and nowhere else, with honest controls."""

import json

import numpy as np
import pytest
import torch

from activations import StoreLayout, StoreWriter
from activations.results import read_table
from probes.fit import Head, fit_fast
from probes.labels import labels_from_array
from probes.reference import fit_sklearn
from probes.run import ProbeConfig, read_results, run_probes, save_results, split_videos

GRID = (2, 4, 4)
HIDDEN = 16
LAYERS = 6
FIRST_ENCODING_LAYER = 3


def _synthetic_store(path, n_videos=40, seed=0):
    """Random block outputs; from FIRST_ENCODING_LAYER on, a binary token label is added along one direction."""
    rng = np.random.default_rng(seed)
    n_tokens = int(np.prod(GRID))
    labels = rng.integers(0, 2, size=(n_videos, n_tokens))
    direction = rng.standard_normal(HIDDEN)
    direction /= np.linalg.norm(direction)
    sites = [f"blocks.{k}" for k in range(LAYERS)]
    layout = StoreLayout(
        model="synthetic",
        adapter="none",
        num_steps=2,
        steps=[0, 1],
        timesteps=[1000.0, 500.0],
        sigmas=[1.0, 0.5, 0.0],
        sites=sites,
        hidden={s: HIDDEN for s in sites},
        token_grid=GRID,
        pooling=json.dumps({"kind": "none", "factor": 1, "count": 0, "seed": 0}),
        n_tokens=n_tokens,
        latent_shape=(4, *GRID),
        n_videos=n_videos,
        video_keys=[f"v{i}" for i in range(n_videos)],
        dtype="float32",
    )
    with StoreWriter(path, layout) as writer:
        for start in range(0, n_videos, 10):
            videos = list(range(start, start + 10))
            part = writer.begin_part(videos)
            for step in (0, 1):
                for k, site in enumerate(sites):
                    x = rng.standard_normal((10, n_tokens, HIDDEN))
                    if k >= FIRST_ENCODING_LAYER:
                        x += 2.0 * (2 * labels[videos, :, None] - 1) * direction
                    part.write_site(site, step, x.astype(np.float32))
                part.write_x0_hat(step, rng.standard_normal((10, 4, *GRID)).astype(np.float32))
                part.write_x_t(step, rng.standard_normal((10, 4, *GRID)).astype(np.float32))
            part.finish(np.zeros((10, 4, *GRID), np.float32), [{"task": "synthetic"}] * 10)
    return labels


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    labels = _synthetic_store(folder / "s.h5")
    np.save(folder / "planted.npy", labels)
    return folder / "s.h5", folder / "planted.npy", labels


@pytest.mark.parametrize("method", ["fast", "sklearn"])
def test_planted_signal_is_decodable_from_its_layer_on_and_nowhere_before(synthetic, method):
    store, label_file, _ = synthetic
    cfg = ProbeConfig(targets=[], labels={"planted": str(label_file)}, method=method)
    table = run_probes(store, cfg, progress=False)
    assert len(table) == LAYERS * 2
    before = table[table["layer"] < FIRST_ENCODING_LAYER]
    after = table[table["layer"] >= FIRST_ENCODING_LAYER]
    chance = table["majority_rate"].iloc[0]
    assert 0.4 < chance < 0.6
    assert (after["value"] > 0.95).all() and (after["selectivity"] > 0.4).all()
    assert (before["value"] < chance + 0.05).all() and (before["selectivity"].abs() < 0.06).all()
    # The control task (random label per token position) stays near chance everywhere, and so do
    # the input-only controls (x_t here is noise unrelated to the label).
    assert (table["control"] < 0.58).all()
    assert (table["x_t"] < 0.58).all()
    assert table["condition"].isna().all()  # this store keeps no conditioning latent
    # Bootstrap intervals over the test videos, from either method's test predictions, hold the score.
    assert (table["value_lo"] <= table["value"] + 1e-12).all() and (table["value"] <= table["value_hi"] + 1e-12).all()
    assert (after["selectivity_lo"] > 0.2).all() and (before["selectivity_lo"] < 0.02).all()
    assert (before["selectivity_lo"] < 0).mean() > 0.5 < (before["selectivity_hi"] > 0).mean()  # mostly around 0


def test_fast_path_agrees_with_scikit_learn_within_one_point(synthetic):
    store, label_file, _ = synthetic
    tables = {
        m: run_probes(store, ProbeConfig(targets=[], labels={"planted": str(label_file)}, method=m), progress=False)
        for m in ("fast", "sklearn")
    }
    for column in ("value", "control", "x_t"):
        assert np.abs(tables["fast"][column] - tables["sklearn"][column]).max() <= 0.01, column


def test_fast_path_agrees_on_multiclass_and_ridge():
    rng = np.random.default_rng(1)
    n, d = 900, 12
    x = rng.standard_normal((2, n, d)).astype(np.float32)
    latent = x[:, :, 0] + 0.5 * x[:, :, 1]
    classes = np.digitize(latent[0], [-1.0, 0.0, 1.0]).astype(float)  # ordered bands: needs multinomial
    value = latent[1] + 0.3 * rng.standard_normal(n)
    train, test = np.arange(n) < 600, np.arange(n) >= 600
    folds = (np.arange(600) // 50) % 3
    xt = torch.from_numpy(x)
    fast_c = fit_fast(xt[:, train], xt[:, test], [Head(classes[train], classes[test])], "class", folds)
    fast_r = fit_fast(xt[:, train], xt[:, test], [Head(value[train], value[test])], "regression", folds)
    ref_c = fit_sklearn(x[0][train], x[0][test], Head(classes[train], classes[test]), "class", folds)
    ref_r = fit_sklearn(x[1][train], x[1][test], Head(value[train], value[test]), "regression", folds)
    assert ref_c[0] > 0.85 and abs(fast_c.scores[0, 0] - ref_c[0]) <= 0.01
    assert ref_r[0] > 0.8 and abs(fast_r.scores[1, 0] - ref_r[0]) < 1e-6 and fast_r.regularisation[1, 0] == ref_r[1]


def test_splits_never_share_a_video():
    videos = list(range(37))
    split = split_videos(videos, 0.25, 3, seed=5)
    assert not set(split.train) & set(split.test)
    assert sorted(split.train + split.test) == videos
    assert set(split.fold) == set(split.train) and set(split.fold.values()) == {0, 1, 2}
    with pytest.raises(ValueError, match="fewer than the 3 folds"):
        split_videos(list(range(3)), 0.5, 3, seed=0)


def test_rows_of_one_video_stay_in_one_fold(synthetic, monkeypatch):
    """Every training row's fold is its video's fold: no token of a video is on two sides."""
    import probes.run as run

    seen = {}
    original = run.prepare_target

    def spy(labels, split, types, seed):
        target = original(labels, split, types, seed)
        n_tok = labels.values.shape[1]
        for row, fold in zip(target.rows_train, target.folds):
            video = split.train[row // n_tok]
            assert seen.setdefault(video, fold) == fold == split.fold[video]
        assert (target.rows_test >= len(split.train) * n_tok).all()
        return target

    monkeypatch.setattr(run, "prepare_target", spy)
    store, label_file, _ = synthetic
    run_probes(store, ProbeConfig(targets=[], labels={"planted": str(label_file)}, layers="0", steps="0"), False)
    assert len(seen) == 30


def test_label_arrays_of_the_wrong_shape_are_refused(synthetic, tmp_path):
    store, _, labels = synthetic
    from activations import ActivationStore

    with ActivationStore(store) as st:
        with pytest.raises(ValueError, match=r"labels 'bad' have shape \(40, 31\); this store needs one of"):
            labels_from_array(st, "bad", labels[:, :31])
        with pytest.raises(ValueError, match="must be numbers"):
            labels_from_array(st, "text", np.array(["a"] * 40))
        ok = labels_from_array(st, "grid", labels.reshape(40, *GRID).astype(bool))
        assert ok.kind == "class" and ok.values.shape == (40, 32)
    np.save(tmp_path / "short.npy", labels[:39])
    with pytest.raises(ValueError, match=r"\(39, 32\)"):
        run_probes(store, ProbeConfig(targets=[], labels={"short": str(tmp_path / "short.npy")}), progress=False)
    with pytest.raises(ValueError, match="layer 9 is not in the store|out of range"):
        run_probes(store, ProbeConfig(targets=[], labels={"x": str(tmp_path / "short.npy")}, layers="9"), False)


def test_probes_read_one_slab_at_a_time(synthetic, monkeypatch):
    """Peak memory does not grow with the store: every read is one (site, step) slab."""
    from activations import ActivationStore

    reads = []
    original = ActivationStore.activations

    def spy(self, site, videos=None, steps=None, frames=None, as_torch=False):
        out = original(self, site, videos, steps, frames, as_torch)
        reads.append(out.shape)
        return out

    monkeypatch.setattr(ActivationStore, "activations", spy)
    store, label_file, _ = synthetic
    run_probes(store, ProbeConfig(targets=[], labels={"p": str(label_file)}, group=4), progress=False)
    assert len(reads) == LAYERS * 2 and all(shape[1] == 1 for shape in reads)


def test_results_are_saved_as_csv_and_inside_the_store(synthetic, tmp_path):
    store, label_file, _ = synthetic
    cfg = ProbeConfig(targets=[], labels={"planted": str(label_file)}, layers="2-3", steps="1", name="t1")
    table = run_probes(store, cfg, progress=False)
    paths = save_results(table, store, cfg, tmp_path)
    assert paths["table"].read_text().splitlines()[0].startswith("target,kind,site,layer,step")
    back = read_results(store, "t1")
    assert list(back["layer"]) == [2, 3] and np.allclose(back["value"], table["value"])
    _, config = read_table(store, "probes", "t1")
    assert config["config"]["layers"] == "2-3"


@pytest.fixture(scope="module")
def testbed_store(tmp_path_factory):
    """The shipped testbed traced on 16 held-out mazes, 4 of 20 steps, 3 layers."""
    from interp.experiments.trace import TraceConfig, run_trace

    folder = tmp_path_factory.mktemp("testbed")
    cfg = TraceConfig(n=16, steps="0,10,19", layers="0,4,7")
    return run_trace(cfg, folder / "t.h5", progress=False)


def test_probe_cli_on_the_testbed_writes_table_figures_and_store_table(testbed_store, tmp_path, run_cli):
    out = tmp_path / "probes"
    code, stdout, stderr = run_cli(
        "probe", testbed_store, "--target", "on_path", "--target", "dist_to_goal", "--out", out, "--folds", "2"
    )
    assert code == 0, stderr
    assert "on_path: best selectivity" in stdout and "dist_to_goal: best selectivity" in stdout
    for name in ("probes.csv", "probes.config.json", "probe_on_path.png", "probe_dist_to_goal.png"):
        assert (out / name).stat().st_size > 0
    table = read_results(testbed_store)
    assert set(table["target"]) == {"on_path", "dist_to_goal"} and len(table) == 2 * 3 * 3
    on_path = table[table["target"] == "on_path"]
    # The testbed keeps its conditioning latent: the input-only control is measured, not NaN.
    assert np.isfinite(on_path["condition"]).all() and np.isfinite(on_path["x_t"]).all()
    assert set(table[table["target"] == "dist_to_goal"]["metric"]) == {"r2"}


def test_probe_cli_refuses_bad_requests_before_fitting(testbed_store, tmp_path, run_cli):
    code, _, err = run_cli("probe", testbed_store, "--target", "colour")
    assert code == 2 and "unknown target 'colour'" in err
    code, _, err = run_cli("probe", testbed_store, "--target", "on_path", "--steps", "5")
    assert code == 2 and "step 5 is not in the store" in err
    code, _, err = run_cli("probe", testbed_store, "--labels", "no-equals-sign")
    assert code == 2 and "NAME=FILE.npy" in err
    code, _, err = run_cli("probe", tmp_path / "missing.h5", "--target", "on_path")
    assert code == 2 and "no activation store" in err


def test_pooled_stores_refuse_token_classes_but_pool_regression_labels(tmp_path):
    from activations import ActivationStore
    from interp.experiments.trace import TraceConfig, run_trace
    from interp.tasks.maze_labels import maze_labels

    path = run_trace(TraceConfig(n=2, steps="0", layers="0", pooling="spatial:2"), tmp_path / "p.h5", progress=False)
    with ActivationStore(path) as store:
        with pytest.raises(ValueError, match="pools tokens"):
            maze_labels(store, "on_path")
        dist = maze_labels(store, "dist_to_goal")
        assert dist.values.shape == (2, 4 * 2 * 2)


def _planted_classes(seed: int, n: int = 600, d: int = 6):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, n, d)) * [1.0, 3.0, 0.1, 1.0, 2.0, 0.5] + 0.4
    sign = (x[0, :, 0] - 0.5 * x[0, :, 1] + 0.5 * rng.standard_normal(n) > 0).astype(float)
    bands = np.digitize(x[1, :, 2] * 10 + x[1, :, 3] + 0.5 * rng.standard_normal(n), [-1.0, 0.5, 2.0]).astype(float)
    return x, [sign, bands]


def test_preconditioner_factors_the_hessian_of_every_column():
    """The solver's preconditioner, a Cholesky factor: of each column's Hessian on every row at the given
    logits (a softmax head's diagonal blocks); where the rows' curvatures are within a factor of 4 (at
    zero, all of them), of the Gram matrix times the mean curvature."""
    from probes.logistic import GRAM_SPREAD, Columns, preconditioner

    x, labels = _planted_classes(3)
    xa = torch.from_numpy(np.concatenate([x, np.ones((2, x.shape[1], 1))], -1))  # the intercept column is last
    cols = Columns.of(labels, torch.device("cpu"))
    assert cols.k >= 4 and cols.softmax_spans == [(1, cols.k)]  # a binary head, then a multiclass one
    penalty = torch.tensor([0.5] * 6 + [0.0], dtype=torch.float64)
    w = torch.from_numpy(np.random.default_rng(0).standard_normal((2, cols.k, 7)) * [[[1.0]], [[0.05]]])
    x_t = xa.transpose(1, 2).contiguous()
    kinds = set()
    for z in (w @ x_t, torch.zeros(2, cols.k, xa.shape[1], dtype=torch.float64)):
        got = preconditioner(x_t, x_t @ xa, z, cols, penalty)
        p = torch.cat([torch.sigmoid(z[:, :1]), torch.softmax(z[:, 1:], 1)], 1)
        for s in range(2):
            for k in range(cols.k):
                curvature = p[s, k] * (1 - p[s, k])
                exact = curvature.max() > GRAM_SPREAD * curvature.min()
                kinds.add(bool(exact))
                weights = curvature if exact else curvature.mean().expand_as(curvature)
                hessian = xa[s].T @ (xa[s] * weights[:, None]) + torch.diag(penalty)
                hessian += (1e-6 * hessian.diagonal().mean() + 1e-12) * torch.eye(7, dtype=hessian.dtype)  # its floor
                assert torch.allclose(got[s, k] @ got[s, k].T, hessian, rtol=1e-9, atol=1e-9), (s, k)
    assert kinds == {True, False}


def _one_slab(seed: int):
    """One standardised slab of both planted signals, 450 training rows in unequal folds (60/150/240)."""
    from probes.fit import _standardise

    x, labels = _planted_classes(seed)
    xs = torch.from_numpy(np.concatenate([x[:1], x[1:]], -1).astype(np.float32))
    xtr, xte, _, _ = _standardise(xs[:, :450], xs[:, 450:])
    folds = np.repeat([0, 1, 2], [60, 150, 240])
    fold = torch.as_tensor(folds)
    masks = torch.stack([fold != f for f in range(3)] + [torch.ones(450, dtype=torch.bool)], 1).float()
    penalty = torch.ones(xtr.shape[-1])
    penalty[-1] = 0  # the intercept
    return xtr, xte, fold, folds, masks, penalty, [y[:450] for y in labels], [y[450:] for y in labels]


def _check_weights(got: np.ndarray, coef: np.ndarray, intercept: np.ndarray, multinomial: bool) -> None:
    if multinomial:  # multinomial intercepts are defined up to a constant
        got[:, -1] -= got[:, -1].mean()
        intercept = intercept - intercept.mean()
    scale = np.abs(coef).max() + 1
    assert np.abs(got[:, :-1] - coef).max() <= 1e-4 * scale
    assert np.abs(got[:, -1] - intercept).max() <= 1e-4 * scale


@pytest.mark.parametrize("c", [1e-2, 1.0, 100.0])
def test_the_solver_reaches_scikit_learns_optimum(c):
    """At one C, the refit weights of a binary and a multinomial head equal scikit-learn's converged
    ``LogisticRegression`` on the same standardised rows."""
    from sklearn.linear_model import LogisticRegression

    from probes.logistic import fit_path

    xtr, xte, fold, _, masks, penalty, y_tr, y_te = _one_slab(7)
    *_, weights = fit_path(xtr, xte, y_tr, y_te, fold, masks, penalty, (c,), 5000, 1e-7, 0)
    for h, y in enumerate(y_tr):
        ref = LogisticRegression(C=c, tol=1e-12, max_iter=100000).fit(xtr[0, :, :-1].double().numpy(), y)
        _check_weights(weights[0, h][[0]] if h == 0 else weights[0, h][1:], ref.coef_, ref.intercept_, h == 1)


def test_the_c_path_equals_scikit_learns_cross_validation():
    """The whole path (weighted Hessians from the previous C, extrapolated starts, C by held-out
    log-loss over unequal folds, the refit): scikit-learn's converged ``LogisticRegressionCV`` picks
    the same C and the same weights, for a binary and a multinomial head fitted together."""
    from sklearn.linear_model import LogisticRegressionCV

    from probes.logistic import fit_path

    xtr, xte, fold, folds, masks, penalty, y_tr, y_te = _one_slab(11)
    cs = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    _, chosen, _, _, weights = fit_path(xtr, xte, y_tr, y_te, fold, masks, penalty, cs, 5000, 1e-7, 0)
    splits = [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(3)]
    for h, y in enumerate(y_tr):
        ref = LogisticRegressionCV(
            Cs=list(cs), cv=splits, l1_ratios=(0.0,), scoring="neg_log_loss", tol=1e-10, max_iter=100000,
            use_legacy_attributes=False,
        ).fit(xtr[0, :, :-1].double().numpy(), y)  # fmt: skip
        assert chosen[0, h] == ref.C_, h
        _check_weights(weights[0, h][[0]] if h == 0 else weights[0, h][1:], ref.coef_, ref.intercept_, h == 1)


def test_a_one_class_head_beside_a_multiclass_one():
    """A head with one class in its training rows has no columns (nothing to fit, no C) and does not
    disturb a multinomial head fitted with it: fitted alone (softmax columns only), the multinomial head
    gets the same score and C."""
    x, labels = _planted_classes(5)
    xt = torch.from_numpy(x[1:].astype(np.float32))
    folds = (np.arange(450) // 50) % 3
    bands = labels[1]
    single = np.zeros_like(bands)
    fast = fit_fast(xt[:, :450], xt[:, 450:], [Head(single[:450], single[450:]), Head(bands[:450], bands[450:])],
                    "class", folds)  # fmt: skip
    ref, c = fit_sklearn(x[1, :450], x[1, 450:], Head(bands[:450], bands[450:]), "class", folds)
    assert fast.scores[0, 0] == 1.0 and np.isnan(fast.regularisation[0, 0])
    assert abs(fast.scores[0, 1] - ref) <= 0.01 and fast.regularisation[0, 1] == pytest.approx(c)
    alone = fit_fast(xt[:, :450], xt[:, 450:], [Head(bands[:450], bands[450:])], "class", folds)
    assert alone.scores[0, 0] == fast.scores[0, 1] and alone.regularisation[0, 0] == fast.regularisation[0, 1]


def test_fast_path_scores_do_not_depend_on_the_group():
    """Each slab stops on its own and leaves the batch: fitted together or alone, the same scores."""
    rng = np.random.default_rng(4)
    s, n, d = 3, 600, 10
    x = rng.standard_normal((s, n, d)).astype(np.float32)
    x[2, :, 0] += 3 * (rng.random(n) > 0.5)
    labels = (x[2, :, 0] > 1.5).astype(float)
    folds = (np.arange(450) // 30) % 3
    xt = torch.from_numpy(x)
    heads = [
        Head(labels[:450], labels[450:]),
        Head((x[0, :450, 1] > 0).astype(float), (x[0, 450:, 1] > 0).astype(float)),
    ]
    together = fit_fast(xt[:, :450], xt[:, 450:], heads, "class", folds)
    alone = [fit_fast(xt[i : i + 1, :450], xt[i : i + 1, 450:], heads, "class", folds) for i in range(s)]
    assert np.abs(together.scores - np.concatenate([a.scores for a in alone])).max() <= 1 / 150
    assert (together.regularisation == np.concatenate([a.regularisation for a in alone])).all()


def test_fast_path_fits_binary_and_multiclass_heads_together():
    rng = np.random.default_rng(5)
    n, d = 900, 8
    x = rng.standard_normal((1, n, d)).astype(np.float32)
    bands = np.digitize(x[0, :, 0] + 0.3 * x[0, :, 1], [-1.0, 0.0, 1.0]).astype(float)
    sign = (x[0, :, 2] - 0.5 * x[0, :, 3] > 0).astype(float)
    folds = (np.arange(600) // 50) % 3
    heads = [Head(sign[:600], sign[600:]), Head(bands[:600], bands[600:]), Head(sign[:600], sign[600:])]
    xt = torch.from_numpy(x)
    fast = fit_fast(xt[:, :600], xt[:, 600:], heads, "class", folds)
    for h, head in enumerate(heads):
        ref, c = fit_sklearn(x[0, :600], x[0, 600:], head, "class", folds)
        assert abs(fast.scores[0, h] - ref) <= 0.01 and fast.regularisation[0, h] == pytest.approx(c), h


def test_probe_config_refuses_bad_stopping_rules(synthetic):
    store, label_file, _ = synthetic
    for bad in ({"tol": 0.0}, {"max_iter": 0}, {"patience": -1}):
        with pytest.raises(ValueError, match="tol must be positive"):
            run_probes(store, ProbeConfig(targets=[], labels={"p": str(label_file)}, **bad), progress=False)


def test_pixel_masks_reach_the_token_grid_with_the_latent_frame_convention():
    from probes.masks import pixel_masks_to_tokens

    masks = np.zeros((1, 9, 32, 32), bool)  # 9 video frames -> 3 latent frames (r = 4), 16 px tokens
    masks[0, 0, :16, :16] = True  # frame 0 alone is token frame 0
    masks[0, 5:9, 16:, 16:] = True  # video frames 5-8 are token frame 2
    tokens = pixel_masks_to_tokens(masks, (3, 2, 2))
    assert tokens.shape == (1, 3, 2, 2)
    assert tokens[0, 0, 0, 0] == 1 and tokens[0, 1].sum() == 0 and tokens[0, 2, 1, 1] == 1
    masks[0, 2, :8, :8] = True  # a quarter of one token in one of token frame 1's four video frames
    assert pixel_masks_to_tokens(masks, (3, 2, 2))[0, 1, 0, 0] == pytest.approx(0.25 / 4)
    assert pixel_masks_to_tokens(masks, (3, 2, 2), threshold=0.5)[0, 1, 0, 0] == 0
    maze = np.zeros((1, 4, 9, 9), bool)
    maze[0, :, 3, 5] = True  # the renderer's pixel of cell (1, 2)
    assert np.argwhere(pixel_masks_to_tokens(maze, (4, 4, 4))[0, 0]).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="do not map"):
        pixel_masks_to_tokens(np.zeros((1, 8, 32, 32)), (3, 2, 2))


def test_intervals_resample_the_test_videos_that_hold_rows():
    """A test video without rows (no label there) is not drawn: ids with gaps give the same intervals."""
    from probes.intervals import bootstrap_scores

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40).astype(float)
    pred = np.where(rng.random(40) < 0.8, y, 1 - y)
    video = np.repeat(np.arange(4), 10)
    gaps = np.array([1, 3, 4, 7])[video]  # videos 0, 2, 5, 6 hold no rows
    assert np.array_equal(bootstrap_scores([pred], [y], video, "class"), bootstrap_scores([pred], [y], gaps, "class"))
