"""Frame-to-frame attention read from a store (``trace --attention``): frame x frame maps on a step x layer
grid and locality profiles over the steps (mass on the query's own frame, the adjacent ones, distant ones,
the first frame and text), means over the complete videos and every head. Cross-attention sites (``trace
--cross-attention``): the share each key group (text; Wan I2V's image) adds to a frame's tokens, over the steps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from activations.axes import parse_site
from activations.reader import ActivationStore
from activations.selection import parse_index_spec
from interp.experiments._causal import finite_or_none
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest, Table

LOCALITY = ("same frame", "adjacent frames", "distant frames", "first frame", "text")


@dataclass
class AttentionMapsConfig(ExperimentConfig):
    experiment = "attention"
    store: str = ""
    steps: str = "all"  # stored steps shown (positions in the store's steps)
    max_rows: int = 6  # steps drawn in the map grid (evenly spaced among the chosen)

    cli_help = {
        "store": "An activation store traced with --attention.",
        "steps": "Stored steps, as positions among the store's steps: all, 0-9:3.",
        "max_rows": "Steps drawn in the frame x frame grid (evenly spaced).",
    }


@dataclass
class AttentionMaps:
    config: AttentionMapsConfig
    sites: list[str]
    steps: list[int]
    mass: np.ndarray  # (sites, steps, T, T): mean over videos and heads
    locality: dict  # LOCALITY name -> (sites, steps)
    videos: int
    # cross-attention site -> {"keys": groups, "share": (steps, groups, T) each group's share of the output norms
    # summed over groups, "entropy": (steps, groups, T)}; means over videos and heads
    context: dict = field(default_factory=dict)


def locality(mass: np.ndarray, text: np.ndarray) -> dict:
    """Per (..., query frame, key frame) mass: the shares of LOCALITY, averaged over the query frames."""
    frames = mass.shape[-1]
    distance = np.abs(np.arange(frames)[:, None] - np.arange(frames)[None, :])
    first = np.zeros((frames, frames), bool)
    first[1:, 0] = True  # later frames looking at the first one
    out = {
        "same frame": (mass * (distance == 0)).sum(-1).mean(-1),
        "adjacent frames": (mass * (distance == 1)).sum(-1).mean(-1),
        "distant frames": (mass * (distance >= 2)).sum(-1).mean(-1),
        "first frame": (mass * first).sum(-1)[..., 1:].mean(-1) if frames > 1 else np.zeros(mass.shape[:-2]),
        "text": text.mean(-1),
    }
    return out


def run_attention_maps(cfg: AttentionMapsConfig, progress: bool = True) -> AttentionMaps:
    if not Path(cfg.store).is_file():
        raise ValueError(f"no activation store at {cfg.store}")
    with ActivationStore(cfg.store) as store:
        kept = store.attention_sites
        if not kept:
            raise ValueError(f"{cfg.store} keeps no frame-attention statistics: trace it with --attention")
        videos = store.completed_videos
        if not videos:
            raise ValueError(f"{cfg.store} has no complete video yet")
        steps = [store.steps[i] for i in parse_index_spec(cfg.steps, len(store.steps), "stored step")]
        sites, mass, text, context = [], [], [], {}
        for site in kept:
            ds = store.attention(site, videos=videos, steps=steps)
            if "keys" in ds.dims:  # a cross-attention: what each key group adds, per query frame
                norm = ds["norm"].values.astype(np.float64)  # (videos, steps, heads, groups, T); NaN: not run
                share = norm / norm.sum(axis=3, keepdims=True)
                context[site] = {"keys": list(ds["keys"].values), "share": np.nanmean(share, axis=(0, 2)),
                                 "entropy": np.nanmean(ds["entropy"].values.astype(np.float64), axis=(0, 2))}
                continue
            sites.append(site)
            mass.append(np.nanmean(ds["mass"].values.astype(np.float64), axis=(0, 2)))  # (steps, T, T); NaN: not run
            text.append(np.nanmean(ds["text"].values.astype(np.float64), axis=(0, 2)))
    frames = store.layout.extra["attention"]["frames"]
    mass_a = np.stack(mass) if mass else np.zeros((0, len(steps), frames, frames))
    text_a = np.stack(text) if text else np.zeros((0, len(steps), frames))
    return AttentionMaps(cfg, sites, steps, mass_a, locality(mass_a, text_a), len(videos), context)


def save_attention_maps(result: AttentionMaps, cfg: AttentionMapsConfig, out) -> Manifest:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"sites": result.sites, "steps": result.steps, "videos": result.videos,
              "mass": finite_or_none(result.mass),
              "locality": {k: finite_or_none(v) for k, v in result.locality.items()},
              "context": {site: {"keys": c["keys"], "share": finite_or_none(c["share"]),
                                 "entropy": finite_or_none(c["entropy"])}
                          for site, c in result.context.items()}}  # fmt: skip
    (out / "attention.json").write_text(json.dumps(record))
    manifest = Manifest("attention", "attention across frames", "attention", cfg.to_dict())
    manifest.add(out / "attention.json", "data", "frame x frame mass and locality per (site, step)")
    if result.sites:
        _self_attention(result, cfg, out, manifest)
    if result.context:
        _cross_attention(result, manifest)
    manifest.notes.append("Frames are latent frames; every query frame's attention sums to 1 over the key "
                          "frames and text; means over complete videos and every head.")  # fmt: skip
    manifest.write(out)
    return manifest


def _self_attention(result: AttentionMaps, cfg: AttentionMapsConfig, out: Path, manifest: Manifest) -> None:
    from interp.report.attention_figures import frame_map_grid, locality_curves

    rows = np.linspace(0, len(result.steps) - 1, min(cfg.max_rows, len(result.steps))).round().astype(int)
    grid = frame_map_grid(result.mass[:, sorted(set(rows.tolist()))], result.sites,
                          [result.steps[i] for i in sorted(set(rows.tolist()))], out / "frame_maps.png")  # fmt: skip
    manifest.add(grid, "figure", "frame x frame attention (query frame rows, key frame columns), steps x layers")
    curves = locality_curves(result.locality, result.sites, result.steps, out / "locality.png")
    manifest.add(curves, "figure", "where a frame's attention goes, over the steps, per layer")
    table = []
    for i, site in enumerate(result.sites):
        table.append({"layer": parse_site(site)[1], "site": site,
                      **{f"same frame, step {result.steps[j]}": float(result.locality["same frame"][i, j])
                         for j in (0, len(result.steps) - 1)}})  # fmt: skip
    columns = ["layer", "site", *[k for k in table[0] if k.startswith("same frame")]]
    manifest.tables.append(Table("attention mass on the query's own frame", columns, table,
                                 {c: ".3f" for c in columns[2:]}))  # fmt: skip
    same = result.locality["same frame"]
    manifest.headline.append(
        f"attention across frames ({result.videos} videos, {len(result.sites)} layers): own-frame share "
        f"{np.nanmean(same[:, 0]):.2f} at step {result.steps[0]}, {np.nanmean(same[:, -1]):.2f} at step "
        f"{result.steps[-1]} (mean over layers and heads)"
    )


def _cross_attention(result: AttentionMaps, manifest: Manifest) -> None:
    """A table per cross-attention site: each key group's share of what the cross-attention adds to the first
    frame's tokens and to the later frames', at the first and the last chosen step."""
    table, columns = [], ["layer", "site"]
    ends = sorted({0, len(result.steps) - 1})
    for site, c in result.context.items():
        row = {"layer": parse_site(site)[1], "site": site}
        for g, group in enumerate(c["keys"]):
            for j in ends:
                share = c["share"][j, g]
                row[f"{group}, frame 0, step {result.steps[j]}"] = float(share[0])
                if len(share) > 1:
                    row[f"{group}, later frames, step {result.steps[j]}"] = float(np.mean(share[1:]))
        table.append(row)
        columns += [k for k in row if k not in columns]
    manifest.tables.append(Table("cross-attention: each key group's share of what it adds (output norms)", columns,
                                 table, {c: ".3f" for c in columns[2:]}))  # fmt: skip
    manifest.notes.append("A cross-attention's share: the mean norm of each key group's attention output over "
                          "the sum over groups (Wan I2V attends to the image's tokens and the text in two "
                          "separate softmaxes, whose outputs are added).")  # fmt: skip


def demo(ctx) -> None:
    """The study: frame-to-frame attention of the demo's store."""
    ctx.stage("attention across frames from the store: frame x frame maps and locality over the steps")
    cfg = AttentionMapsConfig(store=str(ctx.store))
    manifest = save_attention_maps(run_attention_maps(cfg, progress=False), cfg, ctx.out / "attention")
    ctx.headline += manifest.headline


EXPERIMENT = register(Experiment("attention", AttentionMapsConfig, run_attention_maps, save_attention_maps,
                                 demo=demo, demo_order=35))  # fmt: skip
