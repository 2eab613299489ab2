"""Early-step selection: run N seeds for k steps, score each seed's x0_hat after its k-th model
call, continue only the best to the end; accuracy against compute (model calls per maze), beside
one seed, best-of-N at the end (the verifier as an oracle) and the seed ensemble.

The idea is "Video Models Reason Early" (arXiv 2603.30043). Scores: ``verifier`` (the maze verifier
on x0_hat), ``connectivity`` (verifier-free: the video's own lit cells join its start to its goal,
``interp.tasks.maze_scoring``), or ``module:function`` of the decoded x0_hat video (T, H, W, 3).

The sampler is deterministic, so a seed continued from step k follows the trajectory it would have
followed anyway (its latent and its rows of the scheduler's history are selected together, so the
continuation is no edit and a multistep solver keeps its history, ``interp.execution.edits``):
one full run of every seed, with x0_hat kept at each k, gives every (N, k, score)
selection exactly. ``select_early`` runs the procedure literally (k steps for N seeds, then one
row resumed); the tests check that both agree and that N = 1 is plain sampling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from interp.analysis.claims import CANNOT_TELL, NOT_SHOWN, SHOWS, claim, mcnemar
from interp.evaluation import verify_latents, wilson_interval
from interp.execution.loop import KeepX0, sample, select_scheduler_rows
from interp.execution.seed_merge import SeedMerge, sample_merged
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.experiments.ensemble_runs import NOISE_STRIDE
from interp.manifest import Manifest, Table
from interp.sources import MazeSizes, SourceConfig
from interp.tasks.maze_scoring import connectivity_score, verifier_score
from interp.validation import MAX_VIDEOS, each, int_range

BUILT_IN = {"verifier": verifier_score, "connectivity": connectivity_score}


def load_score(spec: str, timeout: float | None = None):
    """A score of (x0_hat latent, maze) -> number: a built-in name, or module:function of decoded frames."""
    if spec in BUILT_IN:
        return BUILT_IN[spec], False
    from interp.analysis.convergence import load_scorer

    if ":" not in spec:
        raise ValueError(f"score {spec!r}: one of {', '.join(BUILT_IN)} or module:function")
    return load_scorer(spec, timeout), True


@dataclass
class EarlySelectConfig(MazeSizes, SourceConfig, ExperimentConfig):
    """A maze model's source (``interp.sources.SourceConfig``: the testbed's generated mazes of each of
    ``sizes``, or a maze data folder): every selection is judged by the maze verifier."""

    field_rules = {**SourceConfig.field_rules, "n_seeds": each(int_range(1, MAX_VIDEOS), 1)}  # N seeds per maze
    experiment = "early_select"
    old_spellings: ClassVar[dict[str, str]] = {**SourceConfig.old_spellings, "seeds": "n_seeds"}  # N
    n: int = 64  # held-out mazes per size
    sizes: list[int] = field(default_factory=lambda: [6])
    n_seeds: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # N
    ks: list[int] = field(default_factory=lambda: [1, 2, 4])
    scores: list[str] = field(default_factory=lambda: ["verifier", "connectivity"])
    scorer_timeout: float | None = None  # seconds one call of a module:function score may take
    batch_size: int = 128  # videos per forward (mazes x N seeds)

    cli_help = {
        **SourceConfig.cli_help,
        "model": "A maze model: a shipped testbed (testbed, testbed-mixed) or a folder of testbed weights.",
        "n": "Testbed without --data: held-out mazes per size.",
        "sizes": "Testbed without --data: maze sizes; repeatable.",
        "n_seeds": "Seeds run per maze, N; repeatable.",
        "ks": "Steps run before choosing, k; repeatable.",
        "scores": "verifier, connectivity (verifier-free) or module:function of decoded frames; repeatable.",
        "scorer_timeout": "Seconds one call of a module:function score may take (default: no limit).",
        "batch_size": "Videos per forward (mazes x N seeds).",
    }
    cli_flags = {**SourceConfig.cli_flags, "sizes": ("--size",), "n_seeds": ("--n-seeds", "--seeds"), "ks": ("--k",),
                 "scores": ("--score",)}  # fmt: skip

    def __post_init__(self):
        ExperimentConfig.__post_init__(self)  # interp.validation: types and ranges
        SourceConfig.__post_init__(self)
        if not self.n_seeds or min(self.n_seeds) < 1 or not self.ks or min(self.ks) < 1 or self.n < 1:
            raise ValueError("early selection needs N >= 1 seeds, k >= 1 steps and n >= 1 mazes")
        if not self.scores:
            raise ValueError("early selection needs at least one score")
        for spec in self.scores:
            load_score(spec)

    def check(self, pipeline: bool | None = None) -> None:
        if self.model_task() is None if pipeline is None else pipeline:
            raise ValueError(f"model {self.model}: early selection reads the maze verifier on the model's own "
                             "latents: it needs a maze model (the testbed), not a pipeline")  # fmt: skip
        super().check(pipeline)



def _scores(fn, decoded: bool, x0: np.ndarray, mazes, adapter) -> np.ndarray:
    if decoded:
        videos = adapter.decode(torch.as_tensor(x0, dtype=adapter.dtype, device=adapter.device))
        return np.array([fn(v, f"candidate {i}") for i, v in enumerate(videos)])
    return np.array([float(fn(z, m)) for z, m in zip(x0, mazes)])


def select_early(adapter, noise: torch.Tensor, cond: torch.Tensor, k: int, score, mazes, num_steps: int):
    """The procedure itself for one maze batch: ``noise`` (mazes, N, ...) run k steps, each maze's best
    seed by ``score(x0_hat, maze)`` continued to the end. Returns (final latents, chosen seed per maze)."""
    b, n = noise.shape[:2]
    keep = KeepX0([k - 1])
    with torch.no_grad():  # k = num_steps: the candidates are the finished runs
        head = sample(adapter, noise.flatten(0, 1), cond.repeat_interleave(n, 0), num_steps, hooks=[keep], end_step=k)
    scores = np.array([score(z, mazes[i // n]) for i, z in enumerate(keep.x0[k - 1])]).reshape(b, n)
    chosen = scores.argmax(1)  # ties: the lowest seed index
    rows = [i * n + int(c) for i, c in enumerate(chosen)]
    if k == num_steps:
        return head.latents[rows], chosen
    scheduler = select_scheduler_rows(head.scheduler, rows, b * n)
    with torch.no_grad():
        tail = sample(adapter, head.latents[rows], cond, num_steps, start_step=k, resume_scheduler=scheduler)
    return tail.latents, chosen


def _row(method: str, size: int, solved: np.ndarray, calls: int, **extra) -> dict:
    lo, hi = wilson_interval(int(solved.sum()), len(solved))
    return {"size": size, "method": method, "accuracy": float(solved.mean()), "ci95": [lo, hi], "n": len(solved),
            "model_calls": calls, "solved": solved.astype(int).tolist(), **extra}  # fmt: skip


def run_early_select(cfg: EarlySelectConfig, adapter=None, progress: bool = True) -> list[dict]:
    """Rows per group of mazes (size): single seed, best of N (oracle), the ensemble, and every (N, k, score)
    selection. Seed i of a maze: its own seed + i * NOISE_STRIDE."""
    from tqdm.auto import tqdm

    from interp.experiments._causal import maze_truths

    adapter = adapter or cfg.load()
    num_steps, shift = cfg.num_steps_of(adapter), cfg.shift_of(adapter)
    if max(cfg.ks) > num_steps:
        raise ValueError(f"k must be at most the {num_steps} denoising steps, got {max(cfg.ks)}")
    groups = [(source, source.videos(adapter)) for source in cfg.groups()]
    if any(maze_truths(adapter, videos) is None for _, videos in groups):
        raise ValueError(f"model {cfg.model}: early selection is judged by the maze verifier on the model's own "
                         "latents: it needs a maze model (the testbed) on mazes")  # fmt: skip
    scores = {spec: load_score(spec, cfg.scorer_timeout) for spec in cfg.scores}
    n_max, rows = max(cfg.n_seeds), []
    for source, videos in tqdm(groups, disable=not progress, desc="early selection"):
        mazes, n = maze_truths(adapter, videos), len(videos)
        size, shape = mazes[0].size, source.latent_shape(adapter, videos)
        solved = np.zeros((n, n_max), dtype=bool)
        picked = {(spec, k): np.zeros((n, n_max)) for spec in cfg.scores for k in cfg.ks}
        ensemble = {m: np.zeros(n, dtype=bool) for m in cfg.n_seeds if m > 1}
        per_batch = max(1, cfg.batch_size // n_max)
        for lo in range(0, n, per_batch):
            chunk, chunk_videos = mazes[lo : lo + per_batch], videos[lo : lo + per_batch]
            noise = source.noise(adapter, [v.seed + NOISE_STRIDE * i for v in chunk_videos for i in range(n_max)],
                                 shape)  # fmt: skip
            cond = source.inputs(adapter, chunk_videos)[1].repeat_interleave(n_max, 0)
            keep = KeepX0([k - 1 for k in cfg.ks])
            with torch.no_grad():
                final = sample(adapter, noise, cond, num_steps, hooks=[keep], shift=shift).latents
            many = [m for m in chunk for _ in range(n_max)]
            solved[lo : lo + len(chunk)] = np.array([v.solved for v in verify_latents(adapter, final, many)]).reshape(
                len(chunk), n_max
            )
            for (spec, k), table in picked.items():
                fn, decoded = scores[spec]
                values = _scores(fn, decoded, keep.x0[k - 1], many, adapter)
                table[lo : lo + len(chunk)] = values.reshape(len(chunk), n_max)
            for m in ensemble:  # the rescaled mean after the first step (the ensemble experiment's default)
                rows_m = [i * n_max + j for i in range(len(chunk)) for j in range(m)]
                merged = sample_merged(adapter, noise[rows_m], cond[rows_m], num_steps, SeedMerge(m, 1),
                                       scheduler=adapter.make_scheduler(shift))  # fmt: skip
                ensemble[m][lo : lo + len(chunk)] = [v.solved for v in verify_latents(adapter, merged[::m], chunk)]
        rows.append(_row("single seed", size, solved[:, 0], num_steps, n_seeds=1))
        for m in (m for m in cfg.n_seeds if m > 1):
            rows.append(_row("best of N at the end (oracle)", size, solved[:, :m].any(1), m * num_steps, n_seeds=m))
            rows.append(_row("ensemble (rescaled, K=1)", size, ensemble[m], m + num_steps - 1, n_seeds=m))
            for (spec, k), table in picked.items():
                chosen = table[:, :m].argmax(1)
                rows.append(_row("early selection", size, solved[np.arange(n), chosen], m * k + num_steps - k,
                                 n_seeds=m, k=k, scorer=spec))  # fmt: skip
    return rows


def selection_claims(rows: list[dict]) -> list[dict]:
    """Per size and score: early selection at the largest N and smallest k against one seed (paired)."""
    out = []
    for size in sorted({r["size"] for r in rows}):
        sel = [r for r in rows if r["size"] == size and r["method"] == "early selection"]
        if not sel:
            continue
        single = next(r for r in rows if r["size"] == size and r["method"] == "single seed")
        n, k = max(r["n_seeds"] for r in sel), min(r["k"] for r in sel)
        for r in (r for r in sel if r["n_seeds"] == n and r["k"] == k):
            a, b = np.array(r["solved"], bool), np.array(single["solved"], bool)
            only_sel, only_single, p = mcnemar(a, b)
            name = f"early-step selection beats one seed ({size}x{size}, score {r['scorer']}, N={n}, k={k})"
            measurement = (f"{r['accuracy']:.0%} ({r['ci95'][0]:.0%}-{r['ci95'][1]:.0%}) at {r['model_calls']} "
                           f"calls; solved only by selection {only_sel}, only by one seed {only_single}")  # fmt: skip
            control = f"one seed: {single['accuracy']:.0%} at {single['model_calls']} calls (paired McNemar)"
            if p < 0.05:
                verdict = SHOWS if only_sel > only_single else NOT_SHOWN
                why = f"McNemar p = {p:.3g} < 0.05"
            else:
                verdict, why = (NOT_SHOWN if only_sel <= only_single else CANNOT_TELL), f"McNemar p = {p:.3g}"
            out.append(claim(name, measurement, control, verdict, why))
    return out


def save_early_select(rows: list[dict], cfg: EarlySelectConfig, out) -> Manifest:
    from interp.report.exploration_figures import selection_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "early_select.json").write_text(json.dumps({"config": cfg.to_dict(), "rows": rows}, indent=2))
    manifest = Manifest("early_select", "early-step selection", "ensemble", cfg.to_dict())
    manifest.add(selection_figure(rows, out / "early_select.png"), "figure",
                 "accuracy (95% Wilson) against model calls per maze; the ensemble runs one trajectory after "
                 "its merge, so its calls are N + steps - 1")  # fmt: skip
    manifest.add(out / "early_select.json", "data", "config and rows (with each maze's outcome)")
    table = [{k: (f"{v[0]:.1%}-{v[1]:.1%}" if k == "ci95" else v) for k, v in r.items() if k != "solved"} for r in rows]
    columns = ["size", "method", "n_seeds", "k", "scorer", "model_calls", "accuracy", "ci95", "n"]
    manifest.tables.append(Table("accuracy against compute", columns, table, {"accuracy": ".3f"}))
    manifest.claims.extend(selection_claims(rows))
    for size in sorted({r["size"] for r in rows}):
        sel = [r for r in rows if r["size"] == size]
        best = max((r for r in sel if r["method"] == "early selection"), key=lambda r: r["accuracy"], default=None)
        single = next(r for r in sel if r["method"] == "single seed")
        line = f"early selection {size}x{size}: one seed {single['accuracy']:.0%} ({single['model_calls']} calls)"
        if best is not None:
            line += (f"; best selection {best['accuracy']:.0%} (N={best['n_seeds']}, k={best['k']}, "
                     f"{best['scorer']}, {best['model_calls']} calls)")  # fmt: skip
        oracle = [r for r in sel if r["method"].startswith("best of N")]
        if oracle:
            top = max(oracle, key=lambda r: r["n_seeds"])
            line += f"; best of {top['n_seeds']} at the end {top['accuracy']:.0%} ({top['model_calls']} calls)"
        manifest.headline.append(line)
    manifest.write(out)
    return manifest


def demo(ctx) -> None:
    n = ctx.options["n_select"]
    if not n:
        return
    size = ctx.sizes[-1]
    ctx.stage(f"early-step selection on {n} held-out {size}x{size} mazes (N = 1-8, k = 1, 2, 4)")
    cfg = EarlySelectConfig(model=ctx.model, sizes=[size], num_frames=ctx.frames, n=n)
    manifest = save_early_select(run_early_select(cfg, ctx.adapter, progress=False), cfg, ctx.out / "early_select")
    ctx.headline.extend(manifest.headline)


def plan_early_select(cfg: EarlySelectConfig, out: Path):
    """Every maze by N seeds with x0_hat kept at each k, then each ensemble of N > 1 seeds (merged after the
    first step); a batch of mazes x N seeds at once."""
    import math

    from interp.plans import FIGURES, FLOAT32, Plan, model_weight_bytes

    adapter = cfg.load(skeleton=True)
    groups = [(source, source.videos(adapter)) for source in cfg.groups()]
    mazes, n_max = sum(len(v) for _, v in groups), max(cfg.n_seeds)
    runs = n_max + sum(n for n in cfg.n_seeds if n > 1)  # the seeds, then each ensemble's
    latent = max(math.prod(source.latent_shape(adapter, v)) for source, v in groups)
    batch = max(1, cfg.batch_size // n_max) * n_max
    weights = model_weight_bytes(cfg.model, cfg.torch_dtype)
    memory = weights + batch * latent * FLOAT32 * (3 + len(cfg.ks))  # latents, x0_hat kept per k
    return Plan("early_select", out, mazes * runs, cfg.num_steps_of(adapter), disk_bytes=FIGURES, memory_bytes=memory,
                details=[f"{mazes} mazes x {runs} runs (N seeds, then the ensembles), x0_hat kept at "
                         f"{len(cfg.ks)} steps"])  # fmt: skip


EXPERIMENT = register(
    Experiment("early_select", EarlySelectConfig, run_early_select, save_early_select, demo=demo, demo_order=72,
               plan=plan_early_select)
)
