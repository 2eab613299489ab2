"""SAE features as interventions (issue 31, item 5): ``interp sae steer SAE_RUN --layer L --step S --feature F``
re-runs the store's held-out videos with one latent ablated, clamped or added (``interp.api.feature_edit``: in SAE
space, the SAE's error term kept) at chosen steps and tokens, over a sweep of strengths, beside random directions
of the same norm given the same change per token (the control). The effect is read as for patching and the
splice-in score: the final latent's relative distance to the clean run's and, for a maze model, the verifier's
failure rate."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from activations.reader import ActivationStore
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.experiments.sae_features import read_sae_run
from interp.manifest import Manifest, Table
from interp.validation import Rule, int_range

MODES = ("ablate", "clamp", "add")


@dataclass
class SAESteerConfig(ExperimentConfig):
    field_rules = {"mode": Rule(lambda x: x in MODES, "one of " + ", ".join(MODES)), "n_random": int_range(1, 64),
                   "feature": int_range(0), "layer": int_range(0), "step": int_range(0)}  # fmt: skip
    experiment = "sae_steer"
    saes: str = ""  # an ``interp sae train`` output folder
    layer: int = 0  # the SAE's slab: its layer ...
    step: int = 0  # ... and its denoising step
    feature: int = 0
    mode: str = "clamp"
    strengths: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0])
    at_steps: str = ""  # denoising steps edited; "": the SAE's own step
    edit_frames: str = "all"  # latent frames whose tokens are edited
    n_random: int = 4  # random directions of the same norm (the control)
    seed: int = 0
    device: str = "cpu"

    cli_arguments = ("saes",)
    cli_flags = {"strengths": ("--strength",)}
    cli_help = {
        "saes": "An `interp sae train` output folder (its saes.json and saes/).",
        "layer": "The SAE's layer (its slab).",
        "step": "The SAE's denoising step (its slab).",
        "feature": "The latent edited (e.g. one `interp sae features` chose).",
        "mode": "ablate (remove strength x its activation), clamp (set it to strength x its mean active value) or "
                "add (strength x its mean active value along its decoder row).",
        "strengths": "Strengths swept; repeatable.",
        "at_steps": "Denoising steps edited, e.g. 0-19 (default: the SAE's own step).",
        "edit_frames": "Latent frames whose tokens are edited: all, or e.g. 1-3.",
        "n_random": "Random directions of the decoder row's norm, each given the same change per token.",
        "seed": "Seed of the random directions.",
        "device": "torch device of the SAE.",
    }  # fmt: skip


@dataclass
class SteerResult:
    config: SAESteerConfig
    rows: list[dict]  # per (strength, direction): the mean losses over the held-out videos
    scale: float  # the latent's mean active value on the training tokens (clamp and add are multiples of it)
    firing: float  # share of training tokens where it fires
    site: str
    losses: list[str]
    n_videos: int


def _slab(cfg: SAESteerConfig, record: dict) -> dict:
    found = [r for r in record["rows"] if r["layer"] == cfg.layer and r["step"] == cfg.step]
    if not found:
        have = sorted((r["layer"], r["step"]) for r in record["rows"])
        raise ValueError(f"{cfg.saes} has no SAE at layer {cfg.layer}, step {cfg.step} (layer, step: {have})")
    return found[0]


def _activity(store, sae, site: str, step: int, videos: list[int], feature: int) -> tuple[float, float]:
    """(mean active value, share of tokens it fires on) of one latent over ``videos``' tokens."""
    from interp.features.saes import encoded_blocks

    total, count, n = 0.0, 0, 0
    for *_, z in encoded_blocks(store, sae, site, step, videos, [feature]):
        total, count, n = total + float(z.sum()), count + int((z != 0).sum()), n + len(z)
    return (total / count if count else 0.0), count / max(n, 1)


def _tokens(cfg: SAESteerConfig, adapter, latent: torch.Tensor) -> list[int] | None:
    from activations.selection import parse_index_spec
    from interp.api import frame_tokens

    if cfg.edit_frames.strip().lower() == "all":
        return None
    frames = adapter.token_grid(tuple(latent.shape[1:]))[0]
    return frame_tokens(adapter, latent, parse_index_spec(cfg.edit_frames, frames, "frame"))


