"""The study's training-free seed ensemble, with the controls that say whether it is more than a
temperature effect.

N seeds of one input run side by side; after each of the first K steps their latents are merged:

- ``mean``: the plain mean of the N next latents (its noise part shrinks by 1/sqrt(N));
- ``rescaled``: the mean clean estimate, plus the mean noise part rescaled to the seeds' own noise
  spread (so the merged latent sits at the scheduler's noise level, not 1/sqrt(N) below it);
- ``x0``: only the clean estimates are merged; each seed keeps its own noise.

With ``mean`` or ``rescaled`` the N trajectories are one after the first merge (the sampler is
deterministic); the ensemble's answer is seed 0's row. A merge is an edit of the latents, so a
multistep scheduler (UniPC, DPM-Solver++) restarts its history there (``interp.execution.edits``):
the step after each merge is first order from the merged latent (UniPC: no corrector), and rows
merged into one latent stay one trajectory (Euler, the testbed's, keeps no history to restart).
Controls: one seed whose noise is shrunk as the mean of N seeds shrinks it (initial noise and the
noise part after each of the first K steps times 1/sqrt(N)), and plain low-temperature sampling
(initial noise times a scale).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.analysis.claims import ensemble_gain
from interp.evaluation import wilson_interval
from interp.execution.loop import initial_noise, sample
from interp.execution.patching import repeat_conditioning
from interp.experiments._ensemble_examples import add_paired, save_examples
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.experiments.ensemble_runs import MazeSeeds, check_sweep, prepare, sample_groups, verdicts
from interp.experiments.ensemble_runs import variants as variant_runs
from interp.experiments.executors import LocalExecutor, Sweep, executor_or_local
from interp.manifest import Manifest, Table
from interp.report.ensemble_figures import plot_rows, text_table
from interp.sources import PipelineInputs, pipeline_field
from interp.validation import MAX_STEPS, MAX_VIDEOS, each, int_range, number


@dataclass
class EnsembleConfig(ExperimentConfig):
    # seeds = N, the seeds merged (not seed values); K = 0 merges nothing (the sweep's own baseline)
    field_rules = {"seeds": each(int_range(1, MAX_VIDEOS), 1), "ks": each(int_range(0, MAX_STEPS)),
                   "temperatures": each(number(0, lo_open=True))}  # fmt: skip
    """On the testbed: accuracy over held-out mazes of each size. With ``pipeline`` (PipelineInputs
    fields), on a user's model: with no verifier, every variant's video is written for the user's own
    scorer, with statistics that need none (similarity to seed 0's output; the final latent's spread
    against a single seed's: a merged latent that is too smooth shows a ratio below 1)."""

    experiment = "ensemble"
    model: str = "testbed"
    sizes: list[int] = field(default_factory=lambda: [4, 5])  # in and out of distribution
    frames: int = 4
    n: int = 64  # held-out mazes per size
    first_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 5])
    ks: list[int] = field(default_factory=lambda: [1, 3])
    merges: list[str] = field(default_factory=lambda: ["mean", "rescaled", "x0"])
    temperatures: list[float] = field(default_factory=lambda: [0.8, 0.6])
    num_steps: int | None = None
    pipeline: dict | None = pipeline_field()
    scorer: str | None = None  # pipeline models: module:function of the decoded video -> a score per variant
    scorer_timeout: float | None = None  # seconds one scorer call may take (None: no limit)

    cli_help = {
        "model": "A shipped testbed (testbed, testbed-mixed), a folder of testbed weights, or a pipeline folder.",
        "sizes": "Maze sizes (4: in distribution); repeatable.",
        "frames": "Frames per video.",
        "n": "Held-out mazes per size.",
        "first_seed": "First maze seed (pipeline models: first noise seed).",
        "seeds": "Ensemble sizes N; repeatable.",
        "ks": "Merge after each of the first K steps; repeatable.",
        "merges": "Merge rules; repeatable.",
        "temperatures": "Control: initial-noise scales; repeatable.",
        "num_steps": "Denoising steps; default: the model's (50 for pipeline models).",
        "scorer": "Pipeline models: module:function of decoded frames (T, H, W, 3) -> a score for every variant.",
        "scorer_timeout": "Seconds one scorer call may take (default: no limit).",
    }
    cli_flags = {"n": ("-n", "--n"), "sizes": ("--size",), "ks": ("--k",), "merges": ("--merge",),
                 "temperatures": ("--temperature",)}  # fmt: skip


