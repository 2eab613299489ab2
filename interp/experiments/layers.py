"""Layer specialisation: one profile per layer of what it holds and does, and whether early /
middle / late layers take different roles.

Three kinds of profile, each per layer with a 95% interval:
- probe selectivity of every target of a probe table in the store (best step per layer; the
  probe's own bootstrap over test videos);
- linear CKA of the layer's tokens to the video's final sample on the same tokens (per video,
  then the mean over the chosen steps; bootstrap over videos);
- the patching effect: the diff region (cells whose solutions differ) of that layer alone patched
  clean into corrupted from a start step onward, scored by the final latent's projection between
  the two runs' finals (mean over start steps; bootstrap over pairs). Patching every token of a
  layer would restore the clean run at every layer by construction; the region keeps the rest of
  the layer corrupted, so the layers can differ.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from activations import ActivationStore
from activations.selection import parse_index_spec
from interp.analysis.layer_roles import Profile, bootstrap_profile, probe_profiles, roles_claim, roles_sentence
from interp.analysis.similarity import linear_cka
from interp.experiments import sweep
from interp.experiments._causal import CausalConfig, finite_or_none
from interp.experiments.base import Experiment, register
from interp.manifest import Manifest, Table
from interp.sources import SourceConfig

VIDEO_CHUNK = 8  # videos read per (site, step): bounds host memory on a store at real width


@dataclass
class LayersConfig(CausalConfig):
    experiment = "layers"
    store: str = ""  # a trace of this model's block outputs, with a probe table (interp probe)
    probes: str = "probes"  # the probe table's name in the store
    layers: str = "all"
    cka_steps: str = "all"  # stored steps whose CKA to the final sample is averaged
    n: int = 4  # maze pairs patched
    patch_steps: str | None = None  # start steps patched onward; default four spread over the steps

    cli_help = {
        **CausalConfig.cli_help,
        "store": "An activation store of this model's block outputs (interp trace) holding a probe table.",
        "probes": "The probe table's name in the store (interp probe --name).",
        "layers": "Layers to profile.",
        "cka_steps": "Stored steps averaged in the CKA profile, e.g. all, 0-19:2.",
        "patch_steps": "Start steps patched onward, e.g. 0,5,10,15; default four spread over the steps.",
    }


@dataclass
class LayersResult:
    config: LayersConfig
    profiles: list[Profile]
    cka: np.ndarray  # (videos, cka steps, layers)
    cka_steps: list[int]
    patch: np.ndarray  # (pairs, patch steps, layers)
    patch_steps: list[int]
    verdict: dict


def default_patch_steps(num_steps: int) -> str:
    return ",".join(str(s) for s in sorted({0, num_steps // 4, num_steps // 2, 3 * num_steps // 4}))


def run_layers(cfg: LayersConfig, adapter=None, progress: bool = True) -> LayersResult:
    """Every check first (store, probe table, sites), then the CKA profile and the patching sweep."""
    from interp.experiments.patch import PatchConfig, run_patch
    from probes.run import read_results

    if adapter is None and cfg.model_task() is None:
        raise ValueError("layers profiles a maze model (its patching compares maze pairs on the cells where their "
                         "solutions differ); on a pipeline run probe, patch and flow apart")  # fmt: skip
    adapter = adapter or cfg.load()
    num_steps = cfg.num_steps_of(adapter)
    layers = parse_index_spec(cfg.layers, adapter.num_blocks(next(iter(adapter.transformers()))), "layer")
    if len(layers) < 3:
        raise ValueError(f"layer roles need at least three layers (early, middle, late), got {len(layers)}")
    patch_steps = cfg.patch_steps or default_patch_steps(num_steps)
    starts = parse_index_spec(patch_steps, num_steps, "step")
    if not cfg.store:
        raise ValueError("--store is required: a trace of this model's block outputs (interp trace, then interp probe)")
    sites = [group[0] for group in sweep.layer_sites(adapter, layers, None)]
    with ActivationStore(cfg.store) as store:
        missing = [s for s in sites if s not in store.sites]
        if missing:
            raise ValueError(f"{cfg.store} holds no {missing[0]!r}: trace every profiled layer's block output")
        sizes = {store.meta(v).get("size") for v in store.completed_videos[:1]} - {None}
        if sizes and cfg.data is None and cfg.size not in sizes:
            raise ValueError(f"{cfg.store} holds {min(sizes)}x{min(sizes)} mazes: patch the same size (--size "
                             f"{min(sizes)})")  # fmt: skip
        cka_steps = [store.steps[i] for i in parse_index_spec(cfg.cka_steps, len(store.steps), "stored step")]
        try:
            table = read_results(cfg.store, cfg.probes)
        except (KeyError, ValueError) as err:
            raise ValueError(f"{cfg.store} has no probe table {cfg.probes!r} (run interp probe first): {err}") from None
        cka = cka_to_final(store, sites, cka_steps)
    source = {f.name: getattr(cfg, f.name) for f in fields(SourceConfig)}  # the same source, every field
    patched = run_patch(PatchConfig(**source, steps=patch_steps, layers=cfg.layers, region="diff", span="onward",
                                    metric="latent", backend=cfg.backend),
                        adapter, progress=progress)  # fmt: skip
    with warnings.catch_warnings():  # a pair or video with no value stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        profiles = probe_profiles(table, layers, sites)
        profiles.append(bootstrap_profile("CKA to the final sample", layers, np.nanmean(cka, axis=1)))
        profiles.append(bootstrap_profile("patching effect", layers, np.nanmean(patched.per_pair, axis=1)))
    return LayersResult(cfg, profiles, cka, cka_steps, patched.per_pair, starts, roles_claim(profiles))


def cka_to_final(store: ActivationStore, sites: list[str], steps: list[int]) -> np.ndarray:
    """(videos, steps, sites) linear CKA of each video's tokens at a site to its final sample's tokens."""
    from probes.features import final_tokens

    videos = store.completed_videos
    if not videos:
        raise ValueError(f"{store.path} has no complete video")
    out = np.full((len(videos), len(steps), len(sites)), np.nan)
    for start in range(0, len(videos), VIDEO_CHUNK):
        chunk = videos[start : start + VIDEO_CHUNK]
        final = torch.from_numpy(final_tokens(store, chunk))
        for k, site in enumerate(sites):
            acts = store.activations(site, videos=chunk, steps=steps, as_torch=True)  # (v, steps, tokens, width)
            for v in range(len(chunk)):
                for j in range(len(steps)):
                    out[start + v, j, k] = linear_cka(acts[v, j].float(), final[v])
    return out


def save_layers(result: LayersResult, cfg: LayersConfig, out) -> Manifest:
    from interp.report.layer_figures import layer_profiles_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers = result.profiles[0].layers
    record = {"config": cfg.to_dict(), "profiles": [p.record() for p in result.profiles],
              "cka": {"steps": result.cka_steps, "per_video": finite_or_none(result.cka)},
              "patch": {"start_steps": result.patch_steps, "per_pair": finite_or_none(result.patch)},
              "verdict": result.verdict}  # fmt: skip
    (out / "layers.json").write_text(json.dumps(record, indent=2))
    (out / "config.json").write_text(cfg.to_json())
    figure = layer_profiles_figure(result, out / "layer_profiles.png")
    manifest = Manifest("layers", "layer specialisation: per-layer profiles", "layers", {"experiment": "layers",
                        **asdict(cfg)})  # fmt: skip
    manifest.add(figure, "figure", "per-layer profiles: probe selectivity per target (best step per layer), CKA of "
                 "the layer to the final sample, the diff-region patching effect; 95% intervals; shaded thirds")
    manifest.add(out / "layers.json", "data", "every profile, per-video CKA, per-pair patching scores, the verdict")
    manifest.add(out / "config.json", "config", "the config")
    columns = ["profile", *[f"layer {layer}" for layer in layers]]
    rows = [{"profile": p.name, **{f"layer {layer}": float(v) for layer, v in zip(layers, p.values)}}
            for p in result.profiles]  # fmt: skip
    manifest.tables.append(Table("per-layer profiles", columns, rows, dict.fromkeys(columns[1:], ".2f")))
    manifest.notes.append(
        "CKA is computed per video over its tokens against the final sample cut into the same tokens. The patching "
        "effect patches only the diff region (cells whose solutions differ) of one layer, onward from each start "
        "step: every token of a layer would restore the clean run at every layer by construction."
    )
    manifest.claims.append(result.verdict)
    manifest.headline.append(roles_sentence(result.verdict))
    manifest.write(out)
    return manifest


def demo(ctx) -> None:
    """The study: profiles of every block on the demo's store and its probes."""
    ctx.stage("layer specialisation: per-layer profiles of probes, CKA to the final sample, patching")
    cfg = LayersConfig(model=ctx.model, store=str(ctx.store), n=ctx.options["n_causal"] * 2, size=ctx.size,
                       num_frames=ctx.frames)  # fmt: skip
    result = run_layers(cfg, ctx.adapter, progress=False)
    manifest = save_layers(result, cfg, ctx.out / "causal" / "layers")
    ctx.headline += manifest.headline


EXPERIMENT = register(Experiment("layers", LayersConfig, run_layers, save_layers, demo=demo, demo_order=64))
