"""SAE features against per-token truth (issue 31, items 3 and 7): the latent chosen per target is the one a
brute-force computation on the training videos picks, its held-out score is scikit-learn's AUROC of that latent,
the control task is the probes' own control labels, a planted label is found by the latent that defines it, and
the probe beside each feature is the probes' own table."""

import json

import numpy as np
import pytest
import torch

from activations import ActivationStore
from interp.experiments.trace import TraceConfig, run_trace


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-maze store (2 held out) and its SAEs, trained through `interp sae train`."""
    import sys

    from interp import cli

    folder = tmp_path_factory.mktemp("features")
    store = run_trace(TraceConfig(n=6, steps="0,9", layers="3", num_steps=10, dtype="float32"), folder / "t.h5",
                      progress=False)  # fmt: skip
    argv = sys.argv
    sys.argv = ["interp", "sae", "train", str(store), "--training-tokens", "16384", "--batch-size", "256",
                "--buffer-tokens", "1024", "--k", "8", "--test-fraction", "0.34", "--no-splice", "--out",
                str(folder / "saes")]  # fmt: skip
    try:
        cli.main()
    except SystemExit as exit:
        assert exit.code in (0, None)
    finally:
        sys.argv = argv
    return store, folder / "saes"


def _latents(store_path, sae_folder, row, videos):
    from interp.features.saes import load_sae

    sae = load_sae(sae_folder / row["path"])
    with ActivationStore(store_path) as s:
        x = s.activations(row["site"], videos=videos, steps=[row["step"]])[:, 0]
    with torch.no_grad():
        return sae.encode(torch.from_numpy(x.reshape(-1, x.shape[-1]))).double().numpy(), sae


def test_the_chosen_feature_and_its_scores_are_the_brute_force_ones(trained):
    from sklearn.metrics import roc_auc_score

    from interp.experiments.sae_features import SAEFeaturesConfig, run_sae_features
    from interp.tasks.maze_labels import maze_labels
    from probes.config import Split
    from probes.features import CONDITION_TYPES, token_types
    from probes.targets import prepare_target

    store, saes = trained
    record = json.loads((saes / "saes.json").read_text())
    train, test = record["train_videos"], record["test_videos"]
    assert len(test) == 2 and len(train) == 4
    result = run_sae_features(SAEFeaturesConfig(saes=str(saes), targets=["on_path", "dist_to_goal"]), progress=False)
    assert {(r["target"], r["step"]) for r in result.rows} == {(t, s) for t in ("on_path", "dist_to_goal")
                                                                 for s in (0, 9)}  # fmt: skip
    with ActivationStore(store) as s:
        labels = [maze_labels(s, "on_path"), maze_labels(s, "dist_to_goal")]
        types = token_types(s, train + test, None, CONDITION_TYPES, 0)
    targets = [prepare_target(lab, Split(train, test, {v: 0 for v in train}), types, i) for i, lab in enumerate(labels)]
    for sae_row in record["rows"]:
        z_train, _ = _latents(store, saes, sae_row, train)
        z_test, _ = _latents(store, saes, sae_row, test)
        for t in targets:
            row = next(r for r in result.rows if r["target"] == t.labels.name and r["step"] == sae_row["step"])
            heads = ((t.head, "value", "feature"), (t.control, "control", "control_feature"))
            for head, value_key, feature_key in heads:
                y_train, y_test = head.y_train, head.y_test  # rows_train/test follow the videos' order: train first
                zt, zs = z_train[t.rows_train], z_test[t.rows_test - len(train) * z_train.shape[0] // len(train)]
                with np.errstate(invalid="ignore", divide="ignore"):
                    if t.labels.kind == "class":
                        r = np.array([[np.corrcoef(zt[:, j], y_train == c)[0, 1] for j in range(zt.shape[1])]
                                      for c in np.unique(y_train)])  # fmt: skip
                    else:
                        r = np.array([[np.corrcoef(zt[:, j], y_train)[0, 1] for j in range(zt.shape[1])]])
                r = np.nan_to_num(r)
                c, j = np.unravel_index(np.argmax(r if t.labels.kind == "class" else np.abs(r)), r.shape)
                assert row[feature_key] == j, (t.labels.name, value_key)
                if t.labels.kind == "class":
                    expected = roc_auc_score(y_test == np.unique(y_train)[c], zs[:, j])
                else:
                    expected = np.corrcoef(zs[:, j], y_test)[0, 1] * np.sign(r[c, j])
                assert row[value_key] == pytest.approx(expected, abs=1e-9)
            assert row["value_lo"] <= row["value"] <= row["value_hi"] or not np.isfinite(row["value_lo"])
            assert row["selectivity"] == pytest.approx(row["value"] - row["control"])


def test_a_planted_label_is_found_by_its_latent_and_the_probe_sits_beside(trained, tmp_path, run_cli):
    """A label defined as 'latent j fires' on every token is found: AUROC 1 on held-out videos, its control near
    chance; the probe columns are the probes' own table of the same slab."""
    from interp.experiments.probe import task_providers
    from probes.run import ProbeConfig, run_probes

    store, saes = trained
    record = json.loads((saes / "saes.json").read_text())
    row = next(r for r in record["rows"] if r["step"] == 9)
    with ActivationStore(store) as s:
        n_videos, n_tokens = s.n_videos, s.layout.n_tokens
    z, _ = _latents(store, saes, row, list(range(n_videos)))
    rates = (z > 0).mean(0)
    j = int(np.argmin(np.abs(rates - 0.3)))  # a latent firing on about a third of the tokens
    np.save(tmp_path / "planted.npy", (z[:, j] > 0).reshape(n_videos, n_tokens).astype(np.int64))
    code, out, err = run_cli("sae", "features", saes, "--labels", f"planted={tmp_path / 'planted.npy'}",
                             "--target", "on_path", "--out", tmp_path / "f")  # fmt: skip
    assert code == 0, err
    rows = json.loads((tmp_path / "f" / "features.json").read_text())["rows"]
    planted = next(r for r in rows if r["target"] == "planted" and r["step"] == 9)
    assert planted["value"] == pytest.approx(1.0) and planted["marks"] == 1.0
    assert (z[:, planted["feature"]] > 0).tolist() == (z[:, j] > 0).tolist()  # j, or a latent firing on the same
    assert abs(planted["control"] - 0.5) < 0.25 and planted["selectivity"] > 0.25
    table = run_probes(store, ProbeConfig(targets=["on_path"], labels={"planted": str(tmp_path / "planted.npy")},
                                          steps="0,9", layers="3", test_fraction=0.34), progress=False,
                       providers=task_providers(store), write=False)  # fmt: skip
    for r in rows:
        probe = table[(table.target == r["target"]) & (table.step == r["step"])].iloc[0]
        assert (r["probe"], r["probe_control"]) == (pytest.approx(probe.value), pytest.approx(probe.control))
    manifest = json.loads((tmp_path / "f" / "run.json").read_text())
    assert manifest["claims"][0]["claim"].startswith("single SAE features track the answer (on_path)")
    ranked = next(t for t in manifest["tables"] if t["title"].startswith("features ranked by splice-in importance"))
    importance = [r["latent distance"] for r in ranked["rows"]]
    assert importance == sorted(importance, reverse=True) and {r["target"] for r in ranked["rows"]} <= {"planted",
                                                                                                         "on_path"}
    assert all((tmp_path / "f" / f"dashboard_{r['rank']:02d}_{r['target']}.png").stat().st_size for r in ranked["rows"])
    assert manifest["claims"][0]["verdict"] in ("shows", "does not show", "cannot tell")