def _row(name: str, size: int, solved: np.ndarray, **extra) -> dict:
    lo, hi = wilson_interval(int(solved.sum()), len(solved))
    row = {"size": size, "method": name, "accuracy": float(solved.mean()), "ci95": [lo, hi], "n": len(solved)}
    return {**row, **extra, "solved": solved.astype(int).tolist()}  # per maze: for paired tests


def _write_rows(rows: list[dict], cfg, out):
    """ensemble.json (config + rows) and ensemble.csv in ``out``; the table."""
    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ensemble.json").write_text(json.dumps({"config": cfg.to_dict(), "rows": rows}, indent=2))
    table = pd.DataFrame(rows)
    table.to_csv(out / "ensemble.csv", index=False)
    return out, table


def run_ensemble(cfg: EnsembleConfig, adapter=None, progress: bool = True, out=None, executor=None) -> list[dict]:
    """Accuracy rows: single seed, best-of-N oracle, ensembles (N, K, rule), shrunk-noise and
    temperature controls, per maze size. The seeds of one maze: maze seed + 1,000,003 * i.
    With ``cfg.pipeline``: ``run_pipeline_ensemble`` (videos and latents go to ``out``). ``executor``:
    where the runs go (this process, or a ``RayExecutor``): a unit is one size's seeds or one variant."""
    if cfg.pipeline is not None:
        if out is None:
            raise ValueError("the pipeline ensemble writes its videos: give an output folder")
        if executor is not None and not isinstance(executor, LocalExecutor):
            raise ValueError("the pipeline ensemble (videos per sample) runs in one process: drop --ray")
        return run_pipeline_ensemble(cfg, out, progress)
    r = prepare(cfg, adapter)
    units = [(i, v) for i in range(len(cfg.sizes)) for v in [None, *range(len(r.variants))]]
    solved = dict(zip(units, executor_or_local(executor).map(SWEEP, cfg, r, units, progress, "ensembles")))
    rows: list[dict] = []
    for i, size in enumerate(cfg.sizes):
        solved_each = solved[(i, None)]
        rows.append(_row("single seed", size, solved_each[:, 0], n_seeds=1))
        for n_seeds in cfg.seeds:
            if n_seeds > 1:
                rows.append(_row("best of N (oracle)", size, solved_each[:, :n_seeds].any(1), n_seeds=n_seeds))
        for v, (_, info, *_) in enumerate(r.variants):
            extra = {key: value for key, value in info.items() if key != "method"}
            rows.append(_row(info["method"], size, solved[(i, v)], **extra))
    return rows


def _solved_of(r: MazeSeeds, unit: tuple[int, int | None]) -> np.ndarray:
    """The unit of work: size unit[0]'s independent seeds (solved per maze, seed) or its variant unit[1]."""
    mazes, cond, noises = r.inputs[unit[0]]
    if unit[1] is None:
        independent = sample_groups(r.adapter, noises, cond, noises.shape[1], r.num_steps)
        return np.stack([verdicts(r.adapter, independent[:, i], mazes) for i in range(noises.shape[1])], 1)
    _, _, n_seeds, hooks, scale = r.variants[unit[1]]
    return verdicts(r.adapter, sample_groups(r.adapter, noises, cond, n_seeds, r.num_steps, hooks, scale)[:, 0], mazes)


