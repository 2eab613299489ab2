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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from interp.analysis.claims import ensemble_gain
from interp.evaluation import wilson_interval
from interp.experiments._causal import CausalConfig
from interp.experiments._ensemble_examples import add_paired, save_examples
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.experiments.ensemble_runs import NOISE_STRIDE, EnsembleRuns, prepare, run_unit, verdicts
from interp.experiments.executors import Sweep, executor_or_local
from interp.manifest import Manifest, Table
from interp.report.ensemble_figures import plot_rows, text_table
from interp.sources import MazeSizes, SourceConfig
from interp.validation import MAX_STEPS, MAX_VIDEOS, each, int_range, number


@dataclass
class EnsembleConfig(MazeSizes, SourceConfig, ExperimentConfig):
    """Any model's source (``interp.sources.SourceConfig``): the testbed's generated mazes of each of
    ``sizes``, or the samples of a data folder. Where a maze model's verifier judges the videos: accuracy
    per group of videos. Otherwise every variant's video is written for the user's own scorer, with
    statistics that need none (similarity to seed 0's output; the final latent's spread against a single
    seed's: a merged latent that is too smooth shows a ratio below 1)."""

    # ensemble_sizes = N, the seeds merged (not seed values: the source's ``seeds`` are those); K = 0 merges
    # nothing (the sweep's own baseline)
    field_rules = {**SourceConfig.field_rules, "ensemble_sizes": each(int_range(1, MAX_VIDEOS), 1),
                   "ks": each(int_range(0, MAX_STEPS)), "temperatures": each(number(0, lo_open=True))}  # fmt: skip
    experiment = "ensemble"
    old_spellings: ClassVar[dict[str, str]] = {**SourceConfig.old_spellings, "seeds": "ensemble_sizes"}  # N
    n: int = 64  # held-out mazes per size
    sizes: list[int] = field(default_factory=lambda: [4, 5])  # in and out of distribution (no data)
    ensemble_sizes: list[int] = field(default_factory=lambda: [1, 2, 3, 5])
    ks: list[int] = field(default_factory=lambda: [1, 3])
    merges: list[str] = field(default_factory=lambda: ["mean", "rescaled", "x0"])
    temperatures: list[float] = field(default_factory=lambda: [0.8, 0.6])
    scorer: str | None = None  # no verifier: module:function of the decoded video -> a score per variant
    scorer_timeout: float | None = None  # seconds one scorer call may take (None: no limit)

    cli_help = {
        **SourceConfig.cli_help,
        "n": "Testbed without --data: held-out mazes per size.",
        "sizes": "Testbed without --data: maze sizes (4: in distribution); repeatable.",
        "ensemble_sizes": "Ensemble sizes N (seeds merged); repeatable.",
        "ks": "Merge after each of the first K steps; repeatable.",
        "merges": "Merge rules; repeatable.",
        "temperatures": "Control: initial-noise scales; repeatable.",
        "scorer": "No verifier: module:function of decoded frames (T, H, W, 3) -> a score for every variant.",
        "scorer_timeout": "Seconds one scorer call may take (default: no limit).",
    }
    cli_flags = {**SourceConfig.cli_flags, "sizes": ("--size",), "ensemble_sizes": ("--ensemble-size", "--seeds"),
                 "ks": ("--k",), "merges": ("--merge",), "temperatures": ("--temperature",)}  # fmt: skip
    def __post_init__(self):
        ExperimentConfig.__post_init__(self)  # interp.validation: types and ranges
        SourceConfig.__post_init__(self)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """A config written before one source: a ``pipeline`` object of fields becomes the config's own (its
        noise seeds were first_seed + i; now seed + 1,000,003 i, as the testbed's)."""
        data = dict(data)
        if isinstance(data.get("pipeline"), dict):
            first = data.pop("first_seed", 0)
            data["pipeline"] = {**data["pipeline"], "seed": data["pipeline"].get("seed", first)}
            for name in ("n", "sizes"):  # the testbed's, never read with a pipeline
                data.pop(name, None)
        return CausalConfig.upgrade.__func__(cls, data)


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
    """Rows of every group of videos: where a maze model's verifier judges them, accuracy of one seed,
    best-of-N (oracle), the ensembles (N, K, rule) and the shrunk-noise and temperature controls; else per
    video and variant, statistics of the final latent, its decoded video written to ``out``. Seed i of a
    video: its own seed + 1,000,003 * i. ``executor``: where the units go (this process, or a
    ``RayExecutor``): a unit is one batch of a group's videos, its independent seeds or one variant."""
    r = prepare(cfg, adapter)
    if any(g.mazes is None for g in r.groups) and out is None:
        raise ValueError("with no verifier the ensemble writes its videos: give an output folder")
    units = r.units()
    finals = dict(zip(units, executor_or_local(executor).map(SWEEP, cfg, r, units, progress, "ensembles")))
    rows: list[dict] = []
    for g, group in enumerate(r.groups):
        def joined(v, g=g, group=group):  # a variant's finals over the group's batches, in video order
            return torch.cat([finals[(g, b, v)] for b in range(len(group.batches))])

        outcome = _accuracy_rows if group.mazes is not None else _latent_rows
        rows += outcome(r, group, joined(None), [joined(v) for v in range(len(r.variants))], out)
    if any(g.mazes is None for g in r.groups):
        _save_finals(r, finals, out)
    return rows


