"""Sparse autoencoders per (denoising step, layer) of a store (issue 31, items 1-2): one SAE per chosen slab,
trained with SAELens on the training videos' tokens streamed from the store, saved in SAELens' format under
``saes/<site>/step_SS/``, and measured on the held-out videos (explained variance, MSE, L0, dead and rare
latents): a table and layers x steps heatmaps, like the probes'."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from activations.axes import parse_site
from activations.batches import TokenBatches
from activations.reader import ActivationStore
from activations.selection import parse_index_spec
from interp.experiments._causal import grid
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.experiments.executors import Sweep
from interp.features.saes import ARCHITECTURES, SAESpec, load_sae, sae_quality, save_step_means, step_means, train_sae
from interp.features.splice import ABLATIONS, splice_runs, splice_score
from interp.manifest import Manifest, Table
from interp.validation import Rule, int_range, number
from probes.config import split_videos


@dataclass
class SAEConfig(ExperimentConfig):
    field_rules = {"architecture": Rule(lambda x: x in ARCHITECTURES, "one of " + ", ".join(ARCHITECTURES)),
                   "expansion": int_range(1, 256), "k": int_range(1), "training_tokens": int_range(1),
                   "batch_size": int_range(1), "buffer_tokens": int_range(2), "lr": number(0, lo_open=True),
                   "sparsity_coefficient": number(0),
                   "test_fraction": number(0, 1, lo_open=True, hi_open=True),
                   "ablation": Rule(lambda x: x in ABLATIONS, "one of " + ", ".join(ABLATIONS))}  # fmt: skip
    experiment = "sae"
    store: str = ""
    steps: str = "all"  # denoising steps (stored ones)
    layers: str = "all"  # block outputs (layer numbers)
    architecture: str = "topk"
    expansion: int = 4  # latents = expansion x the site's hidden size
    k: int = 16  # TopK / BatchTopK: active latents per token
    sparsity_coefficient: float = 1.0  # JumpReLU's L0, standard's L1 penalty
    lr: float = 3e-4
    batch_size: int = 1024
    training_tokens: int = 1_000_000  # per SAE
    buffer_tokens: int = 1 << 16  # the mixing buffer: the most tokens held at once
    test_fraction: float = 0.25  # held-out videos
    seed: int = 0
    device: str = "cpu"
    shared: bool = False  # one SAE per layer shared by the chosen steps (each step's mean token subtracted first)
    splice: bool = True  # also the splice-in score: the run continued with the SAE's reconstruction
    ablation: str = "zero"  # what the splice-in score compares against: zero or mean ablation of the site

    cli_arguments = ("store",)
    cli_help = {
        "store": "An activation store (.h5).",
        "steps": "Stored denoising steps, e.g. all, 0-19:4.",
        "layers": "Layers (block outputs), e.g. all, 0-7:2.",
        "architecture": "topk, batchtopk, jumprelu or standard (SAELens' architectures).",
        "expansion": "Latents per SAE, as a multiple of the site's hidden size.",
        "k": "TopK / BatchTopK: active latents per token.",
        "sparsity_coefficient": "JumpReLU: L0 coefficient; standard: L1 coefficient.",
        "lr": "Adam learning rate.",
        "batch_size": "Tokens per training step.",
        "training_tokens": "Tokens each SAE is trained on (the slab's training tokens, reshuffled every pass).",
        "buffer_tokens": "Mixing buffer: the most tokens held in memory at once.",
        "test_fraction": "Share of videos held out to measure each SAE.",
        "seed": "Seed of the video split, the token order and the SAE's initial weights.",
        "device": "torch device of the training.",
        "shared": "One SAE per layer shared by the chosen steps, each step's mean token subtracted first (a per-step "
                  "decoder bias); measured at every step. Default: one SAE per (step, layer).",
        "splice": "Also the splice-in score (the held-out videos re-run with the SAE in place); --no-splice: skip.",
        "ablation": "The splice-in score's reference: zero or mean ablation of the site at the step.",
    }

    def spec(self) -> SAESpec:
        return SAESpec(self.architecture, self.expansion, self.k, self.sparsity_coefficient, self.lr, self.batch_size,
                       self.training_tokens, self.buffer_tokens, self.seed)  # fmt: skip


@dataclass
class SAEResult:
    config: SAEConfig
    rows: list[dict]  # per slab: site, layer, step, path and its quality
    train_videos: list[int]
    test_videos: list[int]


def _slabs(cfg: SAEConfig, store: ActivationStore) -> tuple[list[int], list[str]]:
    """The chosen stored steps and block-output sites; one clear error for a choice the store cannot serve."""
    steps = parse_index_spec(cfg.steps, store.layout.num_steps, "step")
    missing = [s for s in steps if s not in store.steps]
    if missing and cfg.steps not in ("all", "*"):
        raise ValueError(f"--steps: step {missing[0]} is not in the store (stored: {store.steps})")
    layers = parse_index_spec(cfg.layers, max(store.layers) + 1, "layer")
    sites = [s for s in store.sites if parse_site(s)[2] is None and parse_site(s)[1] in layers]
    if not sites:
        raise ValueError(f"--layers {cfg.layers}: the store keeps none of these block outputs (layers {store.layers})")
    return [s for s in steps if s in store.steps], sites


def _split(cfg: SAEConfig, store: ActivationStore) -> tuple[list[int], list[int]]:
    """Training and held-out videos: the probes' split (``probes.config.split_videos``) at the same seed and
    fraction, so an SAE and a probe of one slab are measured on the same videos."""
    videos = store.completed_videos
    if len(videos) < 2:
        raise ValueError(f"{cfg.store}: an SAE is measured on held-out videos: need at least 2 complete videos")
    if len(videos) - max(1, round(cfg.test_fraction * len(videos))) < 1:
        raise ValueError(f"--test-fraction {cfg.test_fraction} holds out all {len(videos)} videos: lower it")
    split = split_videos(videos, cfg.test_fraction, 1, cfg.seed)
    return split.train, split.test


def _prepare(cfg: SAEConfig, adapter=None) -> tuple[SAEConfig, list[int], list[int]]:
    """A worker's context: the config and its split of videos (an SAE reads only the store)."""
    with ActivationStore(cfg.store) as store:
        return (cfg, *_split(cfg, store))


