"""Chain-of-Steps statistics on hand-made x0_hat trajectories with known answers."""

import numpy as np
import pytest

from interp.analysis.chain_of_steps import ChainConfig, analyse_trajectory, lit_branches, summarise
from interp.tasks import maze as M


def _maze_with_side_branches():
    """A 4x4 maze whose solution has at least two cells with an off-path neighbour."""
    for seed in range(200):
        maze = M.generate_maze(4, seed)
        on_path = set(maze.path)
        sides = []
        for r, c in maze.path[1:-1]:
            for d, (dr, dc) in enumerate(M.DIRECTIONS):
                if maze.open_sides[r, c, d] and (r + dr, c + dc) not in on_path:
                    sides.append((r + dr, c + dc))
        if len(set(sides)) >= 2:
            return maze, sorted(set(sides))[:2]
    raise AssertionError("no maze with two side branches")


def _with_trail(maze, cells, frames=4):
    """The true video latent, with the last frame's trail replaced by ``cells``."""
    z = M.encode(maze, frames).copy()
    z[M.TRAIL, -1] = -1
    z[M.AGENT, -1] = -1
    for cell in cells:
        z[M.TRAIL, -1][cell] = 1
    z[M.AGENT, -1][maze.goal] = 1
    return z


def test_planted_self_correction_and_commit_step():
    maze = M.generate_maze(4, 3)
    truth = M.encode(maze, 4)
    wrong = _with_trail(maze, list(maze.path[:-2]) + [c for c in [(0, 0), (3, 3)] if c not in maze.path])
    noise = np.random.default_rng(0).standard_normal(truth.shape).astype(np.float32)
    trajectory = np.stack([noise, wrong, wrong, truth, truth, truth])
    chain = analyse_trajectory(trajectory, maze)
    assert chain.commit_step == 3 and chain.action_step == 3
    assert chain.solved == [False, False, False, True, True, True]
    assert chain.labels["self_correction"] and chain.correction_step == 3
    assert chain.answer_changes[1] and chain.answer_changes[3] and not chain.answer_changes[4]
    # Walls decode right from step 1 (the wrong answer keeps them), the trail only from step 3.
    assert chain.perception_step == 1 and chain.labels["perception_before_action"]


def test_planted_two_branch_exploration():
    maze, sides = _maze_with_side_branches()
    truth = M.encode(maze, 4)
    exploring = _with_trail(maze, list(maze.path) + sides)
    assert lit_branches(exploring[M.TRAIL, -1] > 0, maze) == 2
    chain = analyse_trajectory(np.stack([exploring, exploring, truth]), maze)
    assert chain.branches == [2, 2, 0]
    assert chain.labels["multi_path"] and chain.labels["superposition"]
    assert chain.labels["explore_then_prune"] and chain.correction_step is None
    kept = analyse_trajectory(np.stack([exploring, exploring, exploring]), maze)
    assert kept.labels["multi_path"] and not kept.labels["explore_then_prune"]  # never pruned
    assert not chain.labels["self_correction"]  # the whole path was lit all along: superposition, not an error
    strict = analyse_trajectory(np.stack([exploring, truth]), maze, ChainConfig(min_branches=3))
    assert not strict.labels["multi_path"]


def test_a_clean_trajectory_has_no_behaviours_and_summaries_count_videos():
    maze = M.generate_maze(4, 1)
    truth = M.encode(maze, 4)
    chain = analyse_trajectory(np.stack([truth] * 4), maze)
    assert chain.commit_step == 0 and chain.perception_step == 0
    assert not any(chain.labels.values())
    summary = summarise([chain, chain])
    assert summary["n"] == 2 and summary["final_solved"] == 1.0 and summary["solved_per_step"] == [1.0] * 4
    with pytest.raises(ValueError, match="not \\(steps, 8, T, 4, 4\\)"):
        analyse_trajectory(truth, maze)


def test_chain_cli_on_a_traced_store(tmp_path, run_cli):
    from interp.experiments.trace import TraceConfig, run_trace

    store = run_trace(TraceConfig(n=3, num_steps=5), tmp_path / "t.h5", progress=False)
    code, stdout, err = run_cli("chain", store, "--out", tmp_path / "chain")
    assert code == 0, err
    assert "3 videos: answer commits at step" in stdout
    assert (tmp_path / "chain" / "chain.png").stat().st_size > 0
    partial = run_trace(TraceConfig(n=1, num_steps=5, steps="0,4"), tmp_path / "p.h5", progress=False)
    code, _, err = run_cli("chain", partial, "--out", tmp_path / "x")
    assert code == 2 and "--steps all" in err
