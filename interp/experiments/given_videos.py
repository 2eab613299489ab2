"""A correct video against the model's own generation (issue 32, item 4): ``interp given_videos STORE`` takes a
store of the model's own generations of maze samples, traces the same mazes' ground-truth videos (the same noise
seeds; forward-noised or inverted, ``interp trace --video-file``) into a second store, probes both on one
target per (step, layer) with the probes' controls and intervals, and says from which step the answer is
decodable in each: is the solution readable from a correct video earlier in the noise than the model's own
generation gets to it?"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activations.reader import ActivationStore
from interp.analysis.claims import CANNOT_TELL, NOT_SHOWN, SHOWS, claim
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest, Table
from interp.sources import SourceConfig


@dataclass
class GivenVideosConfig(ExperimentConfig):
    field_rules = {k: SourceConfig.field_rules[k] for k in ("noising", "solver")}
    experiment = "given_videos"
    store: str = ""  # a store of the model's own generations of maze samples
    target: str = "on_path"
    layers: str = "all"  # stored layers probed in both
    steps: str = "all"  # stored steps probed in both
    noising: str = "forward"
    solver: str = "euler"
    seed: int = 0
    folds: int = 3

    cli_arguments = ("store",)
    cli_help = {
        "store": "A store of the model's own generations of maze samples (interp trace).",
        "target": "The per-token target probed in both stores.",
        "layers": "Stored layers probed, e.g. all, 0-7:3.",
        "steps": "Stored steps probed, e.g. all, 0-19:2.",
        "noising": "How the ground-truth videos are traced: forward or invert.",
        "solver": "With --noising invert: euler or heun.",
        "seed": "Seed of the probes' video split and control task.",
        "folds": "Cross-validation folds of the probes.",
    }


@dataclass
class GivenVideosResult:
    config: GivenVideosConfig
    rows: list[dict]  # per (store, step, layer): the probe's score, control, selectivity and intervals
    video_store: str
    first: dict  # store kind -> the first step whose selectivity interval lies above 0 (None: none)
    best_layer: int


def _check_target(target: str) -> None:
    from interp.tasks.maze_labels import MAZE_TARGETS, VIDEO_TARGETS

    if target not in MAZE_TARGETS:
        known = ", ".join(MAZE_TARGETS)
        why = "one label per video: no token to read it at" if target in VIDEO_TARGETS else "unknown"
        raise ValueError(f"--target {target!r}: {why}; per-token maze targets: {known}")


def _trace_config(store_path: str):
    from interp.experiments.trace import TraceConfig

    with ActivationStore(store_path) as store:
        record = store.layout.extra.get("trace_config")
        task = {store.meta(v).get("task") for v in store.completed_videos}
    if not isinstance(record, dict) or task != {"maze"}:
        raise ValueError(f"{store_path}: not a store of a maze model's generations (its trace config and maze "
                         "verdicts are read)")  # fmt: skip
    cfg = TraceConfig.from_dict({"experiment": "trace", **record})
    if cfg.video_file is not None:
        raise ValueError(f"{store_path} was traced from given videos already: give the model's own generations")
    return cfg


def _mazes_folder(cfg, frames: int, out: Path) -> str:
    """The maze sample folders with ground-truth videos: the source's own, or written for its generated mazes
    (the same seeds: the same mazes and noise)."""
    from interp.tasks.maze_data import sample_name, write_maze_samples

    if cfg.data is not None:
        return cfg.data
    folder = out / "mazes"
    expected = [sample_name(cfg.size, cfg.first_seed + i) for i in range(cfg.n)]
    if folder.is_dir():  # a rerun: only if it holds these very mazes
        found = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if found != expected:
            raise ValueError(f"{folder} holds other mazes than {cfg.n} {cfg.size}x{cfg.size} from seed "
                             f"{cfg.first_seed}: give another --out")  # fmt: skip
        return str(folder.resolve())
    write_maze_samples(folder, cfg.size, cfg.n, cfg.first_seed, frames, 8 * (2 * cfg.size + 1))
    return str(folder.resolve())


def run_given_videos(cfg: GivenVideosConfig, out, progress: bool = True) -> GivenVideosResult:
    from dataclasses import replace

    from interp.experiments.trace import run_trace
    from interp.tasks.maze_labels import MAZE
    from probes.run import ProbeConfig, run_probes

    _check_target(cfg.target)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generated = _trace_config(cfg.store)
    with ActivationStore(cfg.store) as store:
        steps, layers, frames = store.steps, store.layers, store.layout.latent_shape[1]
    generated_only = {f: type(generated).__dataclass_fields__[f].default for f in ("n", "size", "first_seed")}
    traced = replace(generated, data=_mazes_folder(generated, frames, out), video_file="ground_truth.gif",
                     noising=cfg.noising, solver=cfg.solver, attention=False, cross_attention=False,
                     steps=",".join(map(str, steps)), layers=",".join(map(str, layers)), **generated_only)  # fmt: skip
    video_store = run_trace(traced, out / "given.h5", progress=progress)
    probing = ProbeConfig(targets=[cfg.target], layers=cfg.layers, steps=cfg.steps, seed=cfg.seed, folds=cfg.folds)
    rows = []
    for kind, path in (("generated", cfg.store), ("given video", video_store)):
        table = run_probes(path, probing, progress=False, providers=[MAZE], write=False)
        for r in table.to_dict("records"):
            rows.append({"store": kind, **{k: r[k] for k in ("step", "layer", "metric", "value", "value_lo",
                         "value_hi", "control", "selectivity", "selectivity_lo", "selectivity_hi", "x_t",
                         "vae_latent", "n_test_videos")}})  # fmt: skip
    best_layer = max({r["layer"] for r in rows},
                     key=lambda k: np.nanmean([r["selectivity"] for r in rows if r["layer"] == k]))  # fmt: skip
    first = {}
    for kind in ("generated", "given video"):
        above = sorted(r["step"] for r in rows if r["store"] == kind and r["layer"] == best_layer
                       and r["selectivity_lo"] > 0)  # fmt: skip
        first[kind] = above[0] if above else None
    return GivenVideosResult(cfg, rows, str(video_store), first, best_layer)


def given_claim(result: GivenVideosResult) -> dict:
    cfg, first = result.config, result.first
    name = f"{cfg.target} is decodable from a correct video at an earlier step than from the model's own generation"
    at = {k: [r for r in result.rows if r["store"] == k and r["layer"] == result.best_layer] for k in first}
    shown = {k: (f"from step {v}" if v is not None else "at no probed step") for k, v in first.items()}
    by_step = {r["step"]: r["selectivity"] for r in at["generated"]}
    gaps = [(abs(r["selectivity"] - by_step[r["step"]]), r["step"]) for r in at["given video"] if r["step"] in by_step]
    gap, gap_step = max(gaps) if gaps else (float("nan"), None)
    measurement = (f"layer {result.best_layer}: the probe's selectivity interval lies above 0 {shown['given video']} "
                   f"on the ground-truth videos ({cfg.noising}), {shown['generated']} on the model's own; the largest "
                   f"difference of the two selectivities is {gap:.2f} (step {gap_step})")
    control = "the control task (random labels per token type) at each step, on the same mazes and noise seeds"
    why = f"the first step whose 95% interval of selectivity (probe - control) lies above 0, of {len(at['generated'])}"
    g, v = first["generated"], first["given video"]
    if v is not None and (g is None or v < g):
        return claim(name, measurement, control, SHOWS, why + " probed steps")
    if v is not None and g is not None and v >= g:
        return claim(name, measurement, control, NOT_SHOWN, why + " probed steps: not earlier")
    return claim(name, measurement, control, CANNOT_TELL, why + " probed steps: never in the given videos")


def save_given_videos(result: GivenVideosResult, cfg: GivenVideosConfig, out) -> Manifest:
    from interp.report.mpl import pyplot

    out = Path(out)
    clean = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
             for r in result.rows]  # fmt: skip
    (out / "given_videos.json").write_text(json.dumps({"config": cfg.to_dict(), "video_store": result.video_store,
                                                       "first": result.first, "best_layer": result.best_layer,
                                                       "rows": clean}, indent=2))  # fmt: skip
    manifest = Manifest("given_videos", f"{cfg.target}: ground-truth videos vs the model's own generations", "probes",
                        cfg.to_dict())  # fmt: skip
    manifest.add(out / "given_videos.json", "data", "per store, step and layer: the probe with its controls")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for kind, color in (("generated", "C0"), ("given video", "C3")):
        at = sorted((r for r in result.rows if r["store"] == kind and r["layer"] == result.best_layer),
                    key=lambda r: r["step"])  # fmt: skip
        steps = [r["step"] for r in at]
        ax.plot(steps, [r["selectivity"] for r in at], "o-", color=color, label=kind)
        ax.fill_between(steps, [r["selectivity_lo"] for r in at], [r["selectivity_hi"] for r in at], color=color,
                        alpha=0.2)  # fmt: skip
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set(xlabel="denoising step", ylabel="selectivity (probe - control)",
           title=f"{cfg.target}, layer {result.best_layer}: given videos ({cfg.noising}) vs own generations")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "given_videos.png", dpi=110)
    plt.close(fig)
    manifest.add(out / "given_videos.png", "figure", f"{cfg.target}: selectivity over steps, both stores")
    columns = ["store", "step", "layer", "metric", "value", "value_lo", "value_hi", "control", "selectivity",
               "selectivity_lo", "selectivity_hi", "x_t", "vae_latent"]
    formats = {k: ".2f" for k in columns[4:]}
    manifest.tables.append(Table(f"{cfg.target} probes: ground-truth videos vs the model's own generations",
                                 columns, [r for r in result.rows if r["layer"] == result.best_layer], formats))
    claim_row = given_claim(result)
    manifest.claims.append(claim_row)
    manifest.headline.append(f"{cfg.target} from given videos vs own generations: {claim_row['measurement']}")
    manifest.write(out)
    return manifest


def plan_given_videos(cfg: GivenVideosConfig, out: Path):
    from interp.plans import FIGURES, Plan

    _check_target(cfg.target)
    generated = _trace_config(cfg.store)
    with ActivationStore(cfg.store) as store:
        videos, steps, stored, sites = store.n_videos, store.layout.num_steps, len(store.steps), len(store.sites)
    calls = {"forward": 1, "invert": 3 if cfg.solver == "euler" else 4}[cfg.noising]
    return Plan("given_videos", out, videos, steps, stored, sites, FIGURES,
                details=[f"{videos} ground-truth videos of {generated.model}'s mazes traced ({cfg.noising}: {calls} "
                         f"x the model calls of a generation), then both stores probed on {cfg.target}"])


def demo(ctx) -> None:
    """The study: the trace's mazes as ground-truth videos, forward-noised, probed beside the generations."""
    ctx.stage("the trace's mazes as ground-truth videos (forward-noised) probed beside the model's own generations")
    cfg = GivenVideosConfig(store=str(ctx.store), layers="0-7:3", steps=ctx.options["probe_steps"])
    manifest = save_given_videos(run_given_videos(cfg, ctx.out / "given_videos", progress=False), cfg,
                                 ctx.out / "given_videos")  # fmt: skip
    ctx.headline += manifest.headline


EXPERIMENT = register(Experiment("given_videos", GivenVideosConfig, run_given_videos, save_given_videos,
                                 run_writes=True, plan=plan_given_videos, demo=demo, demo_order=41))  # fmt: skip