def test_bad_inputs_are_one_line(trained, tmp_path, run_cli):
    store, saes = trained
    code, _, err = run_cli("sae", "features", tmp_path, "--out", tmp_path / "f")
    assert code == 2 and "not an `interp sae train` output folder" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("sae", "features", saes, "--target", "solved", "--out", tmp_path / "g")
    assert code == 2 and "one label per video" in err, err
    code, _, err = run_cli("sae", "features", saes, "--target", "nope", "--out", tmp_path / "h")
    assert code == 2 and "unknown target 'nope'" in err, err


def test_pooled_auroc_sums_equal_scikit_learn():
    """The bootstrap's pooled AUROC (per-video sums at rank levels) is the exact AUROC with every video once."""
    from sklearn.metrics import roc_auc_score

    from interp.features.matching import _Choice, _pooled, _video_sums

    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=500), 1)  # ties
    labels = (values + rng.normal(size=500) > 0.3).astype(float)
    video = rng.integers(0, 5, size=500)
    choice = _Choice(0, 1.0, 0.5)
    sums = _video_sums(values, labels, video, 5, choice)
    assert _pooled(sums.sum(0)[None], choice)[0] == pytest.approx(roc_auc_score(labels == 1.0, values))
    regression = _Choice(0, None, -0.5)
    sums = _video_sums(values, labels + values, video, 5, regression)
    assert _pooled(sums.sum(0)[None], regression)[0] == pytest.approx(-np.corrcoef(values, labels + values)[0, 1])