def run_sae_steer(cfg: SAESteerConfig, progress: bool = True) -> SteerResult:
    from tqdm.auto import tqdm

    from activations.selection import parse_index_spec
    from interp.api import feature_edit
    from interp.features.saes import StepSAE, load_sae, random_directions
    from interp.features.splice import splice_runs

    record = read_sae_run(cfg.saes)
    slab = _slab(cfg, record)
    sae = load_sae(Path(cfg.saes) / slab["path"], cfg.device, cfg.step)
    if cfg.feature >= int(sae.cfg.d_sae):
        raise ValueError(f"--feature {cfg.feature}: the SAE has {int(sae.cfg.d_sae)} latents")
    with ActivationStore(record["config"]["store"]) as store:
        steps = [cfg.step] if not cfg.at_steps else parse_index_spec(cfg.at_steps, store.layout.num_steps, "step")
        # A step-shared SAE is read at each edited step with that step's mean (one that was not among its steps is
        # refused there); an SAE of one step is applied as it is at every edited step.
        sae_at = {s: load_sae(Path(cfg.saes) / slab["path"], cfg.device, s) for s in steps} if isinstance(
            sae, StepSAE) else {s: sae for s in steps}  # fmt: skip
        scale, firing = _activity(store, sae, slab["site"], cfg.step, record["train_videos"], cfg.feature)
        if cfg.mode != "ablate" and scale == 0:
            raise ValueError(f"feature {cfg.feature} never fires on the training tokens at step {cfg.step}: clamp and "
                             "add are multiples of its mean active value (choose a live one: interp sae features)")
        runs = splice_runs(store, record["test_videos"])
    tokens = _tokens(cfg, runs.adapter, runs.noise)
    randoms = random_directions(sae, cfg.feature, cfg.n_random, cfg.seed)
    batch, rows = runs.noise.shape[0], []
    units = [(s, k) for s in cfg.strengths for k in range(-1, cfg.n_random)]
    for strength, k in tqdm(units, disable=not progress, desc="feature edits"):
        value = strength if cfg.mode == "ablate" else strength * scale
        edits = [feature_edit(sae_at[s], slab["site"], cfg.feature, cfg.mode, value, [s], tokens,
                              direction=None if k < 0 else randoms[k]).bind(runs.adapter, batch) for s in steps]
        final = runs.final(edits)
        row = {"strength": strength, "value": value, "direction": "feature" if k < 0 else f"random {k}"}
        row.update({name: float(loss(final).mean()) for name, loss in runs.losses.items()})
        rows.append(row)
    return SteerResult(cfg, rows, scale, firing, slab["site"], list(runs.losses), len(record["test_videos"]))


def summary(result: SteerResult) -> list[dict]:
    """Per strength and loss: the feature's effect beside the random directions' mean and largest."""
    out = []
    for strength in result.config.strengths:
        at = [r for r in result.rows if r["strength"] == strength]
        feature = next(r for r in at if r["direction"] == "feature")
        for loss in result.losses:
            random = [r[loss] for r in at if r["direction"] != "feature"]
            out.append({"strength": strength, "loss": loss, "feature": feature[loss],
                        "random mean": float(np.mean(random)), "random max": float(np.max(random)),
                        "beyond every random": feature[loss] > max(random)})  # fmt: skip
    return out


