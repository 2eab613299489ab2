"""Noise at step vs noise at frame: chain of steps against chain of frames.

At step s, x_s of every frame is replaced by fresh N(0, I) (the study's definition) and sampling
continues from there: the unperturbed run is resumed at s with its scheduler state and the fresh
latent, which the loop treats as an edit (``interp.execution.edits``): a multistep solver's history
restarts, so step s is first order from the noise (UniPC's corrector would otherwise rebuild x_s
from the clean run's previous sample and undo the noise). At frame f, that frame of x_t is replaced
by fresh noise before every step of a full run: every step is an edit, so a multistep solver runs
at first order throughout. A maze model: accuracy with Wilson intervals (and whether the
answer, the last frame, is right); any other model: cosine similarity of the final latent to the
unperturbed run's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from activations.selection import parse_index_spec
from interp.execution.loop import StepHook, sample
from interp.experiments._causal import (
    CausalConfig,
    example_videos,
    outcome_score,
    save_videos,
    source_runs,
    write_record,
)
from interp.experiments.base import Experiment, register
from interp.experiments.executors import Sweep, executor_or_local
from interp.manifest import Table


@dataclass
class PerturbConfig(CausalConfig):
    experiment = "perturb"
    n: int = 64
    steps: str = "all"
    frames_to_noise: str = "all"
    noise_seed: int = 12345

    cli_help = {
        **CausalConfig.cli_help,
        "steps": "Steps at which x_s is replaced by fresh noise.",
        "frames_to_noise": "Frames replaced by noise at every step.",
        "noise_seed": "Seed of the injected noise.",
    }


@dataclass
class PerturbResult:
    config: PerturbConfig
    baseline: dict
    at_step: dict[int, dict] = field(default_factory=dict)
    at_frame: dict[int, dict] = field(default_factory=dict)
    videos: dict | None = None  # decoded first video: unperturbed, noised at the middle step, at the first frame


def fresh_noise(shape, seed: int, key: int) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + key))


class FrameNoise(StepHook):
    """Latent frame ``frame`` (on ``frame_axis`` of one video's latent) replaced by fresh noise before every step."""

    def __init__(self, frame: int, seed: int, frame_axis: int = 1):
        self.frame, self.seed, self.axis = frame, seed, 1 + frame_axis  # batched: the batch axis comes first

    def before_model(self, state):
        latents = state.latents.clone()
        view = latents.select(self.axis, self.frame)
        view.copy_(fresh_noise(view.shape, self.seed, 1000 + state.step).to(latents))
        return latents


@dataclass
class NoiseRuns:
    """What every perturbation is computed from: the unperturbed run and how outputs are scored."""

    cfg: PerturbConfig
    adapter: object
    run: object  # RunCache of the unperturbed run
    cond: object
    num_steps: int
    steps: list[int]
    frames: list[int]
    score: object  # final latents -> a dict of scores


def run_perturb(cfg: PerturbConfig, adapter=None, progress: bool = True, executor=None) -> PerturbResult:
    """Noise at each step and at each frame, scored. ``executor``: where the perturbed runs go
    (this process by default, or a ``RayExecutor``); a unit is one step's or one frame's run."""
    r = _prepare(cfg, adapter)
    units = [("step", s) for s in r.steps] + [("frame", f) for f in r.frames]
    finals = executor_or_local(executor).map(SWEEP, cfg, r, units, progress, "noise at step and frame")
    result = PerturbResult(cfg, r.score(r.run.final))
    shown = {"no noise": r.run.final[0]}
    for (where, x), latents in zip(units, finals):
        if where == "step":
            result.at_step[x] = r.score(latents)
            if x == r.steps[len(r.steps) // 2]:
                shown[f"noise at step {x}"] = latents[0]
        else:
            result.at_frame[x] = r.score(latents)
            if x == r.frames[0]:
                shown[f"noise at frame {x}"] = latents[0]
    result.videos = example_videos(r.adapter, shown)
    return result


def _prepare(cfg: PerturbConfig, adapter) -> NoiseRuns:
    """Every check, then the unperturbed run of the source's videos and how a run's outputs are scored: by a
    maze model's verifier (accuracy with Wilson intervals), else by the cosine similarity of the final
    latent to the unperturbed run's."""
    chosen: dict = {}

    def sites_for(model, num_steps: int, shape: tuple) -> list:  # checks before the run is recorded
        if model.latent_frame_axis is None:
            raise ValueError(f"noise at frame needs a frame axis; {model.name}'s latent is packed {tuple(shape)}")
        chosen["steps"] = parse_index_spec(cfg.steps, num_steps, "step")
        chosen["frames"] = parse_index_spec(cfg.frames_to_noise, shape[model.latent_frame_axis], "frame")
        return []

    runs = source_runs(cfg, adapter, sites_for)
    score = outcome_score(runs)
    return NoiseRuns(cfg, runs.adapter, runs.run, runs.conditioning, runs.num_steps, chosen["steps"],
                     chosen["frames"], score)  # fmt: skip


def _noised(r: NoiseRuns, unit: tuple[str, int]) -> torch.Tensor:
    """The unit of work: final latents of one perturbed run, noise at step s (resumed at s) or at frame f."""
    where, x = unit
    if where == "step":
        fresh = fresh_noise(r.run.latents[x].shape, r.cfg.noise_seed, x).to(r.run.latents[x])
        return sample(r.adapter, fresh, r.cond, r.num_steps, start_step=x,
                      resume_scheduler=r.run.schedulers.get(x)).latents  # fmt: skip
    hook = FrameNoise(x, r.cfg.noise_seed, r.adapter.latent_frame_axis)
    return sample(r.adapter, r.run.latents[0], r.cond, r.num_steps, r.cfg.shift_of(r.adapter), hooks=[hook]).latents


def save_perturb(result: PerturbResult, cfg: PerturbConfig, out):
    from pathlib import Path

    from interp.report.causal_figures import noise_curves

    record = {"baseline": result.baseline, "at_step": result.at_step, "at_frame": result.at_frame}
    manifest = write_record(out, cfg, record, "perturb", "noise at step vs noise at frame", "noise")
    figure = noise_curves(result.baseline, result.at_step, result.at_frame, Path(out) / "noise_step_vs_frame.png")
    manifest.add(figure, "figure", "noise at step (chain of steps) vs noise at frame (chain of frames)")
    base = result.baseline
    rows = []
    for label, part in (("noise at step", result.at_step), ("noise at frame", result.at_frame)):
        for x, r in sorted(part.items()):
            row = {"where": label, "index": int(x)}
            if "accuracy" in r:
                row.update(solved=r["accuracy"], ci95=f"{r['ci95'][0]:.1%}-{r['ci95'][1]:.1%}",
                           answer_right=r["final_exact"])  # fmt: skip
            else:
                row.update(similarity=r["similarity"])
            rows.append(row)
    if "accuracy" in base:
        columns = ["where", "index", "solved", "ci95", "answer_right"]
        worst_step = min(result.at_step.items(), key=lambda kv: kv[1]["accuracy"]) if result.at_step else None
        worst_frame = min(result.at_frame.items(), key=lambda kv: kv[1]["accuracy"]) if result.at_frame else None
        line = f"no noise: {base['accuracy']:.2f} solved"
        if worst_step:
            line += f"; noise at step {worst_step[0]}: {worst_step[1]['accuracy']:.2f}"
        if worst_frame:
            line += (f"; noise at frame {worst_frame[0]}: {worst_frame[1]['accuracy']:.2f} "
                     f"(answer right {worst_frame[1]['final_exact']:.2f})")  # fmt: skip
        manifest.headline.append(line)
        manifest.notes.append(
            f"no noise: {base['accuracy']:.1%} solved "
            f"(95% CI {base['ci95'][0]:.1%}-{base['ci95'][1]:.1%}, n={base['n']})"
        )
    else:
        columns = ["where", "index", "similarity"]
        for key, part in (("at step", result.at_step), ("at frame", result.at_frame)):
            sims = ", ".join(f"{k}: {v['similarity']:.3f}" for k, v in part.items())
            manifest.headline.append(f"similarity to the unperturbed output, noise {key}: {sims}")
        manifest.notes.append("pipeline model: cosine similarity of the final latent to the unperturbed run")
    from interp.analysis.claims import steps_not_frames

    manifest.claims.append(steps_not_frames(result.baseline, result.at_step, result.at_frame))
    formats = {"solved": ".3f", "answer_right": ".3f", "similarity": ".3f"}
    manifest.tables.append(Table("accuracy per perturbation", columns, rows, formats))
    save_videos(result.videos, Path(out), manifest, "the first video: unperturbed and perturbed (final samples)")
    manifest.write(out)
    return manifest


def demo(ctx) -> None:
    """The study: noise at every other step against noise at each frame."""
    cfg = PerturbConfig(model=ctx.model, n=ctx.options["n_noise"], size=ctx.size, num_frames=ctx.frames,
                        steps="0-18:2")
    result = run_perturb(cfg, ctx.adapter, progress=False)
    save_perturb(result, result.config, ctx.out / "causal" / "noise")
    accuracy = result.baseline["accuracy"]
    broken = [s for s, r in sorted(result.at_step.items()) if r["accuracy"] < 0.5 * accuracy]
    last = max(result.at_frame)
    answer_kept = [r["final_exact"] for f, r in result.at_frame.items() if f < last]
    ctx.headline.append(
        f"noise at step: solved {accuracy:.0%} without noise, "
        + (f"first below half of that at step {broken[0]}" if broken else "never below half")
        + (f"; noise at an earlier frame keeps the answer right in {np.mean(answer_kept):.0%}" if answer_kept else "")
    )


SWEEP = Sweep("perturb", PerturbConfig, _prepare, _noised)
EXPERIMENT = register(Experiment("perturb", PerturbConfig, run_perturb, save_perturb, demo=demo, demo_order=62))