def test_a_feature_edit_is_the_sae_space_edit_on_its_tokens_only(trained):
    """ablate, clamp and add change the site's output by exactly decode(z') - decode(z) (the SAE's error term
    kept) on the chosen tokens and nowhere else; a random direction of the decoder row's norm gets the same
    change per token."""
    from interp.api import feature_edit, frame_tokens, maze_inputs, open_model, run
    from interp.features.saes import load_sae

    store, saes = trained
    record = json.loads((saes / "saes.json").read_text())
    row = next(r for r in record["rows"] if r["step"] == 9)
    sae, site = load_sae(saes / row["path"]), row["site"]
    model = open_model("testbed")
    noise, cond, _ = maze_inputs(model, n=2, first_seed=40)
    x = run(model, noise, cond, sites=[site], num_steps=10, steps=[9]).activations(site)[0]
    hidden = x.shape[-1]
    with torch.no_grad():
        z = sae.encode(x.reshape(-1, hidden))
    j = int((z != 0).sum(0).argmax())  # the latent firing most here
    tokens = frame_tokens(model, noise, [1, 2])
    off = [t for t in range(x.shape[1]) if t not in tokens]
    changes = {}
    for mode, value, new in (("ablate", 1.0, lambda zj: 0 * zj), ("clamp", 3.0, lambda zj: 0 * zj + 3.0),
                             ("add", 2.0, lambda zj: zj + 2.0)):  # fmt: skip
        edit = feature_edit(sae, site, j, mode, value, steps=[9], tokens=tokens)
        y = run(model, noise, cond, sites=[site], num_steps=10, steps=[9], interventions=[edit]).activations(site)[0]
        z2 = z.clone()
        z2[:, j] = new(z[:, j])
        with torch.no_grad():
            expected = (x.reshape(-1, hidden) - sae.decode(z) + sae.decode(z2)).reshape(x.shape)
        assert torch.allclose(y[:, tokens], expected[:, tokens], atol=1e-4), mode
        assert torch.equal(y[:, off], x[:, off]), mode
        changes[mode] = (y - x).norm(dim=-1)
    direction = torch.randn(hidden, generator=torch.Generator().manual_seed(1))
    direction *= sae.W_dec[j].norm().item() / direction.norm()
    edit = feature_edit(sae, site, j, "clamp", 3.0, steps=[9], tokens=tokens, direction=direction)
    y = run(model, noise, cond, sites=[site], num_steps=10, steps=[9], interventions=[edit]).activations(site)[0]
    assert torch.allclose((y - x).norm(dim=-1), changes["clamp"], atol=1e-4)
    assert not torch.allclose(y[:, tokens], x[:, tokens])
    with pytest.raises(ValueError, match="not a latent of this SAE"):
        feature_edit(sae, site, int(sae.cfg.d_sae), "clamp")
    with pytest.raises(ValueError, match="direction must have the SAE's input width"):
        feature_edit(sae, site, j, "clamp", direction=np.ones(hidden + 1))


