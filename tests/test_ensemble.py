"""Seed ensemble: N = 1 is plain sampling, merge rules do what they say, the CLI reports controls."""

import json

import numpy as np
import pytest
import torch

from interp.execution.loop import StepHook, StepState, initial_noise, sample
from interp.execution.seed_merge import SeedMerge, ShrunkNoise
from interp.experiments.ensemble_runs import sample_groups
from interp.tasks import maze as M


def _inputs(adapter, n_mazes=2, n_seeds=3):
    mazes = [M.generate_maze(4, s) for s in range(n_mazes)]
    shape = adapter.latent_shape(4, 4)
    noises = torch.stack([initial_noise([m.seed * 10 + i for i in range(n_seeds)], shape) for m in mazes])
    return mazes, noises, adapter.conditioning(mazes, 4)


def test_ensemble_of_one_seed_equals_plain_sampling(tiny_adapter):
    mazes, noises, cond = _inputs(tiny_adapter, n_seeds=1)
    merged = sample_groups(tiny_adapter, noises, cond, 1, 6, [SeedMerge(1, 3, "rescaled")])
    plain = sample(tiny_adapter, noises[:, 0], cond, 6).latents
    torch.testing.assert_close(merged[:, 0], plain, rtol=0, atol=0)


def test_merge_rules(tiny_adapter):
    mazes, noises, cond = _inputs(tiny_adapter)
    mean = sample_groups(tiny_adapter, noises, cond, 3, 6, [SeedMerge(3, 2, "mean")])
    x0 = sample_groups(tiny_adapter, noises, cond, 3, 6, [SeedMerge(3, 2, "x0")])
    # Merged latents make one deterministic trajectory; merging x0_hat only keeps the seeds apart.
    torch.testing.assert_close(mean[:, 0], mean[:, 1], rtol=0, atol=1e-6)
    assert not torch.allclose(x0[:, 0], x0[:, 1], atol=1e-3)
    assert not torch.allclose(mean[0, 0], mean[1, 0], atol=1e-3)  # inputs are never merged together
    with pytest.raises(ValueError, match="merge rule"):
        SeedMerge(3, 1, "median")


def test_rescaled_merge_keeps_the_noise_level_and_the_shrunk_control_shrinks_it():
    torch.manual_seed(0)
    x0 = torch.zeros(3, 8, 4, 4, 4)
    sigma = 0.5
    nxt = (1 - sigma) * x0 + sigma * torch.randn(3, 8, 4, 4, 4)
    state = StepState(0, 10, torch.tensor(900.0), 0.9, sigma, nxt, None, x0, nxt)
    rescaled = SeedMerge(3, 1, "rescaled").after_step(state)
    plain = SeedMerge(3, 1, "mean").after_step(state)
    assert rescaled.std() == pytest.approx(float(nxt.std()), rel=0.05)
    assert plain.std() == pytest.approx(float(nxt.std()) / np.sqrt(3), rel=0.1)
    shrunk = ShrunkNoise(3**-0.5, 1).after_step(state)
    assert shrunk.std() == pytest.approx(float(nxt.std()) / np.sqrt(3), rel=1e-4)
    assert (
        SeedMerge(3, 1, "mean").after_step(StepState(1, 10, torch.tensor(0.0), 0.9, sigma, nxt, None, x0, nxt)) is None
    )


def test_ensemble_cli_reports_single_seed_oracle_ensembles_and_controls(tmp_path, run_cli):
    args = ["ensemble", "-n", 4, "--size", 4, "--seeds", 1, "--seeds", 2, "--k", 1, "--merge", "rescaled"]
    code, stdout, err = run_cli(*args, "--temperature", 0.7, "--out", tmp_path)
    assert code == 0, err
    for method in ("single seed", "best of N (oracle)", "ensemble (rescaled)", "control: noise x 1/sqrt(N)"):
        assert method in stdout
    assert "control: temperature" in stdout and (tmp_path / "ensemble.csv").is_file()
    # The same maze by one seed, the ensemble and its temperature control, side by side; paired tests.
    assert (tmp_path / "videos" / "side_by_side.png").is_file() and len(list((tmp_path / "videos").glob("*.gif"))) == 3
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert any(t["title"].startswith("paired on the same mazes") for t in manifest["tables"])
    code, _, err = run_cli("ensemble", "-n", 2, "--merge", "median", "--out", tmp_path / "x")
    assert code == 2 and "merges must be" in err


