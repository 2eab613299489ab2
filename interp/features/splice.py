"""The splice-in score of an SAE (issue 31, item 2): the store's own run of the held-out videos, continued
with the SAE's reconstruction in place of its site at its step (through the call runner), against the clean
run and an ablation of that site at that step:

    score = (ablation - SAE) / (ablation - clean)

on a loss where lower is better: the final latent's relative distance to the clean run's (every model), and
for a maze model also the failure rate (the verifier on the decoded video). 1: the reconstruction does what
the site did; 0: no better than the ablation; undefined where the ablation itself changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ABLATIONS = ("zero", "mean")


@dataclass
class SpliceRuns:
    """The held-out videos of a store, re-run from its recorded trace config: the model, their inputs, the
    clean finals and the losses a final is scored by (name -> final latents -> (videos,) losses)."""

    adapter: object
    noise: torch.Tensor
    conditioning: object
    num_steps: int
    shift: float | None
    clean: torch.Tensor | None = None
    losses: dict | None = None

    def final(self, hooks) -> torch.Tensor:
        from interp.execution.patching import record_run

        run = record_run(self.adapter, self.noise.clone(), self.conditioning, self.num_steps, [], shift=self.shift,
                         hooks=hooks)  # fmt: skip
        return run.final


def splice_runs(store, videos: list[int]) -> SpliceRuns:
    """Rebuild ``videos`` of ``store`` from its trace config (model, samples, seeds: the same inputs) and run
    them once clean."""
    from interp.experiments._causal import maze_truths
    from interp.experiments.trace import TraceConfig

    record = store.layout.extra.get("trace_config")
    if not isinstance(record, dict):
        raise ValueError(f"{store.path} records no trace config: the splice-in score re-runs the store's videos")
    cfg = TraceConfig.from_dict({"experiment": "trace", **record})
    if cfg.video_file is not None and cfg.noising != "invert":
        raise ValueError(f"{store.path} holds forward-noised videos: no trajectory to continue a run along (trace "
                         "them with --noising invert)")  # fmt: skip
    adapter = cfg.load()
    keys = [store.layout.video_keys[v] for v in videos]
    by_key = {v.key: v for v in cfg.videos(adapter)}
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise ValueError(f"{store.path}: video {missing[0]!r} is no longer in its source (data moved or changed)")
    chosen = [by_key[k] for k in keys]
    noise, cond = cfg.inputs(adapter, chosen)
    runs = SpliceRuns(adapter, noise, cond, store.layout.num_steps, store.layout.extra.get("shift"))
    runs.clean = runs.final([])
    reference = runs.clean.flatten(1).double()

    def distance(final: torch.Tensor) -> np.ndarray:
        diff = (final.flatten(1).double() - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-12)
        return diff.cpu().numpy()

    runs.losses = {"latent distance": distance}
    mazes = maze_truths(adapter, chosen)
    if mazes is not None:
        from interp.evaluation import verify_latents

        def failure(final: torch.Tensor) -> np.ndarray:
            return np.array([0.0 if v.solved else 1.0 for v in verify_latents(adapter, final, mazes)])

        runs.losses["failure rate"] = failure
    return runs


def splice_score(runs: SpliceRuns, sae, site: str, step: int, ablation: str = "zero") -> dict:
    """The SAE's splice-in score at (site, step) on every loss (``splice_score``: the latent distance's;
    ``splice_score_verifier``: the failure rate's), beside the losses they are computed from."""
    from interp.api import Intervention, mean, zero

    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}")

    def reconstruct(value: torch.Tensor, _step: int) -> torch.Tensor:
        with torch.no_grad():
            x = value.to(sae.device, torch.float32)
            return sae.decode(sae.encode(x)).to(value.device, value.dtype)

    batch = runs.noise.shape[0]
    spliced = Intervention(site, reconstruct, steps=[step]).bind(runs.adapter, batch)
    ablated = (zero if ablation == "zero" else mean)(site, steps=[step]).bind(runs.adapter, batch)
    finals = {"clean": runs.clean, "with SAE": runs.final([spliced]), f"{ablation} ablation": runs.final([ablated])}
    out = {}
    for loss_name, loss in runs.losses.items():
        values = {name: float(loss(final).mean()) for name, final in finals.items()}
        clean, with_sae, without = values["clean"], values["with SAE"], values[f"{ablation} ablation"]
        score = (without - with_sae) / (without - clean) if abs(without - clean) > 1e-12 else float("nan")
        out["splice_score" if loss_name == "latent distance" else "splice_score_verifier"] = score
        out.update({f"{loss_name} {name}": value for name, value in values.items()})
    return out