def _train_unit(context: tuple, unit: tuple) -> list[dict]:
    """One unit: the SAE of ``site`` at ``steps`` (one step, or every step of a step-shared SAE), trained from the
    store at ``store`` and saved under ``out``, and its quality at each of its steps on the held-out videos."""
    cfg, train, test = context
    site, steps, store_path, out = unit
    steps, rows = list(steps), []
    with ActivationStore(store_path) as store:
        means = step_means(store, site, steps, train) if cfg.shared else None
        batches = TokenBatches(store, site, steps, train, cfg.batch_size, cfg.buffer_tokens, seed=cfg.seed,
                               epochs=None, offsets=means)  # fmt: skip
        meta = {"model_name": store.layout.model, "hook_name": site, "store": store_path,
                **({"denoise_steps": steps, "step_centred": True} if cfg.shared else
                   {"denoise_step": steps[0], "sigma": store.sigma(steps[0])})}  # fmt: skip
        folder = Path(out) / "saes" / site / ("shared" if cfg.shared else f"step_{steps[0]:02d}")
        path = train_sae(batches, cfg.spec(), store.layout.hidden[site], folder, meta, cfg.device, progress=False)
        if means is not None:
            save_step_means(path, means)
        for step in steps:  # a shared SAE is measured at each of its steps
            held_out = TokenBatches(store, site, [step], test, cfg.batch_size, cfg.buffer_tokens, seed=cfg.seed)
            quality = sae_quality(load_sae(path, cfg.device, step), held_out)
            rows.append({"site": site, "layer": parse_site(site)[1], "step": step, "shared": cfg.shared,
                         "path": path.relative_to(out).as_posix(), **quality})  # fmt: skip
    return rows


SWEEP = Sweep("sae", SAEConfig, _prepare, _train_unit)