def test_ensemble_on_a_pipeline_model_writes_videos_latents_and_stats(tmp_path, run_cli):
    import json

    from safetensors.torch import load_file
    from tiny_pipelines import build_tiny_wan, write_samples

    model, data = build_tiny_wan(tmp_path / "wan"), write_samples(tmp_path / "data", n=1)
    out = tmp_path / "ens"
    args = ["--model", model, "--data", data, "--height", 32, "--width", 32, "--num-frames", 5, "--num-steps", 4]
    args += ["--seeds", 2, "--k", 1, "--merge", "mean", "--merge", "rescaled", "--temperature", 0.5, "--out", out]
    code, stdout, err = run_cli("ensemble", *args)
    assert code == 0, err
    rows = json.loads((out / "ensemble.json").read_text())["rows"]
    by_variant = {r["variant"]: r for r in rows}
    expected = {"seed0", "seed1", "ensemble_mean_N2_K1", "ensemble_rescaled_N2_K1", "control_shrunk_N2_K1"}
    assert set(by_variant) == expected | {"control_temperature_0.5"}
    assert by_variant["seed0"]["similarity_to_seed0"] == pytest.approx(1.0)
    assert by_variant["seed1"]["similarity_to_seed0"] < 0.99  # different seeds, different videos
    finals = load_file(out / "finals.safetensors")
    assert set(finals) == {f"sample_000-seed0/{v}" for v in by_variant}  # by video: sample and noise seed
    for variant in by_variant:
        assert (out / "videos" / "sample_000-seed0" / f"{variant}.gif").is_file()
    code, _, err = run_cli("ensemble", "--config", out / "ensemble.json", "--out", tmp_path / "again")
    assert code == 0, err  # the saved config reruns the same ensemble
    assert json.loads((tmp_path / "again" / "ensemble.json").read_text())["rows"] == rows


def test_paired_rows_count_discordant_mazes():
    from interp.experiments._ensemble_examples import paired_rows

    def row(method, solved, **extra):
        return {"size": 5, "method": method, "accuracy": sum(solved) / len(solved), "solved": solved, **extra}

    rows = [row("single seed", [1, 0, 0, 1, 0, 0]), row("ensemble (mean)", [1, 1, 1, 1, 1, 0], n_seeds=3, k=1),
            row("control: temperature", [1, 1, 0, 1, 1, 1], scale=0.58)]  # fmt: skip
    paired = paired_rows(rows)
    vs_single = next(r for r in paired if r["method"].startswith("ensemble") and r["against"] == "single seed")
    assert (vs_single["only method"], vs_single["only against"]) == (3, 0) and vs_single["p"] == 0.25
    vs_control = next(r for r in paired if r["against"].startswith("control"))
    assert (vs_control["only method"], vs_control["only against"]) == (1, 1) and vs_control["p"] == 1.0


class _Rows(StepHook):
    """Records the batch size of every model call."""

    def __init__(self):
        self.rows = []

    def before_model(self, state):
        self.rows.append(state.latents.shape[0])


@pytest.mark.parametrize("rule, collapses", [("mean", True), ("rescaled", True), ("x0", False)])
def test_merged_sampling_runs_one_row_per_group_once_merged_and_equals_the_full_batch(tiny_adapter, rule, collapses):
    from interp.execution.seed_merge import sample_merged

    _, noises, cond = _inputs(tiny_adapter)
    x, c = noises.flatten(0, 1), cond.repeat_interleave(3, 0)
    full = sample(tiny_adapter, x, c, 6, hooks=[SeedMerge(3, 2, rule)]).latents
    calls = _Rows()
    fast = sample_merged(tiny_adapter, x, c, 6, SeedMerge(3, 2, rule), hooks=(calls,))
    assert calls.rows == [6, 6] + ([2] * 4 if collapses else [6] * 4)
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-5)  # batch size changes only the last bits


