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

import numpy as np
import torch

from interp.analysis.claims import CANNOT_TELL, NOT_SHOWN, SHOWS, claim, mcnemar
from interp.evaluation import verify_latents, wilson_interval
from interp.execution.loop import KeepX0, initial_noise, sample, select_scheduler_rows
from interp.execution.seed_merge import SeedMerge, sample_merged
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest, Table
from interp.sources import load_testbed
from interp.tasks import maze as maze_task
from interp.tasks.maze_scoring import connectivity_score, verifier_score
from interp.validation import MAX_VIDEOS, each, int_range

BUILT_IN = {"verifier": verifier_score, "connectivity": connectivity_score}
NOISE_STRIDE = 1_000_003  # noise seed of seed i of a maze: maze seed + i * stride (as the ensemble)


def load_score(spec: str, timeout: float | None = None):
    """A score of (x0_hat latent, maze) -> number: a built-in name, or module:function of decoded frames."""
    if spec in BUILT_IN:
        return BUILT_IN[spec], False
    from interp.analysis.convergence import load_scorer

    if ":" not in spec:
        raise ValueError(f"score {spec!r}: one of {', '.join(BUILT_IN)} or module:function")
    return load_scorer(spec, timeout), True


@dataclass
class EarlySelectConfig(ExperimentConfig):
    field_rules = {"seeds": each(int_range(1, MAX_VIDEOS), 1)}  # seeds = N, the seeds run per maze
    experiment = "early_select"
    model: str = "testbed"
    sizes: list[int] = field(default_factory=lambda: [6])
    frames: int = 4
    n: int = 64  # held-out mazes per size
    first_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # N
    ks: list[int] = field(default_factory=lambda: [1, 2, 4])
    scores: list[str] = field(default_factory=lambda: ["verifier", "connectivity"])
    scorer_timeout: float | None = None  # seconds one call of a module:function score may take
    num_steps: int | None = None
    batch_size: int = 128

    cli_help = {
        "model": "A shipped testbed (testbed, testbed-mixed) or a folder of testbed weights.",
        "sizes": "Maze sizes; repeatable.",
        "n": "Held-out mazes per size.",
        "seeds": "Seeds run per maze, N; repeatable.",
        "ks": "Steps run before choosing, k; repeatable.",
        "scores": "verifier, connectivity (verifier-free) or module:function of decoded frames; repeatable.",
        "scorer_timeout": "Seconds one call of a module:function score may take (default: no limit).",
    }
    cli_flags = {"n": ("-n", "--n"), "sizes": ("--size",), "ks": ("--k",), "scores": ("--score",)}

    def __post_init__(self):
        super().__post_init__()  # interp.validation: types and ranges
        if not self.seeds or min(self.seeds) < 1 or not self.ks or min(self.ks) < 1 or self.n < 1:
            raise ValueError("early selection needs N >= 1 seeds, k >= 1 steps and n >= 1 mazes")
        if not self.scores:
            raise ValueError("early selection needs at least one score")
        for spec in self.scores:
            load_score(spec)


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
    """Rows per size: single seed, best of N (oracle), the ensemble, and every (N, k, score) selection."""
    from tqdm.auto import tqdm

    adapter = adapter or load_testbed(cfg.model)
    num_steps = cfg.num_steps or adapter.defaults.num_steps
    if max(cfg.ks) > num_steps:
        raise ValueError(f"k must be at most the {num_steps} denoising steps, got {max(cfg.ks)}")
    scores = {spec: load_score(spec, cfg.scorer_timeout) for spec in cfg.scores}
    n_max, rows = max(cfg.seeds), []
    for size in tqdm(cfg.sizes, disable=not progress, desc="early selection"):
        mazes = [maze_task.generate_maze(size, cfg.first_seed + i) for i in range(cfg.n)]
        shape = adapter.latent_shape(size, cfg.frames)
        solved = np.zeros((cfg.n, n_max), dtype=bool)
        picked = {(spec, k): np.zeros((cfg.n, n_max)) for spec in cfg.scores for k in cfg.ks}
        ensemble = {n: np.zeros(cfg.n, dtype=bool) for n in cfg.seeds if n > 1}
        per_batch = max(1, cfg.batch_size // n_max)
        for lo in range(0, cfg.n, per_batch):
            chunk = mazes[lo : lo + per_batch]
            seeds = [m.seed + NOISE_STRIDE * i for m in chunk for i in range(n_max)]
            noise = initial_noise(seeds, shape, adapter.device, adapter.dtype)
            cond = adapter.conditioning(chunk, cfg.frames).repeat_interleave(n_max, 0)
            keep = KeepX0([k - 1 for k in cfg.ks])
            with torch.no_grad():
                final = sample(adapter, noise, cond, num_steps, hooks=[keep]).latents
            many = [m for m in chunk for _ in range(n_max)]
            solved[lo : lo + len(chunk)] = np.array([v.solved for v in verify_latents(adapter, final, many)]).reshape(
                len(chunk), n_max
            )
            for (spec, k), table in picked.items():
                fn, decoded = scores[spec]
                values = _scores(fn, decoded, keep.x0[k - 1], many, adapter)
                table[lo : lo + len(chunk)] = values.reshape(len(chunk), n_max)
            for n in ensemble:  # the rescaled mean after the first step (the ensemble experiment's default)
                rows_n = [i * n_max + j for i in range(len(chunk)) for j in range(n)]
                merged = sample_merged(adapter, noise[rows_n], cond[rows_n], num_steps, SeedMerge(n, 1))
                ensemble[n][lo : lo + len(chunk)] = [v.solved for v in verify_latents(adapter, merged[::n], chunk)]
        rows.append(_row("single seed", size, solved[:, 0], num_steps, n_seeds=1))
        for n in (n for n in cfg.seeds if n > 1):
            rows.append(_row("best of N at the end (oracle)", size, solved[:, :n].any(1), n * num_steps, n_seeds=n))
            rows.append(_row("ensemble (rescaled, K=1)", size, ensemble[n], n + num_steps - 1, n_seeds=n))
            for (spec, k), table in picked.items():
                chosen = table[:, :n].argmax(1)
                rows.append(_row("early selection", size, solved[np.arange(cfg.n), chosen], n * k + num_steps - k,
                                 n_seeds=n, k=k, scorer=spec))  # fmt: skip
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
    cfg = EarlySelectConfig(model=ctx.model, sizes=[size], frames=ctx.frames, n=n)
    manifest = save_early_select(run_early_select(cfg, ctx.adapter, progress=False), cfg, ctx.out / "early_select")
    ctx.headline.extend(manifest.headline)


EXPERIMENT = register(
    Experiment("early_select", EarlySelectConfig, run_early_select, save_early_select, demo=demo, demo_order=72)
)
