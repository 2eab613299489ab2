"""The verifier-free chain of steps: distances, commit steps and seed spread, checked on arrays whose
answers are known, and on a testbed store beside the verifier's reading."""

import json

import numpy as np
import pytest
from tiny_pipelines import save_tiny_testbed

from interp.analysis.convergence import commit_steps, load_scorer, seed_spread, trajectory_distances


def test_distances_and_commit_steps_on_a_known_trajectory():
    final = np.ones((2, 3, 2, 2))  # (C, T, H, W): three frames
    x0 = np.stack([final * 0, final * 0.5, final, final])  # frames converge together at step 2
    x0[1, :, 2] = 1.0  # frame 2 is already right at step 1
    total, per_frame = trajectory_distances(x0, final, frame_axis=1)
    assert total[0] == pytest.approx(1.0) and total[-1] == 0
    assert per_frame.shape == (4, 3) and per_frame[1, 2] == 0 and per_frame[1, 0] == pytest.approx(0.5)
    assert commit_steps(per_frame, [0, 5, 10, 15], 0.1) == [10, 10, 5]
    assert commit_steps(per_frame[:, :1] + 1, [0, 5, 10, 15], 0.1) == [None]
    a, b = np.zeros((3, 4)), np.stack([np.ones(4), np.ones(4) * 0.5, np.zeros(4)])
    np.testing.assert_allclose(seed_spread([a, b], [np.ones(4), np.ones(4)]), [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="module:function"):
        load_scorer("no_colon")
    with pytest.raises(ValueError, match="cannot import"):
        load_scorer("scorers:nothing_here")


def test_chain_on_a_testbed_store_reports_both_readings(tmp_path, run_cli):
    cfg = {"num_layers": 2, "ffn_dim": 64, "num_attention_heads": 2, "attention_head_dim": 16}
    folder = save_tiny_testbed(tmp_path / "tiny", cfg, num_steps=4)
    code, _, err = run_cli("trace", "--model", folder, "-n", 3, "--layers", "0", "--out", tmp_path / "t.h5")
    assert code == 0, err
    code, out, err = run_cli("chain", tmp_path / "t.h5", "--scorer", "scorers:mean_red", "--model", folder,
                             "--out", tmp_path / "chain")  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "chain" / "convergence.json").read_text())["summary"]
    assert summary["n"] == 3 and summary["seed_spread_per_step"] is None  # one seed per maze
    assert summary["distance_per_step"][-1] < 1e-2  # Euler's last step lands on x0_hat (stored in float16)
    assert len(summary["score_per_step"]) == 5
    assert (tmp_path / "chain" / "chain.json").is_file() and "answer commits at step" in out
    code, _, err = run_cli("chain", tmp_path / "t.h5", "--scorer", "scorers:mean_red", "--out", tmp_path / "c2")
    assert code == 2 and "give --model" in err


def test_claims_are_decided_from_the_numbers_with_their_controls():
    from interp.analysis.claims import behaviour_share, ensemble_gain, steps_not_frames

    def acc(p, n=100):
        from interp.evaluation import wilson_interval

        lo, hi = wilson_interval(round(p * n), n)
        return {"accuracy": p, "ci95": [lo, hi], "final_exact": p, "final_exact_ci95": [lo, hi], "n": n}

    base = acc(0.98)
    assert steps_not_frames(base, {0: acc(0.97), 10: acc(0.1)}, {0: acc(0.95), 3: acc(0.0)})["verdict"] == "shows"
    assert steps_not_frames(base, {10: acc(0.1)}, {0: acc(0.1), 3: acc(0.0)})["verdict"] == "does not show"
    assert steps_not_frames(base, {10: acc(0.9)}, {0: acc(0.9), 3: acc(0.0)})["verdict"] == "cannot tell"
    assert behaviour_share("m", "multi_path", {"multi_path": 0.5}, 64)["verdict"] == "shows"
    assert behaviour_share("m", "multi_path", {"multi_path": 0.0}, 200)["verdict"] == "does not show"
    assert behaviour_share("m", "multi_path", {"multi_path": 0.0}, 8)["verdict"] == "cannot tell"
    rows = [{"size": 5, "method": "ensemble (mean)", "n_seeds": 3, **acc(0.66, 32)},
            {"size": 5, "method": "control: noise x 1/sqrt(N)", **acc(0.72, 32)}]  # fmt: skip
    assert ensemble_gain(rows)[0]["verdict"] == "does not show"  # the control beats the ensemble
    rows[0].update(acc(0.99, 400))
    rows[1].update(acc(0.5, 400))
    assert ensemble_gain(rows)[0]["verdict"] == "shows"