def test_a_merge_on_a_multistep_solver_makes_the_seeds_one_trajectory(tiny_adapter):
    """UniPC keeps each seed's model outputs and last sample; the merge is an edit of x_k, so the
    history restarts (interp.execution.edits) and the merged rows are one trajectory from there."""
    from diffusers import UniPCMultistepScheduler

    from interp.execution.seed_merge import sample_merged

    _, noises, cond = _inputs(tiny_adapter)
    x, c = noises.flatten(0, 1), cond.repeat_interleave(3, 0)

    def unipc():
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)

    full = sample(tiny_adapter, x, c, 6, hooks=[SeedMerge(3, 1, "mean")], scheduler=unipc()).latents
    groups = full.reshape(-1, 3, *full.shape[1:])
    # every seed of a group ends on one latent (to float32 round-off: a batch of equal rows is not
    # computed bit for bit alike); with the solver's stale history they ended apart
    torch.testing.assert_close(groups, groups[:, :1].expand_as(groups), rtol=0, atol=1e-5)
    calls = _Rows()
    fast = sample_merged(tiny_adapter, x, c, 6, SeedMerge(3, 1, "mean"), scheduler=unipc(), hooks=(calls,))
    assert calls.rows == [6] + [2] * 5  # one row per group once the merge made them one
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-5)  # batch size changes only the last bits


def test_the_testbed_ensemble_on_a_maze_folder_equals_it_on_the_same_generated_mazes(tmp_path, run_cli):
    """One source for every model: the testbed reads the maze data set a pipeline takes and its ensemble
    rows (every method's verdict per maze) equal those on the same mazes generated from their seeds."""
    code, _, err = run_cli("data", "maze", "--size", 4, "-n", 3, "--first-seed", 11, "--pixels", 32,
                           "--out", tmp_path / "mazes")  # fmt: skip
    assert code == 0, err
    common = ["--ensemble-size", 2, "--k", 1, "--merge", "mean", "--temperature", 0.7, "--num-steps", 6]
    code, _, err = run_cli("ensemble", "--data", tmp_path / "mazes", *common, "--out", tmp_path / "data")
    assert code == 0, err
    code, _, err = run_cli("ensemble", "-n", 3, "--first-seed", 11, "--size", 4, *common, "--out", tmp_path / "gen")
    assert code == 0, err
    rows = [json.loads((tmp_path / k / "ensemble.json").read_text())["rows"] for k in ("data", "gen")]
    assert rows[0] == rows[1] and {r["method"] for r in rows[0]} >= {"single seed", "ensemble (mean)"}
    code, _, err = run_cli("ensemble", "--data", tmp_path / "mazes", "--size", 5, "--out", tmp_path / "x")
    assert code == 2 and "with --data the folder's samples are run" in err


def test_the_ensemble_checks_its_sweep_and_scorer_before_any_run(tmp_path, monkeypatch):
    """A merge the model cannot take is refused by the plan (nothing loaded); a scorer that does not load is
    refused before any video is sampled."""
    from diffusers import DiffusionPipeline
    from tiny_pipelines import build_tiny_cogvideox, build_tiny_wan, write_samples

    import interp.experiments.ensemble_runs as runs
    from interp.experiments.ensemble import EnsembleConfig, plan_ensemble, run_ensemble

    data = str(write_samples(tmp_path / "data", n=1))
    video = dict(height=32, width=32, num_frames=9, num_steps=2, max_sequence_length=16, ensemble_sizes=[2], ks=[1])
    cog = EnsembleConfig(model=str(build_tiny_cogvideox(tmp_path / "cog")), data=data, **video)
    with monkeypatch.context() as patch:
        patch.setattr(DiffusionPipeline, "from_pretrained", lambda *a, **k: pytest.fail("the plan loaded weights"))
        with pytest.raises(ValueError, match="not a flow-matching model: only the 'mean' merge"):
            plan_ensemble(cog, tmp_path / "out")
    monkeypatch.setattr(runs, "sample_groups", lambda *a, **k: pytest.fail("sampled before the scorer loaded"))
    wan = EnsembleConfig(model=str(build_tiny_wan(tmp_path / "wan")), data=data, scorer="no_such_module:score",
                         **{**video, "num_frames": 5})  # fmt: skip
    with pytest.raises(ValueError, match="no_such_module"):
        run_ensemble(wan, out=tmp_path / "ens", progress=False)
