"""The model organism (testbed-mixed) and the experiments built for it: early-step selection, the
exploration detectors on its own trajectories, its accuracy floor."""

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from interp.analysis.chain_of_steps import analyse_trajectory
from interp.execution.loop import initial_noise, sample
from interp.experiments.early_select import EarlySelectConfig, run_early_select, select_early
from interp.experiments.exploration import ExplorationConfig, run_exploration, trajectories
from interp.sources import load_testbed
from interp.tasks import maze as M
from interp.tasks.maze_scoring import connectivity_score, verifier_score

FIXTURE = Path(__file__).parent / "data" / "organism_x0.npz"


@pytest.fixture(scope="module")
def testbed():
    return load_testbed("testbed")


@pytest.fixture(scope="module")
def organism():
    return load_testbed("testbed-mixed")


def _batch(adapter, mazes, n_seeds):
    shape = adapter.latent_shape(mazes[0].size, 4)
    seeds = [m.seed + 1_000_003 * i for m in mazes for i in range(n_seeds)]
    noise = initial_noise(seeds, shape).reshape(len(mazes), n_seeds, *shape)
    return noise, adapter.conditioning(mazes, 4)


@pytest.mark.parametrize("k", [1, 3])
def test_early_selection_with_one_seed_is_plain_sampling(testbed, k):
    mazes = [M.generate_maze(4, s) for s in (0, 1, 2)]
    noise, cond = _batch(testbed, mazes, 1)
    selected, chosen = select_early(testbed, noise, cond, k, verifier_score, mazes, num_steps=6)
    plain = sample(testbed, noise[:, 0], cond, 6).latents
    assert (chosen == 0).all()
    torch.testing.assert_close(selected, plain, rtol=0, atol=1e-6)


def test_early_selection_continues_the_chosen_seed_as_its_own_run(testbed):
    mazes = [M.generate_maze(5, s) for s in (3, 4)]
    noise, cond = _batch(testbed, mazes, 3)
    selected, chosen = select_early(testbed, noise, cond, 2, connectivity_score, mazes, num_steps=6)
    for i, c in enumerate(chosen):
        alone = sample(testbed, noise[i, c][None], cond[i][None], 6).latents[0]
        torch.testing.assert_close(selected[i], alone, rtol=0, atol=1e-5)


def test_early_selection_rows_and_compute(testbed):
    cfg = EarlySelectConfig(sizes=[4], n=3, n_seeds=[1, 2], ks=[1, 6], num_steps=6)
    rows = run_early_select(cfg, testbed, progress=False)
    calls = {(r["method"], r.get("n_seeds"), r.get("k"), r.get("scorer")): r["model_calls"] for r in rows}
    assert calls[("single seed", 1, None, None)] == 6
    assert calls[("best of N at the end (oracle)", 2, None, None)] == 12
    assert calls[("early selection", 2, 1, "verifier")] == 2 * 1 + 5
    assert calls[("early selection", 2, 6, "verifier")] == 12
    by = {(r["method"], r.get("k"), r.get("scorer")): r for r in rows if r.get("n_seeds") == 2}
    # Choosing with the verifier after the last step is best-of-N at the end.
    oracle = by[("best of N at the end (oracle)", None, None)]
    assert by[("early selection", 6, "verifier")]["solved"] == oracle["solved"]
    with pytest.raises(ValueError, match="k must be at most"):
        run_early_select(EarlySelectConfig(sizes=[4], n=1, ks=[7], num_steps=6), testbed, progress=False)
    with pytest.raises(ValueError, match=r"scores must be .*'connectivity' or module:function, got \['nope'\]"):
        EarlySelectConfig(scores=["nope"])
    assert EarlySelectConfig(scores=["verifier", "scorers:mean_red"]).scores[1] == "scorers:mean_red"
    old = EarlySelectConfig.from_dict({"experiment": "early_select", "seeds": [1, 4], "frames": 4, "sizes": [5]})
    assert (old.n_seeds, old.seeds, old.num_frames, old.sizes) == ([1, 4], None, 4, [5])  # before one source


def test_early_selection_on_a_maze_folder_equals_it_on_the_same_generated_mazes(testbed, tmp_path, run_cli):
    code, _, err = run_cli("data", "maze", "--size", 4, "-n", 3, "--first-seed", 5, "--pixels", 32,
                           "--out", tmp_path / "mazes")  # fmt: skip
    assert code == 0, err
    common = dict(n_seeds=[1, 2], ks=[2], num_steps=6, scores=["verifier"])
    folder = run_early_select(EarlySelectConfig(data=str(tmp_path / "mazes"), **common), testbed, progress=False)
    generated = run_early_select(EarlySelectConfig(sizes=[4], n=3, first_seed=5, **common), testbed, progress=False)
    assert folder == generated


