"""The one rule for editing a trajectory (interp.execution.edits), on every scheduler the registered
families ship or accept, against diffusers' own scheduler objects: after an edit of x_s the run
equals a fresh diffusers scheduler begun at s from the edited sample; an edit that changes nothing
is the uninterrupted run bit for bit; a seed merge makes the merged rows one trajectory."""

import pytest
import torch
from diffusers import (
    CogVideoXDDIMScheduler,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from interp.execution.edits import restart_history
from interp.execution.loop import StepHook, sample
from interp.execution.seed_merge import SeedMerge

STEPS = 8
SCHEDULERS = {
    "flow-euler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
    "unipc": lambda: UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    "unipc-no-corrector": lambda: UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, disable_corrector=list(range(STEPS))
    ),
    "unipc-order-3": lambda: UniPCMultistepScheduler(solver_order=3),
    "dpm++-2m": lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2),
    "dpm++-flow": lambda: DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, algorithm_type="dpmsolver++"
    ),
    "ddim": lambda: DDIMScheduler(),
    "cogvideox-ddim": lambda: CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing"),
}


class Model:
    """A deterministic nonlinear stand-in for a transformer: the prediction depends on x and t."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(4, 3, 5, 5, generator=g)

    def predict(self, x, t, cond):
        return torch.tanh(x * self.w + t.float() / 1000) + 0.1 * cond.view(-1, 1, 1, 1, 1)


class Edit(StepHook):
    """x_s <- x_s + delta before the model at step ``at``; keeps the edited latent."""

    def __init__(self, at: int, delta: torch.Tensor):
        self.at, self.delta, self.edited = at, delta, None

    def before_model(self, state):
        if state.step != self.at:
            return None
        self.edited = state.latents + self.delta
        return self.edited


class Same(StepHook):
    """Returns a copy of the latents at every step, before and after the model: edits of nothing."""

    def before_model(self, state):
        return state.latents.clone()

    def after_step(self, state):
        return state.next_latents.clone()


class Snapshot(StepHook):
    def __init__(self):
        self.schedulers, self.latents = {}, {}

    def before_model(self, state):
        import copy

        self.schedulers[state.step] = copy.deepcopy(state.scheduler)
        self.latents[state.step] = state.latents.clone()


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 4, 3, 5, 5, generator=g), torch.arange(batch).float()


def _fresh_from(make, model, x, cond, start: int) -> torch.Tensor:
    """diffusers alone: a new scheduler begun at ``start`` (no history), stepped from ``x``."""
    scheduler = make()
    scheduler.set_timesteps(STEPS)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    for t in scheduler.timesteps[start:]:
        x = scheduler.step(model.predict(x, t, cond), t, x, return_dict=False)[0]
    return x


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_an_edit_of_x_s_is_what_the_solver_steps_from(name):
    make, model = SCHEDULERS[name], Model()
    x, cond = _inputs()
    plain = sample(model, x, cond, STEPS, scheduler=make()).latents
    torch.testing.assert_close(plain, _fresh_from(make, model, x, cond, 0), rtol=0, atol=0)
    delta = 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    for at in (1, 3, STEPS - 2):
        edit = Edit(at, delta)
        edited = sample(model, x, cond, STEPS, hooks=[edit], scheduler=make()).latents
        assert not torch.equal(edited, plain)
        reference = _fresh_from(make, model, edit.edited, cond, at)
        torch.testing.assert_close(edited, reference, rtol=0, atol=0)  # float32: bit for bit


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_an_edit_that_changes_nothing_is_the_uninterrupted_run(name):
    make, model = SCHEDULERS[name], Model()
    x, cond = _inputs()
    plain = sample(model, x, cond, STEPS, scheduler=make()).latents
    same = sample(model, x, cond, STEPS, hooks=[Same()], scheduler=make()).latents
    assert torch.equal(same, plain)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_a_resumed_run_from_an_edited_latent_steps_from_it(name):
    """perturb and flow resume the clean run at s with its scheduler state and another latent."""
    make, model = SCHEDULERS[name], Model()
    x, cond = _inputs()
    snap = Snapshot()
    plain = sample(model, x, cond, STEPS, hooks=[snap], scheduler=make()).latents
    at = 3
    resumed = sample(model, snap.latents[at], cond, STEPS, start_step=at, resume_scheduler=snap.schedulers[at]).latents
    assert torch.equal(resumed, plain)  # the recorded latent: the history continues
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    resumed = sample(model, noise, cond, STEPS, start_step=at, resume_scheduler=snap.schedulers[at]).latents
    torch.testing.assert_close(resumed, _fresh_from(make, model, noise, cond, at), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_a_seed_merge_makes_the_merged_rows_one_trajectory(name):
    make, model = SCHEDULERS[name], Model()
    x, _ = _inputs(4)
    cond = torch.zeros(4)  # the same conditioning: the seeds of one sample
    merged = sample(model, x, cond, STEPS, hooks=[SeedMerge(2, 2, "mean")], scheduler=make()).latents
    torch.testing.assert_close(merged[0], merged[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(merged[2], merged[3], rtol=0, atol=1e-6)
    assert not torch.allclose(merged[0], merged[2])


def test_unipc_steps_from_the_edited_sample_kept_share_one():
    """UniPC's corrector rebuilt x_s from the previous sample (1-15% of an edit kept); with the rule,
    the sample its predictor steps from (``last_sample`` after the step) is the edited latent."""
    make, model = SCHEDULERS["unipc"], Model()
    x, cond = _inputs()
    snap = Snapshot()
    sample(model, x, cond, STEPS, hooks=[snap], scheduler=make())
    at = 4
    delta = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    edited = snap.latents[at] + delta
    scheduler = snap.schedulers[at]
    sample(model, edited, cond, STEPS, start_step=at, resume_scheduler=scheduler, end_step=at + 1)
    # the snapshot itself is untouched (the loop steps a copy): step it by hand, as diffusers would
    from interp.execution.edits import step_from

    t = scheduler.timesteps[at]
    assert step_from(scheduler, edited)
    scheduler.step(model.predict(edited, t, cond), t, edited)
    kept = ((scheduler.last_sample - snap.latents[at]) * delta).sum() / (delta * delta).sum()
    assert abs(float(kept) - 1) < 1e-6


def test_a_scheduler_with_unknown_per_row_state_is_refused():
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.previous_velocity = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="previous_velocity.*no restart rule"):
        restart_history(scheduler)
