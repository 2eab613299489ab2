"""A full step x layer activation-patching sweep on the testbed: batched from cached latents, against
the naive way (every patched run from step 0, one at a time).

Prints a table and writes benchmarks/results/patching_speed.json: wall time of both, their ratio,
and the largest difference between their final latents and between their scores (must be within
float tolerance).
Usage: python benchmarks/patching_speed.py [--pairs 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _record import save_record  # benchmarks/ is the script's folder

from interp.execution.loop import initial_noise
from interp.execution.patching import Patch, record_run, run_patched
from interp.experiments.sweep import block_sites, patch_sweep
from interp.models.testbed import TestbedAdapter
from interp.tasks.maze_scoring import MazePairMetric, rewired_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "patching_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adapter = TestbedAdapter.load()
    num_steps, frames = adapter.defaults.num_steps, 4
    sites = block_sites(adapter, list(range(adapter.num_blocks())), None)
    steps = list(range(num_steps))
    clean_mazes, corrupted_mazes = rewired_pairs(4, 0, args.pairs)

    def cached(mazes):
        cond = adapter.conditioning(mazes, frames)
        noise = initial_noise([m.seed for m in mazes], adapter.latent_shape(4, frames))
        return record_run(adapter, noise, cond, num_steps, sites), cond

    tic = time.perf_counter()
    clean, _ = cached(clean_mazes)
    corrupted, corr_cond = cached(corrupted_mazes)
    record_seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    batched = patch_sweep(adapter, corrupted, corr_cond, clean, steps, sites, [None] * args.pairs, num_steps, False)
    batched_seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    naive = torch.zeros_like(batched)
    for e in range(args.pairs):
        for i, step in enumerate(steps):
            for k, site in enumerate(sites):
                naive[e, i, k] = run_patched(
                    adapter, corrupted, corr_cond, clean, [[Patch(step, site)]], [e], [e], num_steps, start_step=0
                )[0]
    naive_seconds = time.perf_counter() - tic
    latent_diff = float((batched - naive).abs().max())
    metric = MazePairMetric(clean_mazes, corrupted_mazes)
    score_b = metric(batched, clean.final, corrupted.final)
    score_n = metric(naive, clean.final, corrupted.final)
    score_diff = float(np.nanmax(np.abs(score_b - score_n))) if np.isfinite(score_b).any() else 0.0
    ratio = naive_seconds / batched_seconds
    n_runs = args.pairs * len(steps) * len(sites)
    print(f"testbed: {args.pairs} maze pair(s) x {len(steps)} steps x {len(sites)} layers = {n_runs} patched runs")
    print(f"{'way':<36} {'seconds':>8}")
    print(f"{'record clean + corrupted runs (once)':<36} {record_seconds:>8.2f}")
    print(f"{'batched from cached x_s':<36} {batched_seconds:>8.2f}")
    print(f"{'naive: each from step 0, one by one':<36} {naive_seconds:>8.2f}")
    print(f"speed-up {ratio:.1f}x; largest difference: final latents {latent_diff:.2e}, scores {score_diff:.2e}")
    record = {
        "pairs": args.pairs,
        "steps": len(steps),
        "layers": len(sites),
        "seconds": {"record": record_seconds, "batched": batched_seconds, "naive": naive_seconds},
        "speedup": ratio,
        "max_abs_latent_diff": latent_diff,
        "max_abs_score_diff": score_diff,
    }
    save_record(record, args.out, args.threads)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
