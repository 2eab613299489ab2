import pytest
import torch

from interp.execution.loop import StepHook, initial_noise, make_scheduler, sample
from interp.tasks import maze as M


def _inputs(adapter, seeds=(1, 2, 3)):
    mazes = [M.generate_maze(4, s) for s in seeds]
    noise = initial_noise(list(seeds), adapter.latent_shape(4, 4))
    return noise, adapter.conditioning(mazes, 4)


def test_sampler_is_deterministic_per_seed(tiny_adapter):
    noise, cond = _inputs(tiny_adapter)
    a = sample(tiny_adapter, noise, cond, num_steps=5).latents
    b = sample(tiny_adapter, initial_noise([1, 2, 3], tiny_adapter.latent_shape(4, 4)), cond, num_steps=5).latents
    assert torch.equal(a, b)
    # A video's noise does not depend on the rest of its batch.
    alone = initial_noise([2], tiny_adapter.latent_shape(4, 4))
    assert torch.equal(alone[0], noise[1])
    c = sample(tiny_adapter, alone, cond[1:2], num_steps=5).latents
    torch.testing.assert_close(c[0], a[1], atol=1e-5, rtol=1e-5)
    other = sample(tiny_adapter, initial_noise([7, 8, 9], tiny_adapter.latent_shape(4, 4)), cond, num_steps=5).latents
    assert not torch.allclose(a, other)


def test_hook_sees_every_step_with_x0_hat(tiny_adapter):
    noise, cond = _inputs(tiny_adapter)
    seen = []

    def hook(state):
        torch.testing.assert_close(state.x0_hat, state.latents - state.sigma * state.model_output)
        seen.append((state.step, float(state.timestep), state.sigma, state.sigma_next))

    out = sample(tiny_adapter, noise, cond, num_steps=4, hooks=[hook])
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert seen[0][2] == pytest.approx(1.0) and seen[-1][3] == 0.0
    assert all(abs(t - 1000 * s) < 1e-3 for _, t, s, _ in seen)
    assert out.sigmas.shape == (5,)


def test_hook_that_replaces_latents_takes_effect(tiny_adapter):
    noise, cond = _inputs(tiny_adapter)
    plain = sample(tiny_adapter, noise, cond, num_steps=5).latents

    class Identity(StepHook):
        def before_model(self, state):
            return state.latents.clone()

    same = sample(tiny_adapter, noise, cond, num_steps=5, hooks=[Identity()]).latents
    assert torch.equal(plain, same)

    def zero_at_step_2(state):
        return torch.zeros_like(state.next_latents) if state.step == 2 else None

    changed = sample(tiny_adapter, noise, cond, num_steps=5, hooks=[zero_at_step_2]).latents
    assert not torch.allclose(plain, changed, atol=1e-3)

    class FreshNoise(StepHook):
        def before_model(self, state):
            return torch.randn_like(state.latents) if state.step == 3 else None

    torch.manual_seed(0)
    noised = sample(tiny_adapter, noise, cond, num_steps=5, hooks=[FreshNoise()]).latents
    assert not torch.allclose(plain, noised, atol=1e-3)


class _Oracle:
    """Predicts the exact velocity towards a known x0: the loop must land on x0."""

    def __init__(self, x0):
        self.x0 = x0

    def predict(self, latents, timestep, conditioning):
        sigma = timestep / 1000
        return (latents - self.x0) / sigma


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_loop_with_exact_velocity_reaches_target(shift):
    x0 = torch.randn(2, 8, 4, 4, 4)
    noise = torch.randn_like(x0)
    out = sample(_Oracle(x0), noise, torch.zeros(2, 9, 4, 4, 4), num_steps=7, shift=shift)
    torch.testing.assert_close(out.latents, x0, atol=1e-4, rtol=1e-4)


def test_resume_from_cached_latent_matches_full_run(tiny_adapter):
    noise, cond = _inputs(tiny_adapter)
    cache = {}

    def keep(state):
        cache[state.step] = state.latents.clone()

    full = sample(tiny_adapter, noise, cond, num_steps=6, hooks=[keep]).latents
    resumed = sample(tiny_adapter, cache[3], cond, num_steps=6, start_step=3).latents
    torch.testing.assert_close(full, resumed)


def test_bad_arguments(tiny_adapter):
    noise, cond = _inputs(tiny_adapter)
    with pytest.raises(ValueError, match="num_steps"):
        sample(tiny_adapter, noise, cond, num_steps=0)
    with pytest.raises(ValueError, match="start_step"):
        sample(tiny_adapter, noise, cond, num_steps=3, start_step=3)
    with pytest.raises(ValueError, match="batch"):
        sample(tiny_adapter, noise[:2], cond, num_steps=3)
    assert make_scheduler(2.0).config.shift == 2.0
