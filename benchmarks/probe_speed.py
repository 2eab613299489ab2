"""Fast path against a scikit-learn loop: all (step, layer) probes of one target on the testbed store.

Traces the shipped testbed (every block, every step) into a temporary store, then runs
``run_probes`` for one target with ``method="fast"`` and ``method="sklearn"`` (the same video split,
folds, C grid, control task, x_t and conditioning controls). Prints a table and writes
benchmarks/results/probe_speed.json. Floors from the issue: at least 10x faster, at most 1 point apart.
Usage: python benchmarks/probe_speed.py [--videos 64] [--target on_path] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _record import save_record  # benchmarks/ is the script's folder

from interp.trace_job import TraceConfig, run_trace
from probes.run import ProbeConfig, run_probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--target", default="on_path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probe_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    store = run_trace(TraceConfig(n=args.videos), work / "t.h5", progress=False)
    seconds, tables = {}, {}
    for method in ("fast", "sklearn"):
        tic = time.perf_counter()
        tables[method] = run_probes(store, ProbeConfig(targets=[args.target], method=method), progress=False)
        seconds[method] = time.perf_counter() - tic
    shutil.rmtree(work, ignore_errors=True)
    fast, ref = tables["fast"], tables["sklearn"]
    diffs = {c: np.abs(fast[c].to_numpy() - ref[c].to_numpy()) for c in ("value", "control", "x_t")}
    ratio = seconds["sklearn"] / seconds["fast"]
    n_slabs = len(fast)
    print(
        f"testbed store: {args.videos} videos, {n_slabs} (step, layer) probes of {args.target!r} "
        f"(+ control task, x_t and conditioning controls), {args.threads} threads"
    )
    print(f"{'method':<10} {'seconds':>8} {'per slab':>9}")
    for m in ("fast", "sklearn"):
        print(f"{m:<10} {seconds[m]:>8.1f} {seconds[m] / n_slabs:>9.3f}")
    print(f"speed-up: {ratio:.1f}x")
    print(f"{'column':<10} {'mean |diff|':>12} {'max |diff|':>11}  (accuracy points x 100)")
    for c, d in diffs.items():
        print(f"{c:<10} {100 * d.mean():>12.2f} {100 * d.max():>11.2f}")
    worst = max(float(d.max()) for d in diffs.values())
    print(
        f"floors: >= 10x faster: {'met' if ratio >= 10 else 'NOT met'} ({ratio:.1f}x); "
        f"<= 1 point apart: {'met' if worst <= 0.01 else 'NOT met'} (max {100 * worst:.2f} points)"
    )
    record = {
        "videos": args.videos,
        "target": args.target,
        "slabs": n_slabs,
        "seconds": seconds,
        "speedup": ratio,
        "mean_abs_diff": {c: float(d.mean()) for c, d in diffs.items()},
        "max_abs_diff": {c: float(d.max()) for c, d in diffs.items()},
        "floor_speed_met": ratio >= 10,
        "floor_agreement_met": worst <= 0.01,
    }
    save_record(record, args.out, args.threads)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
