"""SAE features against truth (issue 31, items 3 and 7): ``interp sae features SAE_RUN`` reads the SAEs an
``interp sae train`` run saved and, for every per-token target and every slab, the one latent chosen on the
training videos that tracks the target best, scored on the held-out videos with its control task
(``interp.features.matching``), beside the linear probe of the same slab and its control task (``probes``, the
same held-out videos and the same control labels). A table, a heatmap of each target's feature selectivity, and
a claim: from which step a single feature tracks the answer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from activations.reader import ActivationStore
from interp.analysis.claims import CANNOT_TELL, NOT_SHOWN, SHOWS, claim
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest, Table
from interp.validation import int_range, parse_labels
from probes.config import Split
from probes.features import CONDITION_TYPES

PROBE_COLUMNS = {"value": "probe", "control": "probe_control", "selectivity": "probe_selectivity",
                 "metric": "probe_metric"}  # fmt: skip


@dataclass
class SAEFeaturesConfig(ExperimentConfig):
    field_rules = {"control_condition_types": int_range(1)}
    experiment = "sae_features"
    saes: str = ""  # an ``interp sae train`` output folder
    targets: list[str] = field(default_factory=list)  # per-token targets; none: the task's key targets
    labels: dict[str, str] = field(default_factory=dict)  # NAME -> .npy labels on the store's token grid
    probe: bool = True  # the linear probe of each slab and its control task beside each feature
    dashboards: bool = True  # a dashboard of each target's best feature, ranked by splice-in importance
    control_condition_types: int = CONDITION_TYPES
    device: str = "cpu"

    cli_arguments = ("saes",)
    cli_parse = {"labels": parse_labels}
    cli_flags = {"targets": ("--target",)}
    cli_help = {
        "saes": "An `interp sae train` output folder (its saes.json and saes/).",
        "targets": "Per-token target (on_path, wall, agent, trail, dist_to_goal, ...); repeatable. None given: the "
                   "task's key targets (maze stores).",
        "labels": "NAME=FILE.npy: your labels on the store's token grid; repeatable.",
        "probe": "Also the linear probe of each slab with its control task (--no-probe: features only).",
        "dashboards": "A dashboard of each target's best feature (frames x steps, top tokens on decoded x0_hat, its "
                      "splice-in importance; re-runs the held-out videos); --no-dashboards: the table only.",
        "control_condition_types": "Control task: at most this many conditioning categories per position.",
        "device": "torch device of the SAEs' encoders.",
    }  # fmt: skip


@dataclass
class FeaturesResult:
    config: SAEFeaturesConfig
    rows: list[dict]  # per (target, slab): the chosen feature, its held-out score, control, the probe's beside
    answer: str  # the target the claim reads (the first)
    test_videos: list[int]
    dashboards: list = field(default_factory=list)  # (Dashboard, model) of each target's best feature, ranked


def read_sae_run(folder: str | Path) -> dict:
    """An ``interp sae train`` folder's record (``saes.json``), its store checked to be there."""
    path = Path(folder) / "saes.json"
    if not path.is_file():
        raise ValueError(f"{folder}: not an `interp sae train` output folder (no saes.json)")
    try:
        record = json.loads(path.read_text())
        store, rows = record["config"]["store"], record["rows"]
        record["train_videos"], record["test_videos"] = list(record["train_videos"]), list(record["test_videos"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable SAE run record ({err})") from None
    if not rows:
        raise ValueError(f"{path}: the run saved no SAE")
    if not Path(store).is_file():
        raise ValueError(f"{path}: its store {store} is not there (run from the folder it was trained from)")
    return record


def _labels(cfg: SAEFeaturesConfig, store: ActivationStore, store_path: str, seed: int):
    """Every per-token target's labels (a per-video target has no token to match a feature to)."""
    from interp.experiments.probe import task_providers
    from probes.run import ProbeConfig, load_targets

    providers = task_providers(store_path)
    targets = list(cfg.targets) or ([] if cfg.labels else [t for p in providers for t in getattr(p, "key_targets", ())])
    if not targets and not cfg.labels:
        raise ValueError("no targets: this store's videos come from no task with labels; give --labels NAME=FILE.npy")
    probing = ProbeConfig(targets=targets, labels=dict(cfg.labels), seed=seed,
                          control_condition_types=cfg.control_condition_types)  # fmt: skip
    labels = load_targets(store, probing, providers)
    video_level = [lab.name for lab in labels if lab.per_video]
    if video_level:
        raise ValueError(f"target {video_level[0]!r} has one label per video: a feature is matched per token")
    return labels, probing, providers


def run_sae_features(cfg: SAEFeaturesConfig, progress: bool = True) -> FeaturesResult:
    from tqdm.auto import tqdm

    from interp.features.matching import match_features
    from interp.features.saes import load_sae
    from probes.features import token_types
    from probes.targets import prepare_target

    record = read_sae_run(cfg.saes)
    store_path, sae_cfg = record["config"]["store"], record["config"]
    seed, train, test = int(sae_cfg.get("seed", 0)), record["train_videos"], record["test_videos"]
    rows = []
    with ActivationStore(store_path) as store:
        labels, probing, providers = _labels(cfg, store, store_path, seed)
        types = token_types(store, train + test, None, cfg.control_condition_types, seed)  # as the probes draw them
        split = Split(train, test, {v: 0 for v in train})
        targets = [prepare_target(lab, split, types, seed + i) for i, lab in enumerate(labels)]
        for sae_row in tqdm(record["rows"], disable=not progress, desc="features against targets"):
            sae = load_sae(Path(cfg.saes) / sae_row["path"], cfg.device, sae_row["step"])
            for match in match_features(store, sae, sae_row["site"], sae_row["step"], targets, train, test, seed):
                rows.append({**match, "layer": sae_row["layer"]})
    if cfg.probe:
        _add_probes(rows, store_path, probing, providers, record, len(test), progress)
    result = FeaturesResult(cfg, rows, labels[0].name, test)
    if cfg.dashboards:
        result.dashboards = _dashboards(cfg, record, rows, progress)
    return result


def _dashboards(cfg: SAEFeaturesConfig, record: dict, rows: list[dict], progress: bool) -> list:
    """Each target's best feature (its best slab by selectivity): its dashboard and splice-in importance, ranked
    by how far ablating it alone at its step moves the final latent."""
    from tqdm.auto import tqdm

    from interp.features.dashboards import feature_dashboard, splice_importance
    from interp.features.saes import load_sae
    from interp.features.splice import splice_runs

    chosen: dict[tuple, dict] = {}
    for target in dict.fromkeys(r["target"] for r in rows):
        best = max((r for r in rows if r["target"] == target and np.isfinite(r["selectivity"])),
                   key=lambda r: r["selectivity"], default=None)  # fmt: skip
        if best is not None:
            chosen.setdefault((best["site"], best["step"], best["feature"]), best)
    slab = {(r["site"], r["step"]): r for r in record["rows"]}
    trained: dict[str, list[int]] = {}
    for r in record["rows"]:
        trained.setdefault(r["path"], []).append(r["step"])
    loaded: dict[tuple, object] = {}
    boards = []
    with ActivationStore(record["config"]["store"]) as store:
        runs = splice_runs(store, record["test_videos"])
        for (site, step, feature), row in tqdm(chosen.items(), disable=not progress, desc="feature dashboards"):
            path, steps = slab[(site, step)]["path"], trained[slab[(site, step)]["path"]]

            def sae_at(s: int, path=path, shared=len(steps) > 1) -> object:  # a per-step SAE: one load for any s
                key = (path, s if shared else None)
                if key not in loaded:
                    loaded[key] = load_sae(Path(cfg.saes) / path, cfg.device, s)
                return loaded[key]

            marks = "" if row["marks"] is None else f" for {row['target']} = {row['marks']:g}"
            match = f"{row['metric']} {row['value']:.2f}{marks}, control {row['control']:.2f}"
            board = feature_dashboard(store, sae_at, site, step, feature, record["test_videos"], steps, row["target"],
                                      match)  # fmt: skip
            board.importance = splice_importance(runs, sae_at(step), site, step, feature, seed=int(feature))
            boards.append((board, runs.adapter))
    return sorted(boards, key=lambda b: -b[0].importance["latent distance"])


def _save_dashboards(result: FeaturesResult, out: Path, manifest: Manifest) -> None:
    """Each dashboard's figure (x0_hat read from the store, decoded by the model) and the ranking table."""
    from interp.features.dashboards import draw_dashboard

    ranked = []
    with ActivationStore(read_sae_run(result.config.saes)["config"]["store"]) as store:
        for rank, (board, model) in enumerate(result.dashboards, 1):
            path = draw_dashboard(board, store, out / f"dashboard_{rank:02d}_{board.target}.png", model)
            manifest.add(path, "figure", f"feature {board.feature} ({board.site}, step {board.step}), best match "
                         f"{board.target}: frames x steps, step profile, top tokens on decoded x0_hat")  # fmt: skip
            ranked.append({"rank": rank, "target": board.target, "site": board.site, "step": board.step,
                           "feature": board.feature, "match": board.match, **board.importance})  # fmt: skip
    if ranked:
        columns = ["rank", "target", "site", "step", "feature", "match", *result.dashboards[0][0].importance]
        manifest.tables.append(Table("features ranked by splice-in importance (held-out videos with the feature "
                                     "alone ablated at its step; random: directions of the same norm)", columns,
                                     ranked, {k: ".3f" for k in columns[6:]}))  # fmt: skip


def _add_probes(rows: list[dict], store_path: str, probing, providers, record: dict, n_test: int, progress) -> None:
    """The linear probe of each slab and its control task (``probes.run``: the same seed, held-out fraction,
    token types and control labels), beside each feature."""
    from dataclasses import replace

    from probes.run import run_probes

    steps = ",".join(str(s) for s in sorted({r["step"] for r in record["rows"]}))
    layers = ",".join(str(v) for v in sorted({r["layer"] for r in record["rows"]}))
    fraction = float(record["config"].get("test_fraction", 0.25))
    table = run_probes(store_path, replace(probing, steps=steps, layers=layers, test_fraction=fraction),
                       progress=progress, providers=providers, write=False)  # fmt: skip
    if len(table) and int(table["n_test_videos"].iloc[0]) != n_test:  # labelled videos differ from the SAE's split
        raise ValueError("the probes' held-out videos differ from the SAEs' (videos without labels): use --no-probe")
    found = {(r["target"], r["site"], int(r["step"])): r for r in table.to_dict("records")}
    for row in rows:
        probe = found.get((row["target"], row["site"], row["step"]), {})
        row.update({new: probe.get(old, float("nan")) for old, new in PROBE_COLUMNS.items()})


def answer_claim(result: FeaturesResult) -> dict:
    """"A single feature tracks the answer from step k": the earliest step where some layer's chosen feature beats
    its control task on resampled held-out videos (selectivity interval above 0)."""
    rows = [r for r in result.rows if r["target"] == result.answer]
    name = f"single SAE features track the answer ({result.answer}); the earliest step they do"
    above = sorted((r for r in rows if np.isfinite(r["selectivity_lo"]) and r["selectivity_lo"] > 0),
                   key=lambda r: (r["step"], -r["selectivity"]))  # fmt: skip
    if not rows:
        return claim(name, "no SAE", "none", CANNOT_TELL, "no slab was matched")
    best = above[0] if above else max(rows, key=lambda r: r["selectivity"] if np.isfinite(r["selectivity"]) else -9)
    measurement = (f"step {best['step']}, layer {best['layer']}: feature {best['feature']} {best['metric']} "
                   f"{best['value']:.2f} ({best['value_lo']:.2f}-{best['value_hi']:.2f}), selectivity "
                   f"{best['selectivity']:.2f} ({best['selectivity_lo']:.2f}-"
                   f"{best['selectivity_hi']:.2f})")  # fmt: skip
    if np.isfinite(best.get("probe_selectivity", float("nan"))):
        measurement += f"; the linear probe there: selectivity {best['probe_selectivity']:.2f}"
    control = (f"the best feature on the control task (random labels per token type): {best['metric']} "
               f"{best['control']:.2f}")  # fmt: skip
    steps = sorted({r["step"] for r in rows})
    if above:
        why = (f"chosen on the training videos, scored on {len(result.test_videos)} held-out ones: the selectivity "
               f"interval lies above 0 first at step {best['step']} of the steps {steps}")  # fmt: skip
        return claim(name, measurement, control, SHOWS, why)
    if all(np.isfinite(r["selectivity_hi"]) and r["selectivity_hi"] < 0.05 for r in rows):
        return claim(name, measurement, control, NOT_SHOWN, "every slab's selectivity interval lies below 0.05")
    return claim(name, measurement, control, CANNOT_TELL, "no slab's selectivity interval lies above 0")


def save_sae_features(result: FeaturesResult, cfg: SAEFeaturesConfig, out) -> Manifest:
    from interp.experiments._causal import grid
    from interp.report.causal_figures import grid_heatmap

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean = [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
             for r in result.rows]  # fmt: skip
    (out / "features.json").write_text(json.dumps({"config": cfg.to_dict(), "answer": result.answer,
                                                   "test_videos": result.test_videos, "rows": clean}, indent=2))
    manifest = Manifest("sae_features", "SAE features against per-token targets", "features", cfg.to_dict())
    manifest.add(out / "features.json", "data", "per target and slab: the chosen feature, its held-out score, "
                 "its control task and the linear probe's beside")  # fmt: skip
    steps, layers = sorted({r["step"] for r in result.rows}), sorted({r["layer"] for r in result.rows})
    for target in dict.fromkeys(r["target"] for r in result.rows):
        values = np.full((len(steps), len(layers)), np.nan)
        for r in (r for r in result.rows if r["target"] == target):
            values[steps.index(r["step"]), layers.index(r["layer"])] = r["selectivity"]
        figure = grid_heatmap(grid(values, steps, layers, target), out / f"feature_selectivity_{target}.png",
                              f"best single SAE feature for {target}:\nheld-out score - control task", -0.5, 0.5)
        manifest.add(figure, "figure", f"{target}: the chosen feature's selectivity, layers x steps")
        best = max((r for r in result.rows if r["target"] == target),
                   key=lambda r: r["selectivity"] if np.isfinite(r["selectivity"]) else -9)  # fmt: skip
        probe = (f"; the linear probe there: {best['probe_metric']} {best['probe']:.2f}, selectivity "
                 f"{best['probe_selectivity']:.2f}" if np.isfinite(best.get("probe", float("nan"))) else "")
        manifest.headline.append(
            f"{target}: best single feature selectivity {best['selectivity']:.2f} [95% CI {best['selectivity_lo']:.2f}-"
            f"{best['selectivity_hi']:.2f}] at step {best['step']}, layer {best['layer']} (feature {best['feature']}, "
            f"{best['metric']} {best['value']:.2f}; control task {best['control']:.2f}){probe}")  # fmt: skip
    columns = ["target", "step", "layer", "metric", "feature", "marks", "value", "value_lo", "value_hi", "control",
               "selectivity", "selectivity_lo", "selectivity_hi", *(PROBE_COLUMNS.values() if cfg.probe else ())]
    formats = {k: ".2f" for k in ("value", "value_lo", "value_hi", "control", "selectivity", "selectivity_lo",
                                  "selectivity_hi", "probe", "probe_control", "probe_selectivity")}  # fmt: skip
    manifest.tables.append(Table("best single SAE feature per target and slab (held-out videos)", columns,
                                 result.rows, formats))  # fmt: skip
    manifest.claims.append(answer_claim(result))
    _save_dashboards(result, out, manifest)
    manifest.notes.append(
        "For each target and (step, layer) SAE, the one latent with the strongest correlation on the training videos "
        "(point-biserial with one class against the rest; Pearson r for a regression target) is scored on the "
        "held-out videos: AUROC for its class, or r signed as chosen. The control: the same choice and score on the "
        "control task's labels (Hewitt and Liang: a random label per token type, position x what the given frame "
        "shows there), the same labels the linear probes' control uses. Selectivity = score - control; intervals: "
        "95% bootstrap over held-out videos, paired. The linear probe's columns: accuracy or R^2 and its control.")
    manifest.write(out)
    return manifest


def plan_sae_features(cfg: SAEFeaturesConfig, out: Path):
    """Each SAE's latents of every video's tokens, one block at a time; the probes of the same slabs."""
    from interp.plans import FIGURES, Plan

    record = read_sae_run(cfg.saes)
    with ActivationStore(record["config"]["store"]) as store:
        tokens = store.layout.n_tokens
        width = max(json.loads((Path(cfg.saes) / r["path"] / "cfg.json").read_text())["d_sae"] for r in record["rows"])
        hidden = max(store.layout.hidden[r["site"]] for r in record["rows"])
    videos = len(record["train_videos"]) + len(record["test_videos"])
    block = min(8192, tokens)
    memory = block * (width + hidden) * 8 * 2 + 2 * width * hidden * 4
    return Plan("sae_features", out, videos, 0, len({r["step"] for r in record["rows"]}),
                len({r["site"] for r in record["rows"]}), FIGURES, memory,
                [f"{len(record['rows'])} SAEs x {videos} videos' tokens ({tokens} each) encoded twice (choose, "
                 "score), a block at a time" + ("; the linear probes of the same slabs" if cfg.probe else "")])


def demo(ctx) -> None:
    """The study: the demo's SAEs read against the maze's key targets, beside the probes."""
    ctx.stage("SAE features against the maze's truth per token (best single feature vs control task and probe)")
    cfg = SAEFeaturesConfig(saes=str(ctx.out / "saes"))
    manifest = save_sae_features(run_sae_features(cfg, progress=False), cfg, ctx.out / "sae_features")
    ctx.headline += manifest.headline


EXPERIMENT = register(Experiment("sae_features", SAEFeaturesConfig, run_sae_features, save_sae_features,
                                 plan=plan_sae_features, demo=demo, demo_order=46, command=("sae", "features"),
                                 out="runs/sae_features"))  # fmt: skip