def save_sae_steer(result: SteerResult, cfg: SAESteerConfig, out) -> Manifest:
    from interp.report.mpl import pyplot

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = summary(result)
    (out / "steer.json").write_text(json.dumps({"config": cfg.to_dict(), "site": result.site, "scale": result.scale,
                                                "firing": result.firing, "rows": result.rows, "summary": table},
                                               indent=2))  # fmt: skip
    what = f"feature {cfg.feature} of the SAE at layer {cfg.layer}, step {cfg.step}"
    manifest = Manifest("sae_steer", f"{cfg.mode} {what}", "features", cfg.to_dict())
    manifest.add(out / "steer.json", "data", "every edit's mean losses on the held-out videos, and the summary")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(result.losses), figsize=(4.2 * len(result.losses), 3.2), squeeze=False)
    for ax, loss in zip(axes[0], result.losses):
        for direction in dict.fromkeys(r["direction"] for r in result.rows):
            xs = [r["strength"] for r in result.rows if r["direction"] == direction]
            ys = [r[loss] for r in result.rows if r["direction"] == direction]
            is_feature = direction == "feature"
            label = "feature" if is_feature else ("random, same norm" if direction == "random 0" else None)
            ax.plot(xs, ys, "o-" if is_feature else "--", color="C3" if is_feature else "0.6",
                    lw=2 if is_feature else 1, label=label)  # fmt: skip
        ax.set_xlabel(f"{cfg.mode} strength")
        ax.set_ylabel(loss)
        ax.legend(fontsize=8)
    fig.suptitle(f"{cfg.mode} {what}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "steer.png", dpi=110)
    plt.close(fig)
    manifest.add(out / "steer.png", "figure", f"{cfg.mode} {what}: effect vs strength beside random directions")
    manifest.tables.append(Table(f"{cfg.mode} {what} (held-out videos)", ["strength", "loss", "feature", "random mean",
                                 "random max", "beyond every random"], table,
                                 {"feature": ".3f", "random mean": ".3f", "random max": ".3f"}))  # fmt: skip
    strongest = max(cfg.strengths, key=abs)
    for row in (r for r in table if r["strength"] == strongest):
        manifest.headline.append(
            f"{cfg.mode} {what} (fires on {result.firing:.0%} of training tokens, mean active {result.scale:.2f}) at "
            f"strength {strongest:g}: {row['loss']} {row['feature']:.3f} vs {cfg.n_random} random directions of the "
            f"same norm {row['random mean']:.3f} (max {row['random max']:.3f}) on {result.n_videos} held-out videos")
    manifest.notes.append("The edit is made in SAE space with the SAE's error term kept: x + delta * d, d the latent's "
                          "decoder row, delta = -strength * its activation (ablate), strength * scale - its activation "
                          "(clamp) or strength * scale (add), scale = its mean active value on the training tokens. "
                          "Each random direction has d's norm and gets the same delta on the same tokens.")
    manifest.write(out)
    return manifest


def plan_sae_steer(cfg: SAESteerConfig, out: Path):
    from interp.plans import FIGURES, Plan

    record = read_sae_run(cfg.saes)
    _slab(cfg, record)
    with ActivationStore(record["config"]["store"]) as store:
        num_steps = store.layout.num_steps
    runs = 1 + len(cfg.strengths) * (1 + cfg.n_random)
    return Plan("sae_steer", out, len(record["test_videos"]), num_steps, details=[
        f"{runs} runs of the {len(record['test_videos'])} held-out videos (clean, then each strength for the feature "
        f"and {cfg.n_random} random directions)"], disk_bytes=FIGURES)


def demo(ctx) -> None:
    """The study: the answer's best single feature (from the features stage) clamped, beside random directions."""
    features = json.loads((ctx.out / "sae_features" / "features.json").read_text())
    rows = [r for r in features["rows"] if r["target"] == features["answer"] and r["selectivity"] is not None]
    best = max(rows, key=lambda r: r["selectivity"])
    ctx.stage(f"the {features['answer']} feature of layer {best['layer']}, step {best['step']} clamped at every step "
              "vs random directions of the same norm")
    cfg = SAESteerConfig(saes=str(ctx.out / "saes"), layer=best["layer"], step=best["step"], feature=best["feature"],
                         strengths=[0.0, 2.0, 8.0], at_steps="all", n_random=3)  # fmt: skip
    manifest = save_sae_steer(run_sae_steer(cfg, progress=False), cfg, ctx.out / "sae_steer")
    ctx.headline += manifest.headline


EXPERIMENT = register(Experiment("sae_steer", SAESteerConfig, run_sae_steer, save_sae_steer, plan=plan_sae_steer,
                                 demo=demo, demo_order=47, command=("sae", "steer"), out="runs/sae_steer"))
