"""A patching sweep on Ray against one process.

The same testbed patching sweep (every block output at every other start step, maze pairs) by one
process (torch on all cores) and by a local Ray instance with 2 workers x 1 thread, interleaved
repeats. Ray is timed from ``ray.init`` (start-up: the instance and the workers' first imports)
and, on the same instance, for later runs (warm workers; each run a new config, so each worker
still records its runs once). Beside it: the cost of recording the runs (what every worker repeats
once, instead of receiving them) and their size (what the object store would have to carry).

Prints a table and writes benchmarks/results/ray_sweeps.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _record import save_record  # benchmarks/ is the script's folder


def _run_bytes(run) -> int:
    tensors = [*run.latents.values(), *run.acts.values(), *run.x0_hat.values(), run.final]
    return sum(t.numel() * t.element_size() for t in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2, help="maze pairs")
    parser.add_argument("--steps", default="0-19:4", help="start steps patched")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats after the cold Ray run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the single process")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ray_sweeps.json")
    args = parser.parse_args()

    import ray

    from interp.experiments.executors import RayExecutor
    from interp.experiments.patch import PatchConfig, _prepare, run_patch

    base = PatchConfig(n=args.n, steps=args.steps)
    load_before = os.getloadavg()[0]  # other processes on the machine skew every figure: say how busy it was
    torch.set_num_threads(args.threads)
    tic = time.perf_counter()
    _, runs = _prepare(base, None)
    record_s = time.perf_counter() - tic
    run_mb = (_run_bytes(runs.base) + _run_bytes(runs.source)) / 1e6

    single, warm, worker_stats, diff = [], [], [], 0.0
    tic = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - tic
    try:
        for repeat in range(args.repeats + 1):
            cfg = replace(base, first_seed=1000 * repeat)  # a new sweep: every worker records its runs again
            torch.set_num_threads(args.threads)
            tic = time.perf_counter()
            one = run_patch(cfg, progress=False)
            single.append(time.perf_counter() - tic)
            executor = RayExecutor(workers=args.workers, threads_per_worker=1)
            tic = time.perf_counter()
            on_ray = run_patch(cfg, progress=False, executor=executor)
            elapsed = time.perf_counter() - tic
            if repeat == 0:
                first_ray_s = elapsed  # the workers' first imports and model loads are in here
            else:
                warm.append(elapsed)
            worker_stats.append(executor.per_worker)
            print(f"repeat {repeat}: one process {single[-1]:.1f} s, Ray {elapsed:.1f} s", flush=True)
            diff = max(diff, float(np.nanmax(np.abs(one.per_pair - on_ray.per_pair))))
    finally:
        ray.shutdown()
    rows = args.n * 8  # pairs x layers per start step
    result = {
        "sweep": {"pairs": args.n, "start_steps": args.steps, "layers": 8, "rows_per_step": rows},
        "single_process": {"threads": args.threads, "seconds": single, "median_s": statistics.median(single)},
        "ray": {
            "workers": args.workers,
            "threads_per_worker": 1,
            "init_s": init_s,
            "first_run_s": first_ray_s,
            "first_run_with_init_s": init_s + first_ray_s,
            "warm_runs_s": warm,
            "warm_median_s": statistics.median(warm) if warm else None,
            "per_worker": worker_stats,
        },
        "recording": {"seconds": record_s, "runs_mb": run_mb},
        "max_score_difference_ray_vs_single": diff,
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()},
    }
    print(f"patch sweep: {args.n} pairs x 8 layers, start steps {args.steps}")
    print(f"{'run':<44} {'seconds':>8}")
    print(f"{f'one process, {args.threads} threads (median of {len(single)})':<44} {statistics.median(single):>8.1f}")
    print(f"{f'Ray {args.workers} x 1 thread, with start-up (init + cold)':<44} {init_s + first_ray_s:>8.1f}")
    print(f"{'Ray, first run without ray.init':<44} {first_ray_s:>8.1f}")
    if warm:
        print(f"{f'Ray, warm workers (median of {len(warm)})':<44} {statistics.median(warm):>8.1f}")
    print(f"recording the two runs (each worker repeats it once): {record_s:.1f} s, {run_mb:.1f} MB of tensors")
    print(f"largest score difference Ray vs one process ({args.threads} vs 1 threads): {diff:.2e}")
    print(f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs")
    save_record(result, args.out, args.threads)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
