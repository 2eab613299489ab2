"""Pieces every causal experiment shares: its config (a source plus its own fields), its recorded runs and
pairs (from any source: the testbed's mazes or a pipeline's samples), and how its files and manifest are
written."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interp.execution.patching import RunCache, record_run
from interp.experiments.base import ExperimentConfig
from interp.manifest import Manifest, Table
from interp.samples import Sample, Video
from interp.sources import SourceConfig
from interp.tasks import maze as maze_task


@dataclass
class CausalConfig(SourceConfig, ExperimentConfig):
    """A causal experiment's source (``interp.sources.SourceConfig``: the testbed's generated mazes, or any
    model's samples) and how sites are read and replaced."""

    backend: str = "hooks"

    cli_help = {
        **SourceConfig.cli_help,
        "n": "Testbed without --data: mazes (pairs for patching).",
        "backend": "How sites are read and replaced: hooks or nnsight.",
    }
    cli_flags = {**SourceConfig.cli_flags}

    def __post_init__(self):
        ExperimentConfig.__post_init__(self)  # interp.validation: types and ranges
        SourceConfig.__post_init__(self)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """A config written before one source: its ``pipeline`` object of fields becomes the config's own."""
        pipeline = data.pop("pipeline", None)
        if pipeline is not None and not isinstance(pipeline, dict):  # never dropped: it named the model to run
            from interp.validation import UsageError, plain

            raise UsageError(f"{cls.experiment} config: pipeline must be an object or null (the fields of a pipeline "
                             f"source, as written before one source), got {plain(pipeline)!r:.60}")  # fmt: skip
        if isinstance(pipeline, dict):
            fields = dict(pipeline)
            if "seed" in fields:
                fields["seeds"] = [fields.pop("seed")]
            data = {**data, **fields}
        return SourceConfig.upgrade.__func__(cls, data)


@dataclass
class SourceRuns:
    """One recorded run of a source's videos (one batch), and what it was recorded from."""

    adapter: object
    videos: list[Video]
    run: RunCache
    conditioning: object
    num_steps: int
    latent_shape: tuple[int, ...]

    @property
    def names(self) -> list[str]:
        return [v.key for v in self.videos]


SitesFor = Callable[[object, int, tuple], list]  # (adapter, num_steps, latent shape) -> sites; checks first


def source_runs(cfg: CausalConfig, adapter, sites_for: SitesFor, videos: list[Video] | None = None) -> SourceRuns:
    """Load the model (unless given), check the experiment against it (``sites_for`` raises on a bad
    choice and returns the sites to record), then record one run of ``videos`` (default: the source's)."""
    adapter = adapter or cfg.load()
    videos = cfg.videos(adapter) if videos is None else videos
    num_steps, shape = cfg.num_steps_of(adapter), cfg.latent_shape(adapter, videos)
    sites = sites_for(adapter, num_steps, shape)
    noise, cond = cfg.inputs(adapter, videos)
    run = record_run(adapter, noise, cond, num_steps, sites, shift=cfg.shift_of(adapter), backend=cfg.backend)
    return SourceRuns(adapter, videos, run, cond, num_steps, shape)


def maze_truths(adapter, videos: list[Video]) -> list[maze_task.Maze] | None:
    """The mazes of ``videos`` where a maze model's verifier can judge its latents; None otherwise (a
    pipeline: scored by its latents instead)."""
    if not adapter.task or any(v.sample.truth is None for v in videos):
        return None
    return [v.sample.truth for v in videos]


def outcome_score(runs: SourceRuns) -> Callable:
    """How a perturbed run's final latents are scored against the unperturbed ``runs``: a maze model's
    verifier (solved share and whether the answer, the last frame, is right, with Wilson intervals), else
    the cosine similarity of each final latent to the unperturbed one's."""
    import torch

    from interp.evaluation import verify_latents, wilson_interval

    mazes = maze_truths(runs.adapter, runs.videos)
    if mazes is not None:

        def score(latents) -> dict:
            verdicts = verify_latents(runs.adapter, latents, mazes)
            solved = np.array([v.solved for v in verdicts])
            final_exact = np.array([v.final_exact for v in verdicts])
            lo, hi = wilson_interval(int(solved.sum()), len(solved))
            flo, fhi = wilson_interval(int(final_exact.sum()), len(final_exact))
            return {
                "accuracy": float(solved.mean()), "ci95": [lo, hi], "final_exact": float(final_exact.mean()),
                "final_exact_ci95": [flo, fhi], "n": len(solved),
            }  # fmt: skip

        return score
    reference = runs.run.final.flatten(1).double()

    def similarity(final) -> dict:
        sims = torch.nn.functional.cosine_similarity(final.flatten(1).double(), reference, dim=1).tolist()
        return {"similarity": float(np.mean(sims)), "per_sample": dict(zip(runs.names, sims)), "n": len(sims)}

    return similarity


