"""The seed ensemble's runs, shared by the sweep (``ensemble``), its example videos
(``_ensemble_examples``) and its plan (``interp.plans``): the variants a sweep makes, the mazes and
noises they start from, sampling groups of seeds with a variant's hooks, and the verifier's verdicts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interp.evaluation import verify_latents
from interp.execution.loop import initial_noise, sample
from interp.execution.seed_merge import MERGES, SeedMerge, ShrunkNoise, sample_merged
from interp.sources import load_testbed
from interp.tasks import maze as maze_task


def sample_groups(adapter, noises, cond, n_seeds: int, num_steps: int, hooks=(), scale: float = 1.0):
    """Sample the first ``n_seeds`` noises of every input: (inputs, n_seeds, *latent)."""
    x = (noises[:, :n_seeds] * scale).flatten(0, 1)
    c = cond.repeat_interleave(n_seeds, 0)
    scheduler = adapter.make_scheduler(None)
    with torch.no_grad():
        if len(hooks) == 1 and isinstance(hooks[0], SeedMerge):  # one trajectory per group once merged
            out = sample_merged(adapter, x, c, num_steps, hooks[0], scheduler=scheduler)
        else:
            out = sample(adapter, x, c, num_steps, hooks=list(hooks), scheduler=scheduler).latents
    return out.reshape(noises.shape[0], n_seeds, *noises.shape[2:])


def verdicts(adapter, latents, mazes) -> np.ndarray:
    """Per maze: does the final latent solve it (the maze verifier)."""
    return np.array([v.solved for v in verify_latents(adapter, latents, mazes)])


def check_sweep(seeds: list[int], ks: list[int], merges: list[str], num_steps: int) -> None:
    bad = [m for m in merges if m not in MERGES]
    if bad:
        raise ValueError(f"merge rule must be one of {MERGES}, got {bad[0]!r}")
    if not seeds or min(seeds) < 1 or min(ks, default=0) < 0 or max(ks, default=0) > num_steps:
        raise ValueError(f"seeds must be >= 1 and K within 0-{num_steps}")


def variants(seeds: list[int], ks: list[int], merges: list[str], temperatures: list[float], flow: bool = True):
    """The runs a sweep makes beside the independent seeds, in report order:
    (name, row fields, seeds sampled, hooks, initial-noise scale)."""
    for n in (n for n in seeds if n > 1):
        for k in ks:
            for rule in merges:
                info = {"method": f"ensemble ({rule})", "n_seeds": n, "k": k}
                yield f"ensemble_{rule}_N{n}_K{k}", info, n, [SeedMerge(n, k, rule)], 1.0
    for n in (n for n in seeds if n > 1 and flow):  # the shrunk-noise control reads flow matching's x_s
        for k in ks:
            info = {"method": "control: noise x 1/sqrt(N)", "n_seeds": n, "k": k}
            yield f"control_shrunk_N{n}_K{k}", info, 1, [ShrunkNoise(n**-0.5, k)], n**-0.5
    for t in temperatures:
        yield f"control_temperature_{t:g}", {"method": "control: temperature", "scale": t}, 1, [], t


@dataclass
class MazeSeeds:
    """What every variant is computed from: per maze size its mazes, conditioning and N seeds' noise."""

    cfg: object  # the EnsembleConfig
    adapter: object
    num_steps: int
    inputs: list[tuple[list, torch.Tensor, torch.Tensor]]  # per size: (mazes, conditioning, noises (mazes, N, ...))
    variants: list  # variants(...) of the config


def prepare(cfg, adapter) -> MazeSeeds:
    """Mazes, conditioning and N seeds' noise per size of an ensemble config, and its variants."""
    adapter = adapter or load_testbed(cfg.model)
    num_steps = cfg.num_steps or adapter.defaults.num_steps
    check_sweep(cfg.seeds, cfg.ks, cfg.merges, num_steps)
    inputs = []
    for size in cfg.sizes:
        mazes = [maze_task.generate_maze(size, cfg.first_seed + i) for i in range(cfg.n)]
        seeds = [[m.seed + 1_000_003 * i for i in range(max(cfg.seeds))] for m in mazes]
        noises = torch.stack([initial_noise(s, adapter.latent_shape(size, cfg.frames)) for s in seeds])
        inputs.append((mazes, adapter.conditioning(mazes, cfg.frames), noises))  # noises: (mazes, N, ...)
    return MazeSeeds(cfg, adapter, num_steps, inputs, list(variants(cfg.seeds, cfg.ks, cfg.merges, cfg.temperatures)))