def test_connectivity_reads_the_video_alone():
    maze = M.generate_maze(6, 5)
    truth = M.encode(maze, 4).astype(np.float32) * 2 - 1
    assert connectivity_score(truth) == pytest.approx(1.5)  # the route is every lit cell
    broken = truth.copy()
    broken[M.TRAIL, -1][maze.path[len(maze.path) // 2]] = -1
    broken[M.AGENT, -1][maze.path[len(maze.path) // 2]] = -1
    assert connectivity_score(broken) == 0.0
    blot = truth.copy()
    blot[M.TRAIL, -1] = 1
    assert 1.0 < connectivity_score(blot) < 1.5


def _branches_by_graph(x0: np.ndarray, maze: M.Maze) -> list[int]:
    """Lit side branches per step, counted independently: degree <= 1 nodes of the lit maze subgraph."""
    counts = []
    for z in x0:
        lit = (z[M.TRAIL, -1] > 0) | (z[M.AGENT, -1] > 0)
        graph = nx.Graph()
        cells = [tuple(map(int, c)) for c in np.argwhere(lit)]
        graph.add_nodes_from(cells)
        for r, c in cells:
            for d, (dr, dc) in enumerate(M.DIRECTIONS):
                if maze.open_sides[r, c, d] and (r + dr, c + dc) in graph:
                    graph.add_edge((r, c), (r + dr, c + dc))
        counts.append(sum(1 for v in graph if graph.degree(v) <= 1 and v not in (maze.start, maze.goal)))
    return counts


def _trajectories(adapter, mazes, batch_size: int) -> np.ndarray:
    """x0_hat of every step of each maze, its noise seeded by the maze's seed."""
    noise, _ = _batch(adapter, mazes, 1)
    return trajectories(adapter, noise[:, 0], adapter.conditioning(mazes, 4), adapter.defaults.num_steps, batch_size)


def make_fixture(adapter, scan: int = 160) -> dict:
    """x0_hat of a few held-out 6x6 mazes: the first clean one and the first three that light two or
    more side branches at some step (so the detectors have something to count)."""
    mazes = [M.generate_maze(6, s) for s in range(scan)]
    x0 = _trajectories(adapter, mazes, 80)
    branchy = [i for i, (z, m) in enumerate(zip(x0, mazes)) if max(analyse_trajectory(z, m).branches) >= 2][:3]
    clean = next(i for i, (z, m) in enumerate(zip(x0, mazes)) if max(analyse_trajectory(z, m).branches) == 0)
    picked = [clean, *branchy]
    return {"x0": x0[picked].astype(np.float16), "seeds": np.array([mazes[i].seed for i in picked])}


def test_detectors_on_the_organisms_own_trajectories(organism):
    fixture = np.load(FIXTURE)
    stored = fixture["x0"].astype(np.float32)
    mazes = [M.generate_maze(6, int(s)) for s in fixture["seeds"]]
    assert any(max(analyse_trajectory(z, m).branches) >= 2 for z, m in zip(stored, mazes))
    live = _trajectories(organism, mazes, 8)
    # The shipped organism still makes these trajectories (fp16 storage, so a loose tolerance) ...
    np.testing.assert_allclose(live, stored, atol=2e-2)
    for z, maze in zip(stored, mazes):
        chain = analyse_trajectory(z, maze)
        # ... and the detector's branch counts are the ones an independent graph count finds.
        assert chain.branches == _branches_by_graph(z, maze)
        peak = max(chain.branches[:-1])
        assert chain.labels["explore_then_prune"] == (peak >= 2 and chain.branches[-1] < peak)


def test_exploration_runs_both_models_on_the_same_mazes(organism):
    cfg = ExplorationConfig(models=["testbed-mixed", "testbed"], sizes=[4], n=3, num_steps=6)
    result = run_exploration(cfg, organism, progress=False)
    assert set(result) == {"testbed-mixed", "testbed"}
    for model in result:
        s = result[model][4]
        assert s["n"] == 3 and [v["seed"] for v in s["videos"]] == [0, 1, 2]
        assert len(s["solved_per_step"]) == 6 and 0 <= s["explore_then_prune"]["share"] <= 1
    old = ExplorationConfig.from_dict({"experiment": "exploration", "models": ["testbed"], "frames": 4, "sizes": [5]})
    assert (old.model, old.num_frames, old.sizes) == ("testbed", 4, [5])  # a config written before one source
    for cfg in (old, EarlySelectConfig()):  # both read the maze verifier on a maze model's own latents
        with pytest.raises(ValueError, match="needs a maze model"):
            cfg.check(pipeline=True)


def test_organism_accuracy_floor_on_a_fixed_held_out_set(organism):
    """benchmarks/organism_accuracy.py measured 80.7% on held-out 6x6 seeds 0-299 (and 96.3% on 4x4)."""
    from interp.evaluation import evaluate_mazes

    six = evaluate_mazes(organism, range(100), 6, 4)
    four = evaluate_mazes(organism, range(100), 4, 4)
    assert six.accuracy >= 0.74 and four.accuracy >= 0.92, (six.accuracy, four.accuracy)


if __name__ == "__main__":  # regenerate the fixture after retraining the organism
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **make_fixture(load_testbed("testbed-mixed")))
    print(f"wrote {FIXTURE}")


def test_the_selection_figure_draws_a_wilson_bound_one_rounding_step_below_its_share(tmp_path):
    """Wilson's upper bound at 48/48 is 0.9999999999999999: the error bar must not come out negative."""
    from interp.report.exploration_figures import selection_figure

    rows = [{"method": "best of N at the end (oracle)", "model_calls": 40, "accuracy": 1.0,
             "ci95": [0.9258973488472576, 0.9999999999999999]},
            {"method": "single seed", "model_calls": 20, "accuracy": 0.0, "ci95": [1e-17, 0.07]}]  # fmt: skip
    assert selection_figure(rows, tmp_path / "s.png").stat().st_size > 0
