"""Linear probes per (step, layer) of a store, with the task's labels (the maze's for testbed
stores), as a run with a manifest: ``NAME.csv``, ``NAME.config.json``, heatmaps, ``NAME.run.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from math import isfinite, nan
from pathlib import Path

from activations.reader import ActivationStore
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest, Table
from interp.validation import parse_labels
from probes.labels import LabelProvider
from probes.plots import plot_all
from probes.run import ProbeConfig, run_probes, save_results
from probes.summary import input_flag

COLUMNS = ["target", "metric", "step", "layer", "value", "value_lo", "value_hi", "control", "selectivity",
           "selectivity_lo", "selectivity_hi", "x_t", "condition", "vae_latent", "majority_rate", "control_types",
           "inputs"]  # fmt: skip


@dataclass
class ProbeRunConfig(ProbeConfig, ExperimentConfig):
    """A probing run of a store as a command: ``probes.ProbeConfig`` (model-free, what the store records) and
    the store it reads."""

    experiment = "probe"
    targets: list[str] = field(default_factory=list)  # a command names what it probes (targets or labels)
    store: str = ""

    cli_arguments = ("store",)
    cli_parse = {"labels": parse_labels}  # NAME=FILE.npy
    cli_flags = {"targets": ("--target",)}
    cli_hidden = ("cs", "alphas")  # the regularisation grids: config files only
    cli_help = {
        "store": "An activation store (.h5).",
        "targets": "Maze target (on_path, wall, dist_to_goal, solved, ...); repeatable.",
        "labels": "NAME=FILE.npy: your labels on the store's token grid; repeatable.",
        "layers": "Layers to probe, e.g. all, 0-7, 0-39:4.",
        "steps": "Denoising steps to probe, e.g. all, 0-9,19.",
        "method": "fast (batched torch) or sklearn (one scikit-learn fit at a time).",
        "test_fraction": "Share of videos held out for testing.",
        "folds": "Cross-validation folds (by video) for the regularisation.",
        "seed": "Seed of the video split and the control task.",
        "tol": "Logistic fits stop when the largest gradient entry is below this.",
        "max_iter": "At most this many iterations per C.",
        "patience": "Fast path: also stop once no predicted class changed this long (0: never).",
        "group": "Fast path: (step, layer) slabs fitted together (raise it on a GPU).",
        "device": "torch device of the fast path: cpu, cuda, ...",
        "name": "Name of the run: NAME.csv, results/probes/NAME in the store.",
        "max_tokens": "Tokens read per video (stratified by label): bounded memory.",
        "control_condition_types": "Control task: at most this many conditioning categories.",
    }

    def probing(self) -> ProbeConfig:
        """The model-free config the fits and the store's results record."""
        return ProbeConfig(**{f.name: getattr(self, f.name) for f in fields(ProbeConfig)})


def run_probe(cfg: ProbeRunConfig, progress: bool = True):
    return probe_store(cfg.store, cfg.probing(), progress)


def save_probe_run(table, cfg: ProbeRunConfig, out) -> Manifest:
    return save_probes(table, cfg.probing(), cfg.store, out, cfg.to_dict())


def plan_probe(cfg: ProbeRunConfig, out: Path):
    from interp.plans import probe_plan

    if not Path(cfg.store).is_file():
        raise ValueError(f"no activation store at {cfg.store}")
    return probe_plan(Path(cfg.store), cfg, out)


def task_providers(store_path: str | Path) -> list[LabelProvider]:
    """The label providers of the tasks a store's videos come from (the maze's for testbed stores)."""
    from interp.tasks.maze_labels import MAZE

    with ActivationStore(store_path) as store:
        tasks = {store.meta(v).get("task") for v in store.completed_videos}
    return [MAZE] if "maze" in tasks else []


def probe_store(store_path: str | Path, cfg: ProbeConfig, progress: bool = True):
    """The probe table of a store, every named target read from its task's label provider."""
    from interp.validation import check

    check(cfg)  # before any fit: a bad name or fraction must not cost the fits
    if not Path(store_path).is_file():
        raise ValueError(f"no activation store at {store_path}")
    # save_probes writes the table into the store
    return run_probes(store_path, cfg, progress, providers=task_providers(store_path), write=False)