def run_sae(cfg: SAEConfig, out, progress: bool = True, executor=None) -> SAEResult:
    """Train and measure one SAE per (step, layer) slab (``shared``: per layer), each under
    ``out/saes/<site>/step_SS`` (``shared``); ``executor``: where the SAEs train (this process, or one Ray task
    per SAE: ``out`` and the store on storage every worker reads)."""
    from tqdm.auto import tqdm

    from interp.experiments.executors import executor_or_local

    if not Path(cfg.store).is_file():
        raise ValueError(f"no activation store at {cfg.store}")
    context = _prepare(cfg)
    _, train, test = context
    store_path, out_path = str(Path(cfg.store).resolve()), str(Path(out).resolve())
    with ActivationStore(cfg.store) as store:
        steps, sites = _slabs(cfg, store)
    units = [(site, tuple(steps) if cfg.shared else (step,), store_path, out_path) for site in sites
             for step in (steps[:1] if cfg.shared else steps)]  # fmt: skip
    sent = replace(cfg, store=store_path)  # a worker opens the store wherever it runs
    done = executor_or_local(executor).map(SWEEP, sent, context, units, progress, "sparse autoencoders")
    rows = [row for unit_rows in done for row in unit_rows]
    if cfg.splice:  # the held-out videos re-run once clean, then once per SAE and step, and per ablation
        with ActivationStore(cfg.store) as store:
            runs = splice_runs(store, test)
        for row in tqdm(rows, disable=not progress, desc="splice-in scores"):
            sae = load_sae(Path(out) / row["path"], cfg.device, row["step"])
            scores = splice_score(runs, sae, row["site"], row["step"], cfg.ablation)
            row.update({k: v if np.isfinite(v) else None for k, v in scores.items()})  # JSON: null, not NaN
    return SAEResult(cfg, rows, train, test)


def save_sae(result: SAEResult, cfg: SAEConfig, out) -> Manifest:
    from interp.report.causal_figures import grid_heatmap

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "saes.json").write_text(json.dumps({"config": cfg.to_dict(), "train_videos": result.train_videos,
                                               "test_videos": result.test_videos, "rows": result.rows}, indent=2))
    manifest = Manifest("sae", "sparse autoencoders per (step, layer)", "features", cfg.to_dict())
    manifest.add(out / "saes.json", "data", "every SAE's path and its quality on the held-out videos")
    steps = sorted({r["step"] for r in result.rows})
    layers = sorted({r["layer"] for r in result.rows})
    figures = [("explained_variance", "explained variance (held-out videos)", 1.0),
               ("l0", "L0: active latents per token (held-out videos)", None)]
    if cfg.splice:
        figures.append(("splice_score", f"splice-in score against {cfg.ablation} ablation", 1.0))
    for name, title, top in figures:
        values = np.full((len(steps), len(layers)), np.nan)
        for r in result.rows:
            values[steps.index(r["step"]), layers.index(r["layer"])] = np.nan if r[name] is None else r[name]
        finite = values[np.isfinite(values)]
        top = top if top is not None else (float(finite.max()) if finite.size else 1.0) or 1.0
        low = min(0.0, float(finite.min())) if finite.size else 0.0
        figure = grid_heatmap(grid(values, steps, layers, name), out / f"{name}.png", f"SAE {title}", low, top)
        manifest.add(figure, "figure", f"{cfg.architecture} SAEs: {title}, layers x steps")
    for r in result.rows:
        manifest.add(out / r["path"] / "cfg.json", "config", f"SAE of {r['site']} at step {r['step']} (SAELens format)")
    columns = ["site", "step", "explained_variance", "mse", "l0", "dead", "rare", "d_sae", "tokens"]
    columns += [k for k in (result.rows[0] if result.rows else {}) if k.startswith("splice_score") or " ablation" in k
                or k.endswith((" clean", " with SAE"))]  # fmt: skip
    formats = {"explained_variance": ".3f", "mse": ".4g", "l0": ".1f", "splice_score": ".2f",
               "splice_score_verifier": ".2f"}
    manifest.tables.append(Table("SAE quality per (step, layer), held-out videos", columns, result.rows, formats))
    ev = np.array([r["explained_variance"] for r in result.rows], dtype=float)
    best = result.rows[int(np.nanargmax(ev))] if np.isfinite(ev).any() else None
    sparsity = f"k={cfg.k}" if cfg.architecture in ("topk", "batchtopk") else f"coefficient {cfg.sparsity_coefficient}"
    manifest.headline.append(
        (f"{len({r['path'] for r in result.rows})} step-shared {cfg.architecture} SAEs (one per layer, measured at "
         f"{len({r['step'] for r in result.rows})} steps; " if cfg.shared else
         f"{len(result.rows)} {cfg.architecture} SAEs (") + f"{cfg.expansion}x, {sparsity}"
        f"): explained variance on {len(result.test_videos)} held-out videos {np.nanmin(ev):.2f}-{np.nanmax(ev):.2f}"
        + (f", best {best['explained_variance']:.2f} at step {best['step']}, layer {best['layer']}" if best else "")
    )
    splice = np.array([np.nan if r.get("splice_score") is None else r["splice_score"] for r in result.rows])
    if cfg.splice:
        shown = f"{np.nanmin(splice):.2f}-{np.nanmax(splice):.2f}" if np.isfinite(splice).any() else "undefined"
        undefined = int((~np.isfinite(splice)).sum())
        line = f"splice-in score (final latent's distance) against {cfg.ablation} ablation: {shown}" + (
            f" ({undefined} slabs undefined: ablating the site there changed nothing)" if undefined else "")
        verdicts = [r.get("splice_score_verifier") for r in result.rows if "splice_score_verifier" in r]
        if verdicts:  # a maze model: the verifier's outcome too
            moved = [v for v in verdicts if v is not None]
            line += (f"; on the verifier's failures {min(moved):.2f}-{max(moved):.2f} where the ablation changed "
                     f"the answer ({len(moved)} of {len(verdicts)} slabs)" if moved else
                     f"; the verifier's answer changed under no single-step ablation ({len(verdicts)} slabs)")
        manifest.headline.append(line)
    manifest.notes.append("Each SAE is trained on the training videos' tokens of one (step, layer) slab, streamed "
                          "from the store through a mixing buffer, and measured on the held-out videos' tokens: "
                          "explained variance = 1 - summed squared error / summed squared deviation from the mean "
                          "token; L0 = active latents per token; dead = never active, rare = active on fewer than "
                          "1e-4 of the tokens. Splice-in score = (ablation - SAE) / (ablation - clean) on the held-out "
                          "videos re-run from the store's trace config with the SAE's reconstruction (or the "
                          "ablation) at that site and step only; the loss: the final latent's relative distance to "
                          "the clean run's and, for a maze model, the verifier's failure rate.")  # fmt: skip
    manifest.write(out)
    return manifest


