"""The sweep engine of patching-style experiments, with injected metric and token-region functions.

``patch_step`` runs every (pair, site) patch of a recorded base run from a source run first applied
at one step, one batch (``patch_sweep``: every step), each row resumed from the base's cached x_s
and scheduler state. A *metric* maps the final latents (pairs, steps, sites, *latent) and the two
reference finals of each pair to scores (1 = the source's behaviour, 0 = the base's);
``latent_projection`` needs no task. A *region* is a set of flat token indices (None: all tokens);
``region_tokens`` reads the task-free ones, a task adds its own (the maze's ``diff``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from activations.axes import parse_site
from interp.execution.patching import Patch, RunCache, run_patched

Metric = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], np.ndarray]


def block_sites(adapter, layers: list[int], sub: str | None) -> list[str]:
    """Block outputs (or one sub-module) of ``layers``, every expert of a multi-expert model."""
    return [s for s in adapter.site_names(layers, (sub,) if sub else ()) if parse_site(s)[2] == sub]


def layer_sites(adapter, layers: list[int], sub: str | None) -> list[tuple[str, ...]]:
    """Per layer, its site in every expert (one site for single-expert models): a grid column."""
    groups: dict[int, list[str]] = {layer: [] for layer in layers}
    for site in block_sites(adapter, layers, sub):
        groups[parse_site(site)[1]].append(site)
    return [tuple(groups[layer]) for layer in layers]


def active_site(run: RunCache, step: int, group: tuple[str, ...]) -> str | None:
    """The site of ``group`` that ran at ``step`` in a recorded run (a two-expert model runs one
    expert per step); None if the run recorded none of them there."""
    return next((site for site in group if (step, 0, site) in run.acts), None)


def projection_score(final: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor) -> np.ndarray:
    """Per row: where ``final`` lies between the corrupted (0) and the clean (1) final latent."""
    diff = (clean - corrupted).flatten(1).double()
    moved = (final - corrupted).flatten(1).double()
    denom = (diff**2).sum(1)
    return torch.where(denom > 0, (moved * diff).sum(1) / denom.clamp_min(1e-300), torch.nan).numpy()


def latent_projection(finals: torch.Tensor, clean_final: torch.Tensor, corr_final: torch.Tensor) -> np.ndarray:
    """(pairs, steps, sites) projection of each final latent between its pair's two reference finals."""
    n, s, k = finals.shape[:3]
    scores = np.full((n, s, k), np.nan)
    for e in range(n):
        flat = finals[e].reshape(s * k, *finals.shape[3:])
        c = clean_final[e : e + 1].expand_as(flat)
        r = corr_final[e : e + 1].expand_as(flat)
        scores[e] = projection_score(flat, c, r).reshape(s, k)
    return scores


def region_mask(region: str, grid: tuple[int, int, int]) -> np.ndarray | None:
    """(T, H, W) mask of a task-free region: all (None), frame:F, or a .npy mask file on the token grid."""
    t = grid[0]
    if region == "all":
        return None
    if region.startswith("frame:"):
        try:
            f = int(region.split(":", 1)[1])
        except ValueError as err:
            raise ValueError(f"region {region!r}: use frame:F with an integer F") from err
        if not 0 <= f < t:
            raise ValueError(f"region {region!r}: frame {f} is out of range (0-{t - 1})")
        mask = np.zeros(grid, dtype=bool)
        mask[f] = True
        return mask
    path = Path(region)
    if not path.is_file():
        raise ValueError(f"region {region!r}: use all, frame:F, diff (maze pairs) or a .npy mask file")
    mask = np.load(path, allow_pickle=False)
    if mask.shape != grid:
        raise ValueError(f"region mask {path} has shape {mask.shape}; the token grid is {grid}")
    return mask.astype(bool)


def mask_tokens(mask: np.ndarray | None) -> tuple[int, ...] | None:
    return None if mask is None else tuple(int(i) for i in np.flatnonzero(mask.reshape(-1)))


def patch_sweep(
    adapter,
    base: RunCache,
    base_cond,
    source: RunCache,
    steps: list[int],
    sites: list,
    tokens: list,
    num_steps: int,
    progress: bool = True,
    onward: bool = False,
    pairs: list[tuple[int, int]] | None = None,
    backend: str = "hooks",
) -> torch.Tensor:
    """Final latents of every (pair, step, site) patch, (pairs, steps, sites, *latent): ``patch_step``
    for each of ``steps`` (the experiments run the steps through an executor instead)."""
    out = [
        patch_step(adapter, base, base_cond, source, step, sites, tokens, num_steps, onward, pairs, backend)
        for step in tqdm(steps, disable=not progress, desc="patching steps", leave=False)
    ]
    return torch.stack(out, 1)


def patch_step(
    adapter,
    base: RunCache,
    base_cond,
    source: RunCache,
    step: int,
    sites: list,
    tokens: list,
    num_steps: int,
    onward: bool = False,
    pairs: list[tuple[int, int]] | None = None,
    backend: str = "hooks",
    max_batch: int | None = None,
) -> torch.Tensor:
    """Final latents of every (pair, site) patch first applied at ``step``, (pairs, sites, *latent):
    every pair x every site resumed from the base's cached x_s at that step, in one batch (or in
    batches of ``max_batch`` rows, to fit a device).

    ``sites[k]`` is a site or a tuple of one layer's sites in every expert: at each patched step the
    one that ran there (``active_site``). A pair is (base element, source element); default:
    element e of both runs, for every element of the base. ``tokens[i]`` is pair i's token region
    (None: all). ``onward``: patch that step and every later one (default: that step only, then
    sampling continues unpatched).
    """
    pairs = pairs if pairs is not None else [(e, e) for e in range(base.batch)]
    groups = [(s,) if isinstance(s, str) else tuple(s) for s in sites]

    def patches(t: int, group: tuple[str, ...], region) -> list[Patch]:
        site = active_site(source, t, group) if len(group) > 1 else group[0]
        return [] if site is None else [Patch(t, site, region)]

    base_elements = [b for b, _ in pairs for _ in groups]
    source_elements = [src for _, src in pairs for _ in groups]
    span = range(step, num_steps) if onward else (step,)
    rows = [[p for t in span for p in patches(t, g, tokens[i])] for i in range(len(pairs)) for g in groups]
    size = max_batch or len(rows)
    finals = torch.cat([
        run_patched(adapter, base, base_cond, source, rows[i : i + size], base_elements[i : i + size],
                    source_elements[i : i + size], num_steps, start_step=step, backend=backend)
        for i in range(0, len(rows), size)
    ])  # fmt: skip
    return finals.reshape(len(pairs), len(groups), *finals.shape[1:])