def _accuracy_rows(r: EnsembleRuns, group, independent: torch.Tensor, answers: list, out) -> list[dict]:
    """A maze model's verdicts: one seed and best-of-N (oracle) from the independent seeds, then each
    variant's answer (its first seed's row)."""
    solved_each = np.stack([verdicts(r.adapter, independent[:, i], group.mazes) for i in range(independent.shape[1])],
                           1)  # fmt: skip
    rows = [_row("single seed", group.size, solved_each[:, 0], n_seeds=1)]
    for n_seeds in r.cfg.ensemble_sizes:
        if n_seeds > 1:
            rows.append(_row("best of N (oracle)", group.size, solved_each[:, :n_seeds].any(1), n_seeds=n_seeds))
    for (_, info, *_), final in zip(r.variants, answers):
        extra = {key: value for key, value in info.items() if key != "method"}
        rows.append(_row(info["method"], group.size, verdicts(r.adapter, final, group.mazes), **extra))
    return rows


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-12))


def _latent_rows(r: EnsembleRuns, group, independent: torch.Tensor, answers: list, out) -> list[dict]:
    """No verifier: per video and variant, the similarity of its final latent to seed 0's and its spread
    against seed 0's; each decoded to ``out/videos/<video>/<variant>.gif`` and scored by the user's scorer."""
    from interp.report.filmstrip import save_gif

    adapter, scorer, rows = r.adapter, r.scorer, []
    for i, video in enumerate(group.videos):
        variants = {f"seed{j}": (independent[i, j], {"method": "single seed", "seed": video.seed + j * NOISE_STRIDE})
                    for j in range(independent.shape[1])}  # fmt: skip
        variants.update({name: (answer[i], info) for (name, info, *_), answer in zip(r.variants, answers)})
        reference = independent[i, 0]
        spread = float(reference.float().std())
        for name, (final, info) in variants.items():
            ratio = float(final.float().std()) / spread if spread > 0 else float("nan")
            rows.append({"video": video.key, "sample": video.sample.name, "variant": name, **info,
                         "similarity_to_seed0": _cosine(final, reference), "latent_std_ratio": ratio})  # fmt: skip
            if adapter.vae is not None:
                with torch.no_grad():
                    frames = adapter.decode(final[None].to(adapter.device))[0]
                save_gif(frames, Path(out) / "videos" / video.key / f"{name}.gif", scale=1)
                if scorer is not None:
                    rows[-1]["score"] = scorer(frames, f"sample {video.key}, {name}", video.sample.folder)
    return rows


