"""Seed ensemble: N = 1 is plain sampling, merge rules do what they say, the CLI reports controls."""

import numpy as np
import pytest
import torch

from interp.ensemble import SeedMerge, ShrunkNoise, _sample_groups
from interp.sampling import StepState, initial_noise, sample
from interp.tasks import maze as M


def _inputs(adapter, n_mazes=2, n_seeds=3):
    mazes = [M.generate_maze(4, s) for s in range(n_mazes)]
    shape = adapter.latent_shape(4, 4)
    noises = torch.stack([initial_noise([m.seed * 10 + i for i in range(n_seeds)], shape) for m in mazes])
    return mazes, noises, adapter.conditioning(mazes, 4)


def test_ensemble_of_one_seed_equals_plain_sampling(tiny_adapter):
    mazes, noises, cond = _inputs(tiny_adapter, n_seeds=1)
    merged = _sample_groups(tiny_adapter, noises, cond, 1, 6, [SeedMerge(1, 3, "rescaled")])
    plain = sample(tiny_adapter, noises[:, 0], cond, 6).latents
    torch.testing.assert_close(merged[:, 0], plain, rtol=0, atol=0)


def test_merge_rules(tiny_adapter):
    mazes, noises, cond = _inputs(tiny_adapter)
    mean = _sample_groups(tiny_adapter, noises, cond, 3, 6, [SeedMerge(3, 2, "mean")])
    x0 = _sample_groups(tiny_adapter, noises, cond, 3, 6, [SeedMerge(3, 2, "x0")])
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
    code, _, err = run_cli("ensemble", "-n", 2, "--merge", "median", "--out", tmp_path / "x")
    assert code == 2 and "merge rule" in err
