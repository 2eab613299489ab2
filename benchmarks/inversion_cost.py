"""The cost of reading a given video (issue 32, item 7): ODE inversion from the video to noise (Euler, Heun)
and forward noising, per video, against generating it, on the testbed, interleaved repeats in one process.

The physical limit beside each figure is the number of model calls: a generation makes one per step, Euler
inversion one per step, Heun's two, forward noising one per step (the trace's calls; its
noising itself is an axpy). So Euler inversion should cost what a generation costs, Heun about twice.

    .venv/bin/python benchmarks/inversion_cost.py [--videos 16] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _record import save_record  # benchmarks/ is the script's folder

from interp.execution.loop import sample
from interp.tasks import maze as maze_task
from interp.videos import ForwardNoising, invert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "inversion_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from interp.api import maze_inputs, open_model

    adapter = open_model("testbed")
    num_steps, shift = adapter.defaults.num_steps, adapter.defaults.shift
    noise, cond, mazes = maze_inputs(adapter, n=args.videos, first_seed=100)
    clean = torch.from_numpy(np.stack([maze_task.encode(m, noise.shape[2]) for m in mazes]))
    calls = {"generate": num_steps, "invert euler": num_steps, "invert heun": 2 * num_steps,
             "forward noising": num_steps}  # fmt: skip

    def generate() -> None:
        sample(adapter, noise, cond, num_steps, shift)

    def euler() -> None:
        invert(adapter, clean, cond, adapter.make_scheduler(shift), num_steps, "euler")

    def heun() -> None:
        invert(adapter, clean, cond, adapter.make_scheduler(shift), num_steps, "heun")

    def forward() -> None:
        sample(adapter, noise, cond, num_steps, shift, hooks=[ForwardNoising(clean, noise, num_steps)])

    cases = {"generate": generate, "invert euler": euler, "invert heun": heun, "forward noising": forward}
    with torch.no_grad():
        generate()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):  # interleaved
            for name, fn in cases.items():
                tic = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - tic)
    median = {k: statistics.median(v) for k, v in times.items()}
    record = save_record({
        "model": "testbed", "videos": args.videos, "num_steps": num_steps, "seconds": times,
        "seconds_per_video": {k: v / args.videos for k, v in median.items()},
        "ratio_to_generate": {k: v / median["generate"] for k, v in median.items()},
        "model_calls": calls, "limit": "model calls: inversion (Euler) = generation = forward noising; Heun x2",
    }, args.out, args.threads)  # fmt: skip
    print(f"| case | seconds per video (median of {args.repeats}) | x generate | model calls |")
    print("| --- | --- | --- | --- |")
    for name in cases:
        print(f"| {name} | {median[name] / args.videos:.4f} | {record['ratio_to_generate'][name]:.2f} | "
              f"{calls[name]} |")


if __name__ == "__main__":
    main()