def _save_finals(r: EnsembleRuns, finals: dict, out) -> None:
    """Every final latent of the groups with no verifier, by video and variant (safetensors)."""
    from safetensors.torch import save_file

    kept: dict[str, torch.Tensor] = {}
    for (g, b, v), latents in finals.items():
        group = r.groups[g]
        if group.mazes is not None:
            continue
        for row, i in enumerate(group.batches[b]):
            key = group.videos[i].key
            if v is None:
                for j in range(latents.shape[1]):
                    kept[f"{key}/seed{j}"] = latents[row, j].detach().float().cpu().contiguous()
            else:
                kept[f"{key}/{r.variants[v][0]}"] = latents[row].detach().float().cpu().contiguous()
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(kept, str(Path(out) / "finals.safetensors"))


def save_ensemble(rows: list[dict], cfg: EnsembleConfig, out) -> Manifest:
    """ensemble.json (config + rows), ensemble.csv, a printable table and a figure, with the manifest."""
    if rows and "accuracy" not in rows[0]:
        return _save_latent_rows(rows, cfg, out)
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


def _save_latent_rows(rows: list[dict], cfg: EnsembleConfig, out) -> Manifest:
    """ensemble.json (config + rows) and ensemble.csv beside the videos and final latents."""
    out, table = _write_rows(rows, cfg, out)
    text = table[["video", "variant", "similarity_to_seed0", "latent_std_ratio"]].to_string(index=False)
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
    columns = ["video", "variant", "method", "n_seeds", "k", "scale", "similarity_to_seed0", "latent_std_ratio"]
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
    cfg = EnsembleConfig(model=ctx.model, sizes=[size], num_frames=ctx.frames, n=n, ensemble_sizes=[1, 3], ks=[1],
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


def plan_ensemble(cfg: EnsembleConfig, out: Path, executor=None):
    """Every video of every group sampled by N seeds and by each variant; with no verifier every final
    latent is kept and decoded to a GIF. Laid out from the model's configs (a pipeline: nothing loaded)."""
    from interp.experiments._causal import maze_truths
    from interp.experiments.ensemble_runs import check_sweep, variants
    from interp.plans import FIGURES, FLOAT32, Plan, count, model_weight_bytes

    adapter = cfg.load(skeleton=True)
    num_steps = cfg.num_steps_of(adapter)
    check_sweep(cfg, adapter, num_steps)
    groups = [(source, source.videos(adapter)) for source in cfg.groups()]
    videos = sum(len(v) for _, v in groups)
    found = list(variants(cfg.ensemble_sizes, cfg.ks, cfg.merges, cfg.temperatures, adapter.prediction == "flow"))
    runs = max(cfg.ensemble_sizes) + len(found)
    latent = max(math.prod(source.latent_shape(adapter, v)) for source, v in groups)
    weights = model_weight_bytes(cfg.model, cfg.torch_dtype)
    batch = max(source.batch_of(adapter, None, task_batch=len(v)) for source, v in groups) * max(cfg.ensemble_sizes)
    memory = weights + 3 * batch * latent * FLOAT32  # the batch's latents, x0_hat and velocity
    verified = all(maze_truths(adapter, v) is not None for _, v in groups)
    kept = 0 if verified else videos * runs * latent * FLOAT32 * 2  # each final latent and its GIF (at most)
    what = (f"{count(videos, 'video')} x {runs} runs (seeds, ensembles, controls)" + ("" if verified else
            ", each final kept and a GIF"))  # fmt: skip
    return Plan("ensemble", out, videos * runs, num_steps, disk_bytes=FIGURES + kept, memory_bytes=memory,
                details=[what])


SWEEP = Sweep("ensemble", EnsembleConfig, prepare, run_unit)
EXPERIMENT = register(
    Experiment("ensemble", EnsembleConfig, run_ensemble, save_ensemble, run_writes=True, demo=demo, demo_order=70,
               plan=plan_ensemble)
)
