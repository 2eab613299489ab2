"""What the testbed ensemble's figures and tables need beyond its accuracy rows: paired tests on the
same mazes (exact McNemar, since every method answers the same mazes), and the videos of one maze
sampled by one seed, by the ensemble and by its temperature control, side by side."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from interp.manifest import Manifest, Table


def _label(r: dict) -> str:
    from interp.report.ensemble_figures import row_label

    return row_label(r)


def paired_rows(rows: list[dict]) -> list[dict]:
    """Per size, every method against the single seed on the same mazes, and the best ensemble
    against the best control: mazes only the first solves, only the second, exact McNemar p."""
    from interp.analysis.claims import mcnemar

    out = []
    for size in sorted({r["size"] for r in rows}):
        sel = [r for r in rows if r["size"] == size and "solved" in r]
        single = next((r for r in sel if r["method"] == "single seed"), None)
        pairs = [(r, single) for r in sel if single is not None and r is not single]
        ensembles = [r for r in sel if r["method"].startswith("ensemble")]
        controls = [r for r in sel if r["method"].startswith("control")]
        if ensembles and controls:
            pairs.append((max(ensembles, key=lambda r: r["accuracy"]), max(controls, key=lambda r: r["accuracy"])))
        for a, b in pairs:
            only_a, only_b, p = mcnemar(np.asarray(a["solved"], bool), np.asarray(b["solved"], bool))
            out.append({"size": size, "method": _label(a), "against": _label(b), "only method": only_a,
                        "only against": only_b, "difference": a["accuracy"] - b["accuracy"], "p": p})  # fmt: skip
    return out


def add_paired(manifest: Manifest, rows: list[dict]) -> list[dict]:
    paired = paired_rows(rows)
    if paired:
        columns = ["size", "method", "against", "only method", "only against", "difference", "p"]
        manifest.tables.append(Table("paired on the same mazes (exact McNemar)", columns, paired,
                                     {"difference": "+.3f", "p": ".3f"}))  # fmt: skip
        manifest.notes.append(
            "Every method answers the same mazes, so comparisons are paired: the exact McNemar test counts the "
            "mazes only one of two methods solves (the per-method Wilson intervals are for each accuracy alone)."
        )
        best = [r for r in paired if not r["against"].startswith("single seed")]
        manifest.headline += [f"{r['size']}x{r['size']}: {r['method']} vs {r['against']}: {r['difference']:+.1%} "
                              f"({r['only method']} vs {r['only against']} mazes solved by one only, McNemar "
                              f"p = {r['p']:.2f})" for r in best]  # fmt: skip
    return paired


def _pick(solved: dict[str, np.ndarray]) -> int:
    """A maze where the three disagree, preferring one the ensemble solves and one seed does not."""
    one, ens, temp = solved.values()
    for mask in (~one & ens, one != ens, (one != temp) | (ens != temp)):
        if mask.any():
            return int(np.flatnonzero(mask)[0])
    return 0


def save_examples(cfg, out: Path, manifest: Manifest, adapter=None, mazes_tried: int = 8) -> None:
    """At the largest maze size: one seed, the first ensemble of N > 1 seeds and the first temperature
    control on the first ``mazes_tried`` mazes (the same noise and hooks as the sweep, so the same
    runs); one maze where they differ is decoded and saved as GIFs and a side-by-side figure."""
    from interp.experiments._causal import save_videos
    from interp.experiments.ensemble_runs import prepare, sample_groups, variants, verdicts
    from interp.tasks.maze import PALETTE

    found = list(variants(cfg.ensemble_sizes, cfg.ks, cfg.merges, cfg.temperatures))
    ensemble = next((v for v in found if v[2] > 1 and v[1]["method"].startswith("ensemble")), None)
    control = next((v for v in found if v[1]["method"] == "control: temperature"), None)
    if ensemble is None or control is None:
        return
    r = prepare(dataclasses.replace(cfg, sizes=[max(cfg.sizes)]) if cfg.data is None else cfg, adapter,
                videos_per_group=mazes_tried)  # fmt: skip
    group = max(r.groups, key=lambda g: g.size or 0)
    if group.mazes is None:
        return
    mazes = group.mazes
    noises, cond = r.inputs(group, list(range(len(group.videos))))

    def run(n_seeds: int, hooks=(), scale: float = 1.0) -> torch.Tensor:
        return sample_groups(r.adapter, noises, cond, n_seeds, r.num_steps, hooks, scale, r.shift)[:, 0]

    finals = {"one seed": run(1), _label(ensemble[1]): run(*ensemble[2:5]),
              f"temperature {control[4]:g}": run(*control[2:5])}  # fmt: skip
    solved = {name: verdicts(r.adapter, latents, mazes) for name, latents in finals.items()}
    i = _pick(solved)
    with torch.no_grad():
        videos = {f"{name} ({'solved' if solved[name][i] else 'failed'})": r.adapter.decode(latents[i : i + 1])[0]
                  for name, latents in finals.items()}  # fmt: skip
    size = group.size
    save_videos(videos, out, manifest, f"maze {mazes[i].seed} ({size}x{size}), the same noise: one seed, the ensemble "
                f"and its temperature control (rows), frames (columns)", legend=PALETTE)  # fmt: skip