def save_ensemble(rows: list[dict], cfg: EnsembleConfig, out) -> Manifest:
    """ensemble.json (config + rows), ensemble.csv, a printable table and a figure, with the manifest."""
    if cfg.pipeline is not None:
        return _save_pipeline_ensemble(rows, cfg, out)
    out, _ = _write_rows(rows, cfg, out)
    lines = text_table(rows)
    (out / "ensemble.txt").write_text("\n".join(lines) + "\n")
    plot_rows(rows, out / "ensemble.png")
    manifest = Manifest("ensemble", "seed ensemble", "ensemble", cfg.to_dict())
    paired = "accuracy with 95% Wilson intervals; beside each method its exact McNemar test against one seed"
    manifest.add(out / "ensemble.png", "figure", paired + " on the same mazes")
    manifest.add(out / "ensemble.json", "data", "config and rows")
    manifest.add(out / "ensemble.csv", "table", "rows as CSV")
    manifest.add(out / "ensemble.txt", "table", "rows as text")
    manifest.notes.append(
        "The controls (one seed with its noise shrunk as the mean of N seeds shrinks it; low temperature) say "
        "how much of an ensemble's gain is a temperature effect: a gain is more than that only where it clears "
        "the controls' intervals."
    )
    table_rows = [{**r, "ci95": f"{r['ci95'][0]:.1%}-{r['ci95'][1]:.1%}"} for r in rows]
    columns = ["size", "method", "n_seeds", "k", "scale", "accuracy", "ci95", "n"]
    manifest.tables.append(Table("accuracy per method", columns, table_rows, {"accuracy": ".3f", "scale": ".2f"}))
    manifest.headline = lines
    add_paired(manifest, rows)
    save_examples(cfg, out, manifest)
    manifest.claims.extend(ensemble_gain(rows))
    manifest.write(out)
    return manifest


# -- a user's model: no verifier, so the outputs and their statistics -------------------------------
def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-12))


