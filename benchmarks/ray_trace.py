"""Tracing on Ray against one process, and the manifest's cost on a probe fit.

1. The same testbed trace (N videos, every step, every block) by one process (torch on all cores)
   and by a local Ray instance with 2 workers x 1 thread: videos per second, with and without
   Ray's start-up.
2. Probes read through the manifest (main file of virtual datasets over the workers' parts) against
   one consolidated file with the same content: the same probe configuration, time ratio.

Prints a table and writes benchmarks/results/ray_trace.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _record import save_record  # benchmarks/ is the script's folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="videos traced")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the single process")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ray_trace.json")
    args = parser.parse_args()

    import ray

    from activations.consolidate import consolidate_store
    from interp.experiments.distributed import run_trace_ray
    from interp.experiments.trace import TraceConfig, run_trace
    from interp.tasks.maze_labels import MAZE
    from probes.run import ProbeConfig, run_probes

    cfg = TraceConfig(n=args.n, batch_size=args.batch_size)
    work = Path(tempfile.mkdtemp(prefix="ray_bench_"))
    try:
        torch.set_num_threads(args.threads)
        tic = time.perf_counter()
        run_trace(cfg, work / "single.h5", progress=False)
        single_s = time.perf_counter() - tic

        tic = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - tic
        summary = run_trace_ray(cfg, work / "ray.h5", workers=args.workers, threads_per_worker=1, progress=False)
        ray.shutdown()
        ray_job_s = summary.seconds

        consolidate_store(work / "ray.h5", work / "one_file.h5")
        probe_cfg = ProbeConfig(targets=["on_path"], steps="0-19:4", layers="all")
        timings = {}
        for name in ("ray.h5", "one_file.h5", "ray.h5", "one_file.h5"):  # interleaved, best of two
            tic = time.perf_counter()
            table = run_probes(work / name, probe_cfg, progress=False, providers=[MAZE])
            timings.setdefault(name, []).append(time.perf_counter() - tic)
        manifest_s, one_file_s = min(timings["ray.h5"]), min(timings["one_file.h5"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "videos": args.n,
        "single_process": {"seconds": single_s, "videos_per_s": args.n / single_s, "threads": args.threads},
        "ray": {
            "workers": args.workers,
            "threads_per_worker": 1,
            "job_seconds": ray_job_s,
            "init_seconds": init_s,
            "videos_per_s": args.n / ray_job_s,
            "videos_per_s_with_init": args.n / (ray_job_s + init_s),
            "per_worker": summary.per_worker,
        },
        "probe_fit": {
            "slabs": int(len(table)),
            "through_manifest_s": manifest_s,
            "one_file_s": one_file_s,
            "overhead": manifest_s / one_file_s,
        },
    }
    print(f"{'trace':<34} {'seconds':>8} {'videos/s':>9}")
    print(f"{'one process, ' + str(args.threads) + ' threads':<34} {single_s:>8.1f} {args.n / single_s:>9.2f}")
    print(f"{f'Ray, {args.workers} workers x 1 thread (job)':<34} {ray_job_s:>8.1f} {args.n / ray_job_s:>9.2f}")
    print(f"{'Ray, with start-up':<34} {ray_job_s + init_s:>8.1f} {args.n / (ray_job_s + init_s):>9.2f}")
    print(summary.table())
    print(
        f"probe fit ({len(table)} slabs): through the manifest {manifest_s:.1f} s, one file {one_file_s:.1f} s "
        f"-> {manifest_s / one_file_s:.2f}x"
    )
    save_record(result, args.out, args.threads)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