def plan_sae(cfg: SAEConfig, out: Path, executor=None):
    """Every chosen slab's SAE: its training tokens and the held-out tokens, from the store's layout alone."""
    from interp.plans import FIGURES, FLOAT32, Plan

    if not Path(cfg.store).is_file():
        raise ValueError(f"no activation store at {cfg.store}")
    with ActivationStore(cfg.store) as store:
        steps, sites = _slabs(cfg, store)
        hidden = max(store.layout.hidden[s] for s in sites)
        _, test = _split(cfg, store)
        held_out = len(test) * store.layout.n_tokens
    slabs = len(sites) if cfg.shared else len(steps) * len(sites)
    d_sae = cfg.expansion * hidden
    weights = 2 * hidden * d_sae * FLOAT32 * 4  # encoder and decoder, with Adam's two moments
    memory = weights + (cfg.buffer_tokens + 4096) * hidden * FLOAT32 + cfg.batch_size * d_sae * FLOAT32 * 3
    disk = slabs * 2 * hidden * d_sae * FLOAT32 + FIGURES
    return Plan("sae", out, slabs, 0, len(steps), len(sites), disk, memory,
                [f"{slabs} SAEs ({len(sites)} layers" + (f", each shared by {len(steps)} steps" if cfg.shared else
                  f" x {len(steps)} steps") + f"), each {cfg.training_tokens} training "
                 f"tokens, measured on {held_out} held-out tokens; {d_sae} latents each"])  # fmt: skip


def demo(ctx) -> None:
    """The study: SAEs at four steps x three layers of the demo's store, with their splice-in scores."""
    ctx.stage("sparse autoencoders per (step, layer) (SAELens TopK, 4 steps x 3 layers) with splice-in scores")
    cfg = SAEConfig(store=str(ctx.store), steps="0-19:6", layers="0-7:3", training_tokens=65536, batch_size=512,
                    buffer_tokens=8192)  # fmt: skip
    manifest = save_sae(run_sae(cfg, ctx.out / "saes", progress=False), cfg, ctx.out / "saes")
    ctx.headline += manifest.headline


EXPERIMENT = register(Experiment("sae", SAEConfig, run_sae, save_sae, run_writes=True, plan=plan_sae, demo=demo,
                                 demo_order=45, command=("sae", "train"), group_default=True))  # fmt: skip