def check_pairs(cfg: CausalConfig) -> None:
    """Before any model is read: with data, the pairs are the samples named in pairs."""
    names = cfg.samples or []
    if cfg.data is not None and (len(names) < 2 or len(names) % 2 or len(set(names)) != len(names)):
        raise ValueError("with --data a pair experiment runs the samples named in pairs: --samples A,B[,C,D...] "
                         f"(distinct, an even number), got {names or 'none'}")  # fmt: skip


def pair_videos(cfg: CausalConfig, adapter, other: Callable[[maze_task.Maze], maze_task.Maze]) -> tuple[list, list]:
    """(first, second) videos of each pair, the two of a pair on the same noise (they differ only in their
    input). With data: the samples named in pairs (``samples`` A,B[,C,D...]: A with B, ...), each pair with
    every seed. Without (the testbed's generated mazes): each maze with ``other(maze)``."""
    check_pairs(cfg)
    videos = cfg.videos(adapter)
    if cfg.data is None:
        others = []
        for video in videos:
            maze = other(video.sample.truth)
            sample = Sample(f"{video.sample.name}-other", video.sample.prompt, None, None, maze)
            others.append(Video(f"{video.key}-other", sample, video.seed))
        return videos, others
    by_name: dict[str, list[Video]] = {}
    for video in videos:
        by_name.setdefault(video.sample.name, []).append(video)
    first, second = [], []
    for a, b in zip(cfg.samples[0::2], cfg.samples[1::2]):
        for va, vb in zip(by_name[a], by_name[b]):  # seed by seed; a maze's own seed: the first's for both
            first.append(va)
            second.append(Video(vb.key, vb.sample, va.seed))
    return first, second


@dataclass
class PairRuns:
    """What a pairwise sweep (patch, swap) needs, from any source: a base run to patch, a source run
    to patch from, the element pairs (None: element e of both), the two reference finals of each
    pair, the grid's steps and layers (each layer's sites in every expert), token regions per pair,
    and the metric (1 = the source's behaviour, 0 = the base's)."""

    adapter: object
    base: RunCache
    base_cond: object
    source: RunCache
    pairs: list[tuple[int, int]] | None
    clean_final: object
    corr_final: object
    num_steps: int
    steps: list[int]
    layers: list[int]
    groups: list[tuple[str, ...]]
    tokens: list
    metric: object
    name: str = "patching score"


def finite_or_none(values: np.ndarray) -> list:
    return np.where(np.isfinite(values), values, None).tolist()


def write_record(out: str | Path, cfg: ExperimentConfig, record: dict, kind: str, title: str, section: str) -> Manifest:
    """config.json and result.json in ``out``; the manifest to which the figure is added."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.to_json())
    (out / "result.json").write_text(json.dumps({"config": cfg.to_dict(), **record}, indent=2))
    manifest = Manifest(kind=kind, title=title, section=section, config=cfg.to_dict())
    manifest.add(out / "config.json", "config", "the experiment's config: rerun with --config")
    manifest.add(out / "result.json", "data", "every number of the result")
    return manifest


@dataclass
class GridResult:
    """A (step, layer) grid of scores: the mean over pairs, and every pair's."""

    config: ExperimentConfig
    grid: object  # xarray DataArray (step, layer)
    per_pair: np.ndarray  # (pairs, steps, layers)
    meaning: str
    extra: dict | None = None  # further per-cell numbers, e.g. the swap's mean normalised score
    videos: dict | None = None  # decoded (T, H, W, 3) videos of the first pair: the runs and one intervention

    def record(self) -> dict:
        grid = self.grid
        return {
            "dims": list(grid.dims),
            "coords": {d: [int(v) for v in grid.coords[d].values] for d in grid.dims},
            "name": grid.name,
            "values": finite_or_none(grid.values),
            "attrs": {"per_pair": finite_or_none(self.per_pair), "meaning": self.meaning, **(self.extra or {})},
        }

    def best(self) -> tuple[float, int, int] | None:
        values = np.asarray(self.grid.values, dtype=float)
        if not np.isfinite(values).any():
            return None
        i, j = np.unravel_index(np.nanargmax(values), values.shape)
        return float(values[i, j]), int(self.grid.step.values[i]), int(self.grid.layer.values[j])


def grid(values: np.ndarray, steps: list[int], layers: list[int], name: str):
    import xarray as xr

    return xr.DataArray(values, dims=("step", "layer"), coords={"step": steps, "layer": layers}, name=name)