def best_rows(table) -> list[dict]:
    """Per target, the cell of best selectivity, with ``inputs``: a warning when the model's inputs
    alone decode the target as well ('' otherwise)."""
    rows = []
    for target, group in table.groupby("target", sort=False):
        best = group.loc[group["selectivity"].idxmax()]
        rows.append({"target": target, **best.drop("target").to_dict(), "inputs": input_flag(group)})
    return rows


def _interval(r: dict, column: str) -> str:
    low, high = r.get(f"{column}_lo", float("nan")), r.get(f"{column}_hi", float("nan"))
    return f" [95% CI {low:.2f}-{high:.2f}]" if low == low and high == high else ""


def _types(r: dict) -> str:
    n = r.get("control_types")
    return f" over {int(n)} token types" if n is not None and n == n else ""


def headline(r: dict, digits: int = 2) -> str:
    """One target's headline: a target the inputs decode says so first, not as a selectivity."""
    f = f".{digits}f"
    text = (
        f"{r['target']}: best selectivity {r['selectivity']:{f}}{_interval(r, 'selectivity')} at step {r['step']}, "
        f"layer {r['layer']} ({r['metric']} {r['value']:{f}}{_interval(r, 'value')}; control task {r['control']:{f}}"
        f"{_types(r)}, "
        f"x_t alone {r['x_t']:{f}}, conditioning alone {r['condition']:{f}}"
        + (f", the video's VAE latent alone {r['vae_latent']:{f}}" if isfinite(r.get("vae_latent", nan)) else "")
        + ")"
    )
    return f"{r['target']} is {r['inputs']}; " + text if r["inputs"] else text


def save_probes(table, cfg: ProbeConfig, store_path: str | Path, out, recorded: dict | None = None) -> Manifest:
    """Table and config (``NAME.csv``, ``NAME.config.json``, also inside the store), heatmaps, manifest;
    ``recorded``: the run's config as the manifest keeps it (a command's: with its store, so it reruns)."""
    out = Path(out)
    paths = save_results(table, store_path, cfg, out)
    figures = plot_all(table, out, cfg.name)
    manifest = Manifest("probe", f"linear probes: {cfg.name}", "probes",
                        recorded or {"experiment": "probe", **asdict(cfg)})  # fmt: skip
    manifest.add(paths["table"], "table", "every probe's score with its controls")
    manifest.add(paths["config"], "config", "the probing config")
    for target, path in figures.items():
        manifest.add(
            path,
            "figure",
            f"probes, {target}: probe and control task (layers x steps, one scale), "
            "selectivity (its own scale), and per step the probe at its best layer with a 95% bootstrap "
            "interval over test videos beside x_t alone, conditioning alone and the majority class",
        )
    manifest.notes.append(
        "Best selectivity (score minus control task) per target. Controls: the Hewitt-Liang control task, the same "
        "probe on the noisy input x_t alone and on the conditioning latent alone, and the majority-class rate; "
        "splits are by video."
    )
    if cfg.max_tokens is not None:  # the budget changes what the scores are measured on: say so beside them
        manifest.notes.append(
            f"Token budget: at most {cfg.max_tokens} tokens per video and target (class targets stratified by label, "
            f"drawn with seed {cfg.seed}), the same tokens at every step and layer and for every control; "
            "the fast path fits ridge from accumulated Gram matrices."
        )
    rows = best_rows(table)
    manifest.tables.append(Table("best selectivity per target", COLUMNS, rows, {c: ".3f" for c in COLUMNS[4:-2]}))
    manifest.headline += [headline(r, 3) for r in rows]
    if "store_problem" in paths:  # said where the headline is read, not only in a log
        manifest.headline.append(paths["store_problem"])
    else:
        manifest.headline.append(f"table also in {store_path} at results/probes/{cfg.name}")
    manifest.write(out, cfg.name)
    return manifest


def demo(ctx) -> None:
    targets = ctx.options["probe_target"]
    ctx.stage(f"linear probes per (step, layer) with controls ({', '.join(targets)})")
    cfg = ProbeConfig(targets=list(targets), steps=ctx.options["probe_steps"])
    table = probe_store(ctx.store, cfg, progress=False)
    save_probes(table, cfg, ctx.store, ctx.out / "probes")
    ctx.headline += ["probe " + headline(r) for r in best_rows(table)]


EXPERIMENT = register(Experiment("probe", ProbeRunConfig, run_probe, save_probe_run, demo=demo, demo_order=40,
                                 plan=plan_probe, out="runs/probes"))  # fmt: skip
