"""Attention knockout across frames, as an experiment: the direct test of Chain-of-Frames against
Chain-of-Steps. At each chosen step s (on its own, or from s onward), every chosen layer's self-attention
loses the rule's frame-to-frame entries (``interp.execution.frame_knockout``: ``cross``, ``causal``, ``anticausal``,
``to_first``) and the run continues unknocked from the unperturbed run's state at s; beside it the random
control removes as many entries per query row at random. Scored like noise at step: a maze model's
verifier (accuracy with Wilson intervals), any other model the similarity of its final latent to the
unperturbed one's. Two claims are decided from the rows (``interp.analysis.claims``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from activations.selection import parse_index_spec
from interp.execution.frame_knockout import RULES, FrameKnockout, check_sites
from interp.execution.loop import sample
from interp.experiments import sweep
from interp.experiments._causal import CausalConfig, outcome_score, source_runs, write_record
from interp.experiments.base import Experiment, register
from interp.experiments.executors import Sweep, executor_or_local
from interp.manifest import Table
from interp.validation import Rule, each, int_range


@dataclass
class KnockoutConfig(CausalConfig):
    field_rules = {"rules": each(Rule(lambda x: x in RULES, "one of " + ", ".join(RULES)), 1),
                   "control_seed": int_range(0), "heads": each(int_range(0), 1)}  # fmt: skip
    experiment = "knockout"
    n: int = 32
    rules: list[str] = field(default_factory=lambda: ["cross", "causal"])
    steps: str = "all"  # start steps, each its own run
    layers: str = "all"  # knocked together at a step
    span: str = "step"  # step: that step only; onward: that step and every later one
    heads: list[int] | None = None  # heads knocked out in each site (None: every head)
    control_seed: int = 0

    cli_help = {
        **CausalConfig.cli_help,
        "rules": "Frame pairs removed: cross, causal, anticausal, to_first (repeatable).",
        "steps": "Steps knocked out, each its own run, e.g. all, 0-19:2.",
        "span": "step (knock that step only) or onward (that step and every later one).",
        "heads": "Heads knocked out in each layer (repeatable); default every head.",
        "layers": "Layers whose self-attention is knocked out together.",
        "control_seed": "Seed of the random-removal control.",
    }
    cli_flags = {**CausalConfig.cli_flags, "rules": ("--rule",), "heads": ("--head",)}


@dataclass
class KnockoutRuns:
    cfg: KnockoutConfig
    adapter: object
    run: object
    cond: object
    num_steps: int
    steps: list[int]
    sites: list[str]
    score: object


@dataclass
class KnockoutResult:
    config: KnockoutConfig
    baseline: dict
    rows: list[dict] = field(default_factory=list)  # per (rule, step): the rule's score and its control's


def run_knockout(cfg: KnockoutConfig, adapter=None, progress: bool = True, executor=None) -> KnockoutResult:
    """Every (rule, step) knocked and its random control; ``executor``: where the runs go (a unit is one)."""
    r = _prepare(cfg, adapter)
    units = [(rule, s, control) for rule in cfg.rules for s in r.steps for control in (False, True)]
    finals = executor_or_local(executor).map(SWEEP, cfg, r, units, progress, "attention knockout")
    result = KnockoutResult(cfg, r.score(r.run.final))
    scores = dict(zip(units, (r.score(f) for f in finals)))
    for rule in cfg.rules:
        for s in r.steps:
            result.rows.append({"rule": rule, "step": s, "knocked": scores[(rule, s, False)],
                                "control": scores[(rule, s, True)]})  # fmt: skip
    return result


def _prepare(cfg: KnockoutConfig, adapter) -> KnockoutRuns:
    chosen: dict = {}

    def sites_for(model, num_steps: int, shape: tuple) -> list:  # checks before the run is recorded
        if model.latent_frame_axis is None:
            raise ValueError(f"knockout across frames needs a frame axis; {model.name}'s latent is packed")
        expert = next(iter(model.transformers()))
        chosen["steps"] = parse_index_spec(cfg.steps, num_steps, "step")
        layers = parse_index_spec(cfg.layers, model.num_blocks(expert), "layer")
        chosen["sites"] = [site for group in sweep.layer_sites(model, layers, "attn1") for site in group]
        check_sites(model, chosen["sites"], cfg.heads)  # before the run is recorded
        return []

    runs = source_runs(cfg, adapter, sites_for)
    return KnockoutRuns(cfg, runs.adapter, runs.run, runs.conditioning, runs.num_steps, chosen["steps"],
                        chosen["sites"], outcome_score(runs))  # fmt: skip


def _knocked(r: KnockoutRuns, unit: tuple[str, int, bool]):
    """The unit of work: the unperturbed run resumed at step s with that step's attention (``onward``: and every
    later step's) knocked out."""
    rule, s, control = unit
    steps = range(s, r.num_steps) if r.cfg.span == "onward" else [s]
    knockout = FrameKnockout(r.adapter, r.sites, rule, steps, control_seed=r.cfg.control_seed if control else None,
                             heads=r.cfg.heads)  # fmt: skip
    try:
        return sample(r.adapter, r.run.latents[s], r.cond, r.num_steps, start_step=s,
                      resume_scheduler=r.run.schedulers.get(s), hooks=[knockout]).latents  # fmt: skip
    finally:
        knockout.close()


def save_knockout(result: KnockoutResult, cfg: KnockoutConfig, out):
    from interp.analysis.claims import causal_frames_suffice, cross_frames_carry
    from interp.report.causal_figures import knockout_curves

    record = {"baseline": result.baseline, "rows": result.rows}
    manifest = write_record(out, cfg, record, "knockout", "attention knockout across frames", "attention")
    figure = knockout_curves(result.baseline, result.rows, Path(out) / "knockout.png")
    manifest.add(figure, "figure", "attention knockout across frames per step, beside its random-removal control")
    verifier = "accuracy" in result.baseline
    value = "accuracy" if verifier else "similarity"
    rows = [{"rule": row["rule"], "step": row["step"], "knocked": row["knocked"][value],
             "control": row["control"][value]} for row in result.rows]  # fmt: skip
    manifest.tables.append(Table(f"{value} after a knockout at one step (control: as many entries at random)",
                                 ["rule", "step", "knocked", "control"], rows,
                                 {"knocked": ".3f", "control": ".3f"}))  # fmt: skip
    manifest.claims.append(cross_frames_carry(result.baseline, result.rows))
    manifest.claims.append(causal_frames_suffice(result.baseline, result.rows))
    for c in manifest.claims:
        manifest.headline.append(f"{c['claim']}: {c['verdict']} ({c['measurement']})")
    manifest.write(out)
    return manifest


def demo(ctx) -> None:
    """The study's direct test of Chain-of-Frames: cross-frame and frame-causal knockouts from step s onward."""
    n = ctx.options["n_causal"] * 8
    ctx.stage(f"attention knockout across frames from step s onward ({n} mazes) against random removal")
    cfg = KnockoutConfig(model=ctx.model, n=n, size=ctx.size, num_frames=ctx.frames, steps="0-18:3", span="onward")
    result = run_knockout(cfg, ctx.adapter, progress=False)
    manifest = save_knockout(result, cfg, ctx.out / "causal" / "knockout")
    ctx.headline += manifest.headline


SWEEP = Sweep("knockout", KnockoutConfig, _prepare, _knocked)
EXPERIMENT = register(Experiment("knockout", KnockoutConfig, run_knockout, save_knockout, demo=demo, demo_order=63))