def save_grid(result: GridResult, out: str | Path, kind: str, title: str, figure_title: str) -> Manifest:
    """result.json, config.json and heatmap.png of a grid result, with its manifest."""
    from interp.report.causal_figures import grid_heatmap

    manifest = write_record(out, result.config, result.record(), kind, title, "patching")
    cfg = result.config
    constant = getattr(cfg, "span", None) == "onward" and getattr(cfg, "region", None) == "all"
    if constant:  # say what the figure cannot show
        note = (
            "by construction the same at every layer where the conditioning enters only through the input "
            "tokens (the testbed): from step s on, every later block sees the source run's output of block k "
            "at every token, so only the step axis is informative"
        )
        figure_title += "\n(onward, all tokens: equal across layers by construction; read the steps)"
        manifest.notes.append(f"Patching onward at every token is {note}.")
    heatmap = grid_heatmap(result.grid, Path(out) / "heatmap.png", figure_title)
    manifest.add(heatmap, "figure", figure_title)
    best = result.best()
    manifest.headline.append(
        "no finite scores (the model answered both inputs alike)"
        if best is None
        else f"{result.grid.name}: highest {best[0]:.2f} at step {best[1]}, layer {best[2]}; "
        f"mean {np.nanmean(result.grid.values):.2f} over {np.isfinite(result.grid.values).sum()} cells"
    )
    manifest.notes.append(result.meaning)
    _pair_intervals(result, manifest)
    save_videos(result.videos, Path(out), manifest, "what the intervention did, first pair")
    manifest.write(out)
    return manifest


def _pair_intervals(result: GridResult, manifest: Manifest) -> None:
    """Per step, the layer-mean score with a 95% bootstrap interval over pairs, and the best cell's."""
    from interp.analysis.bootstrap import pair_intervals

    per_pair = np.asarray(result.per_pair, dtype=float)
    n_pairs = int(np.isfinite(per_pair).any(axis=(1, 2)).sum()) if per_pair.ndim == 3 else 0
    if n_pairs < 2:
        manifest.notes.append(f"{n_pairs} scored pair(s): no interval over pairs")
        return
    low, high = pair_intervals(np.nanmean(per_pair, axis=2, keepdims=True)[..., 0])  # (steps,)
    with np.errstate(invalid="ignore"):
        means = np.nanmean(np.asarray(result.grid.values, dtype=float), axis=1)
    steps = [int(s) for s in result.grid.step.values]
    rows = [{"step": s, "mean over layers": m, "ci95 low": lo, "ci95 high": hi, "pairs": n_pairs}
            for s, m, lo, hi in zip(steps, means, low, high)]  # fmt: skip
    manifest.tables.append(Table(f"{result.grid.name} per step (mean over layers; 95% bootstrap over {n_pairs} pairs)",
                                 ["step", "mean over layers", "ci95 low", "ci95 high", "pairs"], rows,
                                 {"mean over layers": ".2f", "ci95 low": ".2f", "ci95 high": ".2f"}))  # fmt: skip
    best = result.best()
    if best is not None:
        cell_low, cell_high = pair_intervals(per_pair)
        i, j = steps.index(best[1]), [int(v) for v in result.grid.layer.values].index(best[2])
        interval = f"{cell_low[i, j]:.2f}-{cell_high[i, j]:.2f}"
        manifest.headline.append(f"best cell 95% interval over {n_pairs} pairs: {interval}")


def first_pair_videos(r: PairRuns, finals, scores: np.ndarray, names: tuple[str, str, str]) -> dict | None:
    """The first pair's two runs and its patched run at the cell that moved it most."""
    first = np.nan_to_num(scores[0], nan=-np.inf)
    i, j = np.unravel_index(int(np.argmax(first)), first.shape)
    patched = f"{names[2]} step {r.steps[i]} layer {r.layers[j]}"
    return example_videos(r.adapter, {names[0]: r.clean_final[0], names[1]: r.corr_final[0], patched: finals[0, i, j]})


def example_videos(adapter, runs: dict) -> dict | None:
    """Decoded videos of a few final latents (name -> latent); None when the model cannot decode."""
    import torch

    try:
        with torch.no_grad():
            return {name: adapter.decode(latent[None])[0] for name, latent in runs.items()}
    except (NotImplementedError, ValueError):  # a pipeline without its VAE
        return None


def save_videos(videos: dict | None, out: Path, manifest: Manifest, caption: str, legend: dict | None = None) -> None:
    """One GIF per video and a side-by-side figure (rows runs, columns frames) in ``out/videos``
    (``legend``: colour name -> RGB under the figure, e.g. ``maze.PALETTE``)."""
    if not videos:
        return
    from interp.report.filmstrip import save_gif, save_side_by_side

    folder = out / "videos"
    for name, video in videos.items():
        path = save_gif(video, folder / f"{name.replace(' ', '_')}.gif", scale=max(1, 128 // video.shape[2]))
        manifest.add(path, "video", name)
    manifest.add(save_side_by_side(videos, folder / "side_by_side.png", legend=legend), "figure", caption)
