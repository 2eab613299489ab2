"""The organism's bars: final-sample accuracy and step-0 x0_hat accuracy per maze size, on held-out
mazes (seeds 0..n-1, disjoint from training), with 95% Wilson intervals.

Bars (issue 16): final >= 95% on 4x4 and >= 70% on the largest trained size; x0_hat decoded at step 0
solves at most half as many of the largest-size mazes as the final sample does.
Prints a table and writes benchmarks/results/organism_accuracy.json (or --out).
Usage: python benchmarks/organism_accuracy.py [--weights DIR ...] [--n 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _record import save_record  # benchmarks/ is the script's folder

from interp.evaluation import verify_latents, wilson_interval
from interp.execution.loop import KeepX0, initial_noise, sample
from interp.models.testbed import NAMED, TestbedAdapter
from interp.tasks import maze as maze_task
from interp.tasks.splits import held_out_seeds
from interp.training import train_sizes


def _share(k: int, n: int) -> dict:
    return {"k": k, "n": n, "accuracy": k / n, "ci95": list(wilson_interval(k, n))}


def evaluate(folder: Path, sizes: list[int], n: int, batch: int = 100) -> dict:
    adapter = TestbedAdapter.load(folder)
    rows = []
    for size in sizes:
        tic, final, first = time.time(), 0, 0
        mazes = [maze_task.generate_maze(size, s) for s in held_out_seeds(n)]
        for i in range(0, n, batch):
            chunk = mazes[i : i + batch]
            noise = initial_noise([m.seed for m in chunk], adapter.latent_shape(size, 4))
            hook = KeepX0([0])
            with torch.no_grad():
                out = sample(adapter, noise, adapter.conditioning(chunk, 4), adapter.defaults.num_steps, hooks=[hook])
            final += sum(v.solved for v in verify_latents(adapter, out.latents, chunk))
            first += sum(v.solved for v in verify_latents(adapter, torch.from_numpy(hook.x0[0]).to(out.latents), chunk))
        rows.append({"size": size, "final": _share(final, n), "x0_step0": _share(first, n),
                     "seconds": round(time.time() - tic, 1)})  # fmt: skip
    training = json.loads((folder / "training.json").read_text()) if (folder / "training.json").is_file() else {}
    largest = max(train_sizes(training["config"])) if training else max(sizes)
    by = {r["size"]: r for r in rows}
    bars = {
        "final 4x4 >= 95%": by[4]["final"]["accuracy"] >= 0.95 if 4 in by else None,
        f"final {largest}x{largest} >= 70%": by[largest]["final"]["accuracy"] >= 0.70 if largest in by else None,
        f"x0_hat step 0 {largest}x{largest} <= half the final": (
            by[largest]["x0_step0"]["k"] <= 0.5 * by[largest]["final"]["k"] if largest in by else None
        ),
    }
    return {"weights": str(folder), "training_step": training.get("step"), "exported": training.get("exported"),
            "rows": rows, "bars": bars}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, nargs="*", default=[NAMED["testbed-mixed"]])
    parser.add_argument("--sizes", type=int, nargs="*", default=[4, 5, 6, 7])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "organism_accuracy.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [evaluate(folder, args.sizes, args.n) for folder in args.weights]
    for res in results:
        print(f"{res['weights']} (training step {res['training_step']}, {res['exported']} weights)")
        print(f"{'maze':>6} {'n':>5} {'final':>7} {'95% CI':>13} {'x0 step 0':>10} {'95% CI':>13}")
        for r in res["rows"]:
            f, z = r["final"], r["x0_step0"]
            final = f"{f['accuracy']:>7.1%} {f['ci95'][0]:>6.1%}-{f['ci95'][1]:<6.1%}"
            first = f"{z['accuracy']:>10.1%} {z['ci95'][0]:>6.1%}-{z['ci95'][1]:<6.1%}"
            print(f"{r['size']}x{r['size']:<4} {f['n']:>5} {final} {first}")
        for bar, met in res["bars"].items():
            print(f"  bar {bar}: {'met' if met else 'NOT met'}")
    save_record({"results": results}, args.out, torch.get_num_threads())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