def test_steer_sweeps_strength_beside_random_directions(trained, tmp_path, run_cli):
    """`interp sae steer`: strength 0 of an ablation changes nothing (feature and random directions alike); full
    ablation of a live latent moves the final latent; the summary sets the feature beside the random ones."""
    store, saes = trained
    record = json.loads((saes / "saes.json").read_text())
    row = next(r for r in record["rows"] if r["step"] == 9)
    z, _ = _latents(store, saes, row, record["test_videos"])
    j = int((z != 0).sum(0).argmax())
    args = ["sae", "steer", saes, "--layer", 3, "--step", 9, "--feature", j, "--mode", "ablate", "--strength", 0,
            "--strength", 1, "--n-random", 2]  # fmt: skip
    code, out, err = run_cli(*args, "--out", tmp_path / "s")
    assert code == 0, err
    result = json.loads((tmp_path / "s" / "steer.json").read_text())
    assert len(result["rows"]) == 2 * 3 and 0 < result["firing"] <= 1
    for r in result["rows"]:
        assert (r["latent distance"] == 0.0) == (r["strength"] == 0.0), r
    expected = {(s, loss) for s in (0.0, 1.0) for loss in ("latent distance", "failure rate")}
    assert {(s["strength"], s["loss"]) for s in result["summary"]} == expected
    assert "random directions of the same norm" in out
    code, _, err = run_cli(*args[:4], 5, "--step", 9, "--feature", j, "--out", tmp_path / "t")
    assert code == 2 and "has no SAE at layer 5, step 9" in err
    code, _, err = run_cli("sae", "steer", saes, "--layer", 3, "--step", 9, "--feature", 10**6, "--out", tmp_path / "u")
    assert code == 2 and "latents" in err and len(err.strip().splitlines()) == 1


def test_a_dashboard_is_the_latents_own_numbers(trained):
    """The profile is the latent's mean activation per latent frame at each stored step, the top tokens its
    largest held-out activations at its step, and ablating a latent that never fires there changes nothing
    (feature and random directions alike)."""
    from interp.features.dashboards import feature_dashboard, splice_importance
    from interp.features.splice import splice_runs

    store, saes = trained
    record = json.loads((saes / "saes.json").read_text())
    row = next(r for r in record["rows"] if r["step"] == 9)
    test = record["test_videos"]
    z, sae = _latents(store, saes, row, test)
    j = int((z != 0).sum(0).argmax())
    with ActivationStore(store) as s:
        board = feature_dashboard(s, lambda step: sae, row["site"], 9, j, test, [9])
        frames = s.layout.token_grid[0]
        for i, step in enumerate(s.steps):
            zs, _ = _latents(store, saes, {**row, "step": step}, test)
            expected = zs[:, j].reshape(len(test), frames, -1).mean((0, 2))
            assert np.allclose(board.profile[i], expected, atol=1e-5)
        assert board.off_distribution == [0]
        values = z[:, j].reshape(len(test), -1)
        assert [v for *_, v in board.top] == pytest.approx(sorted(values.reshape(-1), reverse=True)[:6])
        video, token, value = board.top[0]
        assert values[test.index(video), token] == pytest.approx(value)
        dead = int(np.flatnonzero((z != 0).sum(0) == 0)[0])
        runs = splice_runs(s, test)
    importance = splice_importance(runs, sae, row["site"], 9, dead)
    assert importance["latent distance"] == 0.0 and importance["latent distance random"] == 0.0
    live = splice_importance(runs, sae, row["site"], 9, j)
    assert live["latent distance"] > 0


def test_a_step_shared_sae_is_read_and_steered_at_its_own_steps(tmp_path, run_cli):
    """A step-shared SAE of one step reads in `sae features`; `sae steer --at-steps` reads it at each edited step
    with that step's mean, and refuses a step it was not trained on."""
    from interp.experiments.trace import TraceConfig, run_trace

    store = run_trace(TraceConfig(n=6, steps="0,9", layers="3", num_steps=10, dtype="float32"), tmp_path / "t.h5",
                      progress=False)  # fmt: skip
    for steps, name in (("9", "one"), ("0,9", "two")):
        code, _, err = run_cli("sae", "train", store, "--steps", steps, "--layers", 3, "--shared", "--training-tokens",
                               4096, "--batch-size", 256, "--buffer-tokens", 1024, "--k", 8, "--test-fraction", 0.34,
                               "--no-splice", "--out", tmp_path / name)  # fmt: skip
        assert code == 0, err
    code, _, err = run_cli("sae", "features", tmp_path / "one", "--target", "on_path", "--out", tmp_path / "f")
    assert code == 0, err
    common = ["sae", "steer", tmp_path / "two", "--layer", 3, "--step", 9, "--feature", 0, "--mode", "ablate",
              "--strength", 1, "--n-random", 1]  # fmt: skip
    code, _, err = run_cli(*common, "--at-steps", "0,9", "--out", tmp_path / "s")
    assert code == 0, err
    code, _, err = run_cli(*common, "--at-steps", "5", "--out", tmp_path / "s5")
    assert code == 2 and "shared by steps [0, 9]" in err, err
