"""The one rule for editing a trajectory: the solver steps from the edited sample.

Anything that replaces x_s between steps (noise at a step or a frame, flow injections, seed merges,
a user's hook, a run resumed from a latent other than the recorded one) leaves a multistep solver
with a history computed on the old trajectory. Left alone, that history undoes the edit: UniPC's
corrector rebuilds the sample at step s from ``last_sample`` (the previous step's sample) and the
model outputs, so only a few percent of an injected change survives, and DPM-Solver++'s
second-order update extrapolates from model outputs of the old trajectory.

The rule (applied by ``interp.execution.loop.sample``, never by the experiments): when the sample a
step starts from differs from the one the scheduler produced (compared exactly, all rows), the
scheduler's history is cleared, so that step is taken at first order from the edited sample, with
no corrector, exactly as a fresh scheduler started at that step (``set_begin_index``) would take
it; the solver then climbs back to its full order as new model outputs arrive. The history is one
per batch, so every row of the batch restarts when any row was edited (each still from its own
sample). An edit that changes nothing keeps the history: the run is the uninterrupted one, bit for
bit. Single-step schedulers (flow-matching Euler, DDIM, CogVideoX's DDIM) keep no history and step
from whatever sample they are given, so the rule changes nothing there.

Which attributes hold the history (diffusers 0.3x-0.4x multistep solvers: UniPC, DPM-Solver++
multistep and single-step, DEIS, SA-Solver): ``model_outputs`` and ``timestep_list`` (previous
outputs), ``lower_order_nums`` (the warm-up counter setting the order), ``last_sample`` (UniPC's
corrector input). A scheduler with other per-row state is refused with one line rather than
stepped with a history nobody reset.
"""

from __future__ import annotations

import torch

# The sample the scheduler's next step expects (its last output), kept on the scheduler so that a
# copy of it (a recorded run's state, rows selected for a resumed batch) carries it along.
EXPECTED = "interp_expected_sample"
_HISTORY_LISTS = ("model_outputs", "timestep_list")
_HISTORY_VALUES = {"lower_order_nums": 0, "last_sample": None}
# Per-row tensors a scheduler keeps that are not trajectory history (left alone by a restart).
_NOT_HISTORY = {EXPECTED, "sigmas", "timesteps", "alphas_cumprod", "betas", "alphas", "clean_index"}


def expect(scheduler, sample: torch.Tensor) -> None:
    """Record that ``scheduler``'s next step is to start from ``sample`` (its own output)."""
    setattr(scheduler, EXPECTED, sample.detach().clone())  # a copy: a hook may write into the latents


def is_edited(scheduler, sample: torch.Tensor) -> bool:
    """Whether ``sample`` differs from what ``scheduler`` produced (False when it records nothing)."""
    expected = getattr(scheduler, EXPECTED, None)
    if expected is None:
        return False
    if expected.shape != sample.shape or expected.dtype != sample.dtype or expected.device != sample.device:
        return True
    return not torch.equal(expected, sample)


def restart_history(scheduler) -> None:
    """Clear a multistep solver's history: its next step is first order from the sample it is given
    (UniPC: no corrector), as a fresh scheduler begun at that step would take it."""
    for name in _HISTORY_LISTS:
        value = getattr(scheduler, name, None)
        if isinstance(value, list):
            setattr(scheduler, name, [None] * len(value))
    for name, fresh in _HISTORY_VALUES.items():
        if hasattr(scheduler, name):
            setattr(scheduler, name, fresh)
    unknown = [name for name, value in vars(scheduler).items() if name not in _NOT_HISTORY and _holds_rows(value)]
    if unknown:
        raise ValueError(
            f"{type(scheduler).__name__} keeps state {unknown} that an edit of the latents would leave stale; "
            "no restart rule is known for it (interp.execution.edits)"
        )


def _holds_rows(value) -> bool:
    """A tensor with a batch axis (or a list holding one): state kept per row of the batch."""
    if isinstance(value, list | tuple):
        return any(_holds_rows(v) for v in value)
    return isinstance(value, torch.Tensor) and value.ndim >= 2


def step_from(scheduler, sample: torch.Tensor) -> bool:
    """Make ``scheduler``'s next step start from ``sample``: if it is an edit of the scheduler's own
    output, restart the history (``restart_history``). Returns whether it was an edit."""
    edited = is_edited(scheduler, sample)
    if edited:
        restart_history(scheduler)
    if edited or getattr(scheduler, EXPECTED, None) is None:
        expect(scheduler, sample)
    return edited