def run_pipeline_ensemble(cfg: EnsembleConfig, out, progress: bool = True) -> list[dict]:
    """Per sample: N independent seeds, each ensemble (N, K, rule), the shrunk-noise and temperature
    controls; final latents in ``finals.safetensors`` and decoded GIFs under ``videos/``. Seeds of
    every sample: first_seed + i."""
    from safetensors.torch import save_file

    from interp.report.filmstrip import save_gif

    if not isinstance(cfg.pipeline, dict):
        raise ValueError(f"pipeline must be an object of PipelineInputs fields, got {type(cfg.pipeline).__name__}")
    p = PipelineInputs(**cfg.pipeline)
    check_sweep(cfg.seeds, cfg.ks, cfg.merges, p.num_steps)
    adapter, samples = p.load()
    scorer = None
    if cfg.scorer is not None:
        from interp.analysis.convergence import load_scorer

        scorer = load_scorer(cfg.scorer, cfg.scorer_timeout)
        if scorer.needs_sample:  # its truth read now, before any sample is run (``maze``: maze.json)
            from interp.tasks.maze_data import read_maze

            for item in samples:
                read_maze(item.folder)
    if adapter.prediction != "flow" and set(cfg.merges) - {"mean"}:
        raise ValueError(f"{adapter.name} is not a flow-matching model: only the 'mean' merge applies")
    shape = p.latent_shape(adapter)
    device = adapter.device
    n_max = max(cfg.seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    finals: dict[str, torch.Tensor] = {}
    for item in tqdm(samples, disable=not progress, desc="ensembles per sample"):
        noise = initial_noise([cfg.first_seed + i for i in range(n_max)], shape, device, torch.float32)
        one = p.conditioning(adapter, [item], noise[:1])

        def run(n_seeds: int, hooks=(), scale: float = 1.0, noise=noise, one=one) -> torch.Tensor:
            with torch.no_grad():
                result = sample(
                    adapter, noise[:n_seeds] * scale, repeat_conditioning(one, 0, n_seeds), p.num_steps,
                    hooks=list(hooks), scheduler=adapter.make_scheduler(None),
                )  # fmt: skip
            return result.latents

        variants: dict[str, tuple[torch.Tensor, dict]] = {}
        independent = run(n_max)
        for i in range(n_max):
            variants[f"seed{i}"] = (independent[i], {"method": "single seed", "seed": cfg.first_seed + i})
        flow = adapter.prediction == "flow"
        for name, info, n_seeds, hooks, scale in variant_runs(cfg.seeds, cfg.ks, cfg.merges, cfg.temperatures, flow):
            variants[name] = (run(n_seeds, hooks, scale)[0], info)
        reference = independent[0]
        spread = float(reference.float().std())
        folder = out / "videos" / item.name
        for name, (final, info) in variants.items():
            ratio = float(final.float().std()) / spread if spread > 0 else float("nan")
            rows.append({"sample": item.name, "variant": name, **info,
                         "similarity_to_seed0": _cosine(final, reference), "latent_std_ratio": ratio})  # fmt: skip
            finals[f"{item.name}/{name}"] = final.detach().float().cpu().contiguous()
            if adapter.vae is not None:
                with torch.no_grad():
                    video = adapter.decode(final[None].to(device))[0]
                save_gif(video, folder / f"{name}.gif", scale=1)
                if scorer is not None:
                    rows[-1]["score"] = scorer(video, f"sample {item.name}, {name}", item.folder)
    save_file(finals, str(out / "finals.safetensors"))
    return rows


def _save_pipeline_ensemble(rows: list[dict], cfg: EnsembleConfig, out) -> Manifest:
    """ensemble.json (config + rows) and ensemble.csv beside the videos and final latents."""
    out, table = _write_rows(rows, cfg, out)
    text = table[["sample", "variant", "similarity_to_seed0", "latent_std_ratio"]].to_string(index=False)
    manifest = Manifest("ensemble", "seed ensemble (no verifier)", "ensemble", cfg.to_dict())
    manifest.add(out / "ensemble.json", "data", "config and rows")
    manifest.add(out / "ensemble.csv", "table", "rows as CSV")
    manifest.add(out / "finals.safetensors", "data", "final latent of every variant")
    for gif in sorted((out / "videos").rglob("*.gif")):
        manifest.add(gif, "video", gif.relative_to(out).as_posix())
    manifest.notes.append(
        "No verifier for this model: each variant's video is in videos/ for your own scorer; a latent spread "
        "ratio below 1 means a smoother (lower-temperature) output than one seed's."
    )
    columns = ["sample", "variant", "method", "n_seeds", "k", "scale", "similarity_to_seed0", "latent_std_ratio"]
    formats = {"similarity_to_seed0": ".3f", "latent_std_ratio": ".3f", "scale": ".2f", "score": ".3f"}
    if cfg.scorer is not None:
        columns.append("score")
        by_method = table.groupby("variant", sort=False)["score"].mean()
        manifest.headline.append(f"mean score ({cfg.scorer}) per variant: "
                                 + ", ".join(f"{k} {v:.3f}" for k, v in by_method.items()))  # fmt: skip
    manifest.tables.append(Table("variants", columns, rows, formats))
    manifest.headline = text.splitlines()
    manifest.write(out)
    return manifest


def demo(ctx) -> None:
    """The study: the seed ensemble (N = 1, 3; K = 1) with its controls, at ``ctx.ensemble_size``
    (5x5 for the one-size testbed: its 4x4 is solved; the largest trained size otherwise)."""
    n, size = ctx.options["n_ensemble"], ctx.ensemble_size
    if not n:
        return
    ctx.stage(f"seed ensemble on {n} held-out {size}x{size} mazes (N = 1, 3; K = 1) with its controls")
    cfg = EnsembleConfig(model=ctx.model, sizes=[size], frames=ctx.frames, n=n, seeds=[1, 3], ks=[1],
                         temperatures=[0.577])  # fmt: skip
    rows = run_ensemble(cfg, ctx.adapter, progress=False)
    save_ensemble(rows, cfg, ctx.out / "ensemble")
    acc = {(r["method"], r.get("n_seeds")): r["accuracy"] for r in rows}
    ctx.headline.append(
        f"seed ensemble, {size}x{size}: one seed {acc[('single seed', 1)]:.0%}, "
        f"mean of 3 {acc[('ensemble (mean)', 3)]:.0%}, "
        f"rescaled {acc[('ensemble (rescaled)', 3)]:.0%}, best of 3 {acc[('best of N (oracle)', 3)]:.0%}; "
        f"control one seed x 1/sqrt(3) {acc[('control: noise x 1/sqrt(N)', 3)]:.0%}"
    )


SWEEP = Sweep("ensemble", EnsembleConfig, prepare, _solved_of)
EXPERIMENT = register(
    Experiment("ensemble", EnsembleConfig, run_ensemble, save_ensemble, run_writes=True, demo=demo, demo_order=70)
)
