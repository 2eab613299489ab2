"""The seed ensemble's merges as step hooks, and a sampler that stops computing N copies of a
trajectory once a merge has made them one.

``mean`` and ``rescaled`` give every row of a group the same next latent; with a scheduler that keeps
no per-row history (flow-matching Euler) the N rows are then the same trajectory, and running them N
times only costs N times the compute. ``sample_merged`` runs the first K steps on all rows and, where
the rows of each group and the scheduler's per-row state are bit-identical, continues one row per
group (the others are copies of it); otherwise it continues all of them.
"""

from __future__ import annotations

import torch

from interp.execution.loop import StepHook, sample, scheduler_row_tensors, select_scheduler_rows

MERGES = ("mean", "rescaled", "x0")


class SeedMerge(StepHook):
    """Merges groups of ``n_seeds`` consecutive rows after each of the first ``k`` steps."""

    def __init__(self, n_seeds: int, k: int, rule: str = "rescaled"):
        if rule not in MERGES:
            raise ValueError(f"merge rule must be one of {MERGES}, got {rule!r}")
        if n_seeds < 1 or k < 0:
            raise ValueError("n_seeds must be >= 1 and k >= 0")
        self.n, self.k, self.rule = n_seeds, k, rule

    def after_step(self, state):
        if state.step >= self.k or self.n == 1:
            return None
        nxt = state.next_latents
        groups = nxt.reshape(-1, self.n, *nxt.shape[1:])
        if self.rule == "mean":
            merged = groups.mean(1, keepdim=True).expand_as(groups)
            return merged.reshape(nxt.shape)
        sigma = state.sigma_next
        x0 = state.x0_hat.reshape(groups.shape)
        if sigma <= 0:
            return x0.mean(1, keepdim=True).expand_as(groups).reshape(nxt.shape)
        noise = (groups - (1 - sigma) * x0) / sigma  # each seed's noise part at the next level
        x0_mean = x0.mean(1, keepdim=True)
        if self.rule == "x0":
            return ((1 - sigma) * x0_mean + sigma * noise).reshape(nxt.shape)
        # Rescale the mean noise to the seeds' own spread (sqrt(N) for independent seeds, 1 once they
        # have merged: a fixed sqrt(N) would inflate the noise at every later merge).
        mean = noise.mean(1, keepdim=True)
        dims = tuple(range(2, noise.ndim))
        target = noise.std(dim=dims, keepdim=True).mean(1, keepdim=True)
        noise_mean = mean * target / mean.std(dim=dims, keepdim=True).clamp_min(1e-12)
        return ((1 - sigma) * x0_mean + sigma * noise_mean).expand_as(groups).reshape(nxt.shape)


class ShrunkNoise(StepHook):
    """Control: one seed whose noise part is scaled by ``scale`` after each of the first ``k`` steps."""

    def __init__(self, scale: float, k: int):
        self.scale, self.k = scale, k

    def after_step(self, state):
        if state.step >= self.k or state.sigma_next <= 0:
            return None
        sigma = state.sigma_next
        noise = (state.next_latents - (1 - sigma) * state.x0_hat) / sigma
        return (1 - sigma) * state.x0_hat + sigma * self.scale * noise


def _groups_identical(latents: torch.Tensor, scheduler, n: int) -> bool:
    """Every group of ``n`` rows equal, in the latents and in the scheduler's per-row tensors."""

    def same(x: torch.Tensor) -> bool:
        g = x.reshape(-1, n, *x.shape[1:])
        return bool(torch.equal(g, g[:, :1].expand_as(g)))

    return same(latents) and all(same(x) for x in scheduler_row_tensors(scheduler, latents.shape[0]))


@torch.no_grad()
def sample_merged(adapter, noise: torch.Tensor, cond, num_steps: int, merge: SeedMerge, scheduler=None,
                  hooks: tuple = ()) -> torch.Tensor:  # fmt: skip
    """Final latents of ``sample(adapter, noise, cond, num_steps, hooks=[merge, *hooks])``: rows in
    groups of ``merge.n``; one trajectory per group after the merges where they made the rows one."""
    n, k = merge.n, merge.k
    if n == 1 or k == 0 or k >= num_steps:
        return sample(adapter, noise, cond, num_steps, hooks=[merge, *hooks], scheduler=scheduler).latents
    head = sample(adapter, noise, cond, num_steps, hooks=[merge, *hooks], scheduler=scheduler, end_step=k)
    batch = noise.shape[0]
    if not _groups_identical(head.latents, head.scheduler, n):
        return sample(adapter, head.latents, cond, num_steps, hooks=list(hooks), start_step=k,
                      resume_scheduler=head.scheduler).latents  # fmt: skip
    rows = list(range(0, batch, n))
    one = sample(adapter, head.latents[rows], _rows(cond, rows), num_steps, hooks=list(hooks), start_step=k,
                 resume_scheduler=select_scheduler_rows(head.scheduler, rows, batch)).latents  # fmt: skip
    return one.repeat_interleave(n, 0)


def _rows(cond, rows: list[int]):
    """Rows of a batched conditioning (a tensor, or a dataclass of tensors as pipeline models use)."""
    from interp.execution.patching import repeat_conditioning, stack_conditioning

    return stack_conditioning([repeat_conditioning(cond, r, 1) for r in rows])
