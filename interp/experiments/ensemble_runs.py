"""The seed ensemble's runs, shared by the sweep (``ensemble``), its example videos
(``_ensemble_examples``) and its plan: the variants a sweep makes, the videos and seeds they start from
(any model's source, in groups: the testbed's maze sizes, or the samples of a data folder), sampling
groups of seeds with a variant's hooks, and the verifier's verdicts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interp.evaluation import verify_latents
from interp.execution.patching import repeat_conditioning, stack_conditioning
from interp.execution.seed_merge import MERGES, SeedMerge, ShrunkNoise, sample_merged
from interp.sources import Video

NOISE_STRIDE = 1_000_003  # noise seed of seed i of a video: the video's own seed + i * stride


def sample_groups(adapter, noises, cond, n_seeds: int, num_steps: int, hooks=(), scale: float = 1.0,
                  shift: float | None = None):  # fmt: skip
    """Sample the first ``n_seeds`` noises of every input (``cond``: one row per input): (inputs, n_seeds,
    *latent)."""
    from interp.execution.loop import sample

    x = (noises[:, :n_seeds] * scale).flatten(0, 1)
    c = stack_conditioning([repeat_conditioning(cond, i, n_seeds) for i in range(noises.shape[0])])
    scheduler = adapter.make_scheduler(shift)
    with torch.no_grad():
        if len(hooks) == 1 and isinstance(hooks[0], SeedMerge):  # one trajectory per group once merged
            out = sample_merged(adapter, x, c, num_steps, hooks[0], scheduler=scheduler)
        else:
            out = sample(adapter, x, c, num_steps, hooks=list(hooks), scheduler=scheduler).latents
    return out.reshape(noises.shape[0], n_seeds, *noises.shape[2:])


def verdicts(adapter, latents, mazes) -> np.ndarray:
    """Per maze: does the final latent solve it (the maze verifier)."""
    return np.array([v.solved for v in verify_latents(adapter, latents, mazes)])


def check_sweep(cfg, adapter, num_steps: int) -> None:
    """The sweep against the model (a skeleton's will do: run by the plan before anything is loaded)."""
    bad = [m for m in cfg.merges if m not in MERGES]
    if bad:
        raise ValueError(f"merge rule must be one of {MERGES}, got {bad[0]!r}")
    sizes, ks = cfg.ensemble_sizes, cfg.ks
    if not sizes or min(sizes) < 1 or min(ks, default=0) < 0 or max(ks, default=0) > num_steps:
        raise ValueError(f"ensemble sizes must be >= 1 and K within 0-{num_steps}")
    if adapter.prediction != "flow" and set(cfg.merges) - {"mean"}:
        raise ValueError(f"{adapter.name} is not a flow-matching model: only the 'mean' merge applies")


def variants(ensemble_sizes: list[int], ks: list[int], merges: list[str], temperatures: list[float],
             flow: bool = True):  # fmt: skip
    """The runs a sweep makes beside the independent seeds, in report order:
    (name, row fields, seeds sampled, hooks, initial-noise scale)."""
    for n in (n for n in ensemble_sizes if n > 1):
        for k in ks:
            for rule in merges:
                info = {"method": f"ensemble ({rule})", "n_seeds": n, "k": k}
                yield f"ensemble_{rule}_N{n}_K{k}", info, n, [SeedMerge(n, k, rule)], 1.0
    for n in (n for n in ensemble_sizes if n > 1 and flow):  # the shrunk-noise control reads flow matching's x_s
        for k in ks:
            info = {"method": "control: noise x 1/sqrt(N)", "n_seeds": n, "k": k}
            yield f"control_shrunk_N{n}_K{k}", info, 1, [ShrunkNoise(n**-0.5, k)], n**-0.5
    for t in temperatures:
        yield f"control_temperature_{t:g}", {"method": "control: temperature", "scale": t}, 1, [], t


@dataclass
class Group:
    """Videos answered together: one maze size of the testbed's generated mazes, or a data folder's
    samples (``source``: the source they come from); ``mazes``: the verifier's truths where a maze model
    judges them (else None); ``size``: their maze size (None: no mazes)."""

    source: object
    videos: list[Video]
    mazes: list | None
    size: int | None
    batches: list[list[int]]  # indices of ``videos`` sampled together


@dataclass
class EnsembleRuns:
    """What every unit is computed from: the model, its groups of videos, the variants of the config and,
    with no verifier, the user's scorer (loaded before any run)."""

    cfg: object  # the EnsembleConfig
    adapter: object
    num_steps: int
    shift: float | None
    groups: list[Group]
    variants: list  # variants(...) of the config
    scorer: object = None

    def units(self) -> list[tuple[int, int, int | None]]:
        """(group, batch, variant or None: the independent seeds), in report order."""
        return [(g, b, v) for g, group in enumerate(self.groups) for b in range(len(group.batches))
                for v in [None, *range(len(self.variants))]]  # fmt: skip

    def inputs(self, group: Group, rows: list[int]) -> tuple[torch.Tensor, object]:
        """(noises (videos, N, *latent), conditioning) of a batch of a group's videos, drawn when a unit runs
        (memory: one batch): seed i of a video is its own seed + i * NOISE_STRIDE."""
        videos = [group.videos[i] for i in rows]
        noise, cond = group.source.inputs(self.adapter, videos)  # each video's own seed: its seed 0
        seeds = [v.seed + NOISE_STRIDE * i for v in videos for i in range(max(self.cfg.ensemble_sizes))]
        noises = group.source.noise(self.adapter, seeds, tuple(noise.shape[1:]))
        return noises.unflatten(0, (len(videos), -1)), cond


def prepare(cfg, adapter=None, videos_per_group: int | None = None) -> EnsembleRuns:
    """The groups of videos of an ensemble config, its variants and its scorer; the sweep and the scorer
    are checked before any run. ``videos_per_group``: the first ones only."""
    from interp.experiments._causal import maze_truths

    adapter = adapter or cfg.load()
    num_steps = cfg.num_steps_of(adapter)
    check_sweep(cfg, adapter, num_steps)
    groups = []
    for source in cfg.groups():
        videos = source.videos(adapter)[:videos_per_group]
        mazes = maze_truths(adapter, videos)
        batch = source.batch_of(adapter, None, task_batch=len(videos))  # a task model answers a group at once
        batches = [list(range(i, min(i + batch, len(videos)))) for i in range(0, len(videos), batch)]
        groups.append(Group(source, videos, mazes, videos[0].sample.truth.size if mazes else None, batches))
    found = list(variants(cfg.ensemble_sizes, cfg.ks, cfg.merges, cfg.temperatures, adapter.prediction == "flow"))
    return EnsembleRuns(cfg, adapter, num_steps, cfg.shift_of(adapter), groups, found, load_user_scorer(cfg, groups))


def load_user_scorer(cfg, groups: list[Group]):
    """With no verifier and ``--scorer``: the user's scorer, and the truth it reads (``maze``: each sample's
    maze.json), loaded before any video is sampled."""
    if cfg.scorer is None or all(g.mazes is not None for g in groups):
        return None
    from interp.analysis.convergence import load_scorer

    scorer = load_scorer(cfg.scorer, cfg.scorer_timeout)
    if scorer.needs_sample:
        from interp.tasks.maze_data import read_maze

        for group in groups:
            for video in group.videos:
                read_maze(video.sample.folder)
    return scorer


def run_unit(r: EnsembleRuns, unit: tuple[int, int, int | None]) -> torch.Tensor:
    """The final latents of a unit: the independent seeds of a batch (videos, N, *latent), or a variant's
    answer (videos, *latent): its first seed's row (merged seeds are one trajectory)."""
    group = r.groups[unit[0]]
    noises, cond = r.inputs(group, group.batches[unit[1]])
    if unit[2] is None:
        return sample_groups(r.adapter, noises, cond, noises.shape[1], r.num_steps, shift=r.shift)
    _, _, n_seeds, hooks, scale = r.variants[unit[2]]
    return sample_groups(r.adapter, noises, cond, n_seeds, r.num_steps, hooks, scale, r.shift)[:, 0]
