"""Peak memory, time and accuracy of probes under a per-video token budget (``--max-tokens``).

Writes a synthetic store at real width through ``activations.writer.StoreWriter`` (no model):
``--videos`` x ``--tokens`` x ``--hidden`` fp16, one step x two layers (layer 0 noise, layer 1 with
planted features), x_t latents of noise. Planted, per token: a binary class (30 % positive) moved
``--signal`` along a random unit direction (its Bayes accuracy is printed), and a continuous
value along another direction (R^2 about 0.8). Then every probe run is a fresh subprocess (peak
RSS as VmHWM, wall time, bytes read from the block device, from /proc/self/io), with the store's
files dropped from the page cache before each run (posix_fadvise), so each run reads from disk:

- the class target at budgets 1k / 8k per video and with every token (``max_tokens`` unset: each
  slab read whole, the original path), and at 1k on half of the videos;
- the regression target (ridge from Gram sums) at 1k and at every token streamed (``max_tokens``
  = tokens per video), at 1k on half of the videos, and with whole slabs on a quarter of them
  (the whole-slab ridge needs ~14x the fp32 slab: 11 GB for half of the default store);

all with ``group=1`` (the smallest memory the whole-slab path has). A run whose predicted peak
would not fit in the machine's free memory is skipped and says so (the child also runs under an
address-space limit, so it fails with MemoryError instead of calling the OOM killer). Prints a
table and writes benchmarks/results/probe_memory.json; the store is deleted afterwards.
Defaults (32 videos: about 8 minutes at 1 thread here; the whole-slab run needs ~9 GB) keep every
run within this 2-core, 23 GB machine; ``--videos 64`` is the issue's size (its whole-slab run,
~18 GB predicted, is skipped here). ``--quick``: 16 videos x 240 tokens x 64 hidden, seconds.
Usage: python benchmarks/probe_memory.py [--quick] [--videos 32] [--tokens 8190] [--hidden 1536]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _grid(n_tokens: int) -> tuple[int, int, int]:
    """A (frames, h, w) token grid of n_tokens (8,190 = 21 x 15 x 26: a quarter of Wan 2.1's 480p 21 x 30 x 52)."""
    known = {8190: (21, 15, 26), 32760: (21, 30, 52), 240: (3, 8, 10)}
    if n_tokens in known:
        return known[n_tokens]
    return (1, 1, n_tokens)


def write_store(path: Path, videos: int, n_tokens: int, hidden: int, signal: float, seed: int = 0) -> None:
    from activations import StoreLayout, StoreWriter
    from activations.axes import block_site

    grid = _grid(n_tokens)
    latent = (16, grid[0], 2 * grid[1], 2 * grid[2])  # Wan's patch (1, 2, 2): 64 x_t features per token
    rng = np.random.default_rng(seed)
    cls = (rng.random((videos, n_tokens)) < 0.3).astype(np.int64)
    value = rng.standard_normal((videos, n_tokens))
    directions = np.linalg.qr(rng.standard_normal((hidden, 2)))[0].T.astype(np.float32)
    offset = rng.normal(0.0, 2.0, hidden).astype(np.float32)  # channel means, as block outputs have
    sites = [block_site(0), block_site(1)]
    layout = StoreLayout(
        model="synthetic", adapter="none", num_steps=1, steps=[0], timesteps=[1000.0], sigmas=[1.0, 0.0],
        sites=sites, hidden={s: hidden for s in sites}, token_grid=grid,
        pooling=json.dumps({"kind": "none", "factor": 1, "count": 0, "seed": 0}), n_tokens=n_tokens,
        latent_shape=latent, n_videos=videos, video_keys=[f"v{i}" for i in range(videos)], dtype="float16",
    )  # fmt: skip
    batch = 8
    with StoreWriter(path, layout, max_queue_bytes=1 << 30) as writer:
        for start in range(0, videos, batch):
            vs = list(range(start, min(start + batch, videos)))
            part = writer.begin_part(vs)
            for k, site in enumerate(sites):
                x = rng.standard_normal((len(vs), n_tokens, hidden), dtype=np.float32)
                x += offset
                if k == 1:
                    x += (signal * (2.0 * cls[vs] - 1.0))[:, :, None] * directions[0]
                    x += (2.0 * value[vs])[:, :, None] * directions[1]
                part.write_site(site, 0, x.astype(np.float16))
                del x
            noise = rng.standard_normal((len(vs), *latent), dtype=np.float32).astype(np.float16)
            part.write_x0_hat(0, noise)
            part.write_x_t(0, noise)
            part.finish(np.zeros((len(vs), *latent), np.float16), [{"task": "synthetic"}] * len(vs))
    np.save(path.with_name("cls.npy"), cls)
    np.save(path.with_name("value.npy"), value)
    for n in (videos // 2, videos // 4):  # the same labels on the first n videos only: the rest not probed
        few = cls.copy()
        few[n:] = -1
        np.save(path.with_name(f"cls_{n}.npy"), few)
        few_v = value.copy()
        few_v[n:] = np.nan
        np.save(path.with_name(f"value_{n}.npy"), few_v)


def _drop_cache(folder: Path) -> None:
    """Evict the store's own files from the page cache, so the next run reads them from disk."""
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MB
    return float("nan")


def _read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def child(spec: dict) -> None:
    """One probe run in this fresh process; prints one JSON line."""
    if spec.get("limit_bytes"):
        resource.setrlimit(resource.RLIMIT_AS, (spec["limit_bytes"], spec["limit_bytes"]))
    import torch

    from probes.run import ProbeConfig, run_probes

    torch.set_num_threads(spec["threads"])
    base_rss, base_read = _status("VmRSS"), _read_bytes()
    cfg = ProbeConfig(targets=[], labels={spec["target"]: spec["labels"]}, group=1, max_tokens=spec["max_tokens"])
    tic = time.perf_counter()
    try:
        table = run_probes(spec["store"], cfg, progress=False)
    except MemoryError:
        print(json.dumps({"error": "MemoryError under the address-space limit"}))
        return
    seconds = time.perf_counter() - tic
    rows = table[table["layer"] == 1].iloc[0]
    null = table[table["layer"] == 0].iloc[0]
    out = {
        "seconds": seconds,
        "peak_rss_mb": _status("VmHWM"),
        "rss_after_imports_mb": base_rss,
        "read_mb": (_read_bytes() - base_read) / 1e6,
        "value": float(rows["value"]),
        "control": float(rows["control"]),
        "x_t": float(rows["x_t"]),
        "majority_rate": float(rows["majority_rate"]),
        "null_layer_value": float(null["value"]),
        "regularisation": float(rows["regularisation"]),
    }
    print(json.dumps(out))


def predicted_peak_gb(run: dict, n_tokens: int, hidden: int) -> float:
    """What the run should need, from the sizes (factors measured here on 16-32 videos): the whole-slab
    path holds the fp32 slab, its stacked copy, the train/test rows and the standardised copies
    (float64 for ridge, with its fold Grams and predictions: 13-14x the fp32 slab)."""
    rows = run["videos"] * (n_tokens if run["max_tokens"] is None else min(run["max_tokens"], n_tokens))
    fp32 = rows * hidden * 4 / 1e9
    if run["max_tokens"] is None:
        return fp32 * (5.5 if run["kind"] == "class" else 14)
    return fp32 * 4 if run["kind"] == "class" else 0.2  # design + the fit's copies / Gram sums only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=32, help="64 needs ~18 GB for the whole-slab run")
    parser.add_argument("--tokens", type=int, default=8190)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--budgets", default="1000,8000,all", help="per-video budgets of the class target")
    parser.add_argument("--signal", type=float, default=1.0, help="planted class separation (noise sd 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="16 videos x 240 tokens x 64 hidden (a test)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the store (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/probe_memory.json (--quick: none)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(json.loads(args.child))
        return
    if args.quick:
        args.videos, args.tokens, args.hidden, args.budgets = 16, 240, 64, "24,120,all"
    budgets = [None if b == "all" else int(b) for b in args.budgets.split(",")]
    work = Path(tempfile.mkdtemp(dir=args.work))
    store = work / "store.h5"
    slab_gb = args.videos * args.tokens * args.hidden * 2 / 1e9
    free = shutil.disk_usage(work).free / 1e9
    if 2.2 * slab_gb > free:
        sys.exit(f"the store needs {2 * slab_gb:.1f} GB of disk, {free:.1f} GB free at {work}")
    try:
        tic = time.perf_counter()
        write_store(store, args.videos, args.tokens, args.hidden, args.signal)
        write_s = time.perf_counter() - tic
        store_gb = sum(p.stat().st_size for p in work.rglob("*.h5")) / 1e9
        _drop_cache(work)
        tic = time.perf_counter()
        for p in sorted(work.rglob("part_*.h5")):
            with open(p, "rb", buffering=0) as f:
                while f.read(16 << 20):
                    pass
        read_gbs = store_gb / (time.perf_counter() - tic)
        half = args.videos // 2  # both sizes span several blocks of videos (BLOCK_ROWS rows)
        first = budgets[0] or args.tokens
        runs = [{"kind": "class", "videos": args.videos, "max_tokens": b} for b in budgets]
        runs += [{"kind": "class", "videos": half, "max_tokens": first}]
        # Ridge from Gram sums: every token streamed too (max_tokens = tokens per video), no design matrix.
        runs += [{"kind": "regression", "videos": args.videos, "max_tokens": b} for b in (first, args.tokens)]
        runs += [{"kind": "regression", "videos": half, "max_tokens": first}]
        runs += [{"kind": "regression", "videos": args.videos // 4, "max_tokens": None}]  # ~5 GB, 75 s at 32
        available = _meminfo("MemAvailable") / 1e9
        results = []
        for run in runs:
            target = "cls" if run["kind"] == "class" else "value"
            labels = store.with_name(
                f"{target}.npy" if run["videos"] == args.videos else f"{target}_{run['videos']}.npy"
            )
            need = predicted_peak_gb(run, args.tokens, args.hidden) + 1.0
            record = dict(run, predicted_peak_gb=need)
            if need > 0.75 * available:
                record["skipped"] = f"predicted {need:.1f} GB > 75% of the {available:.1f} GB available"
                results.append(record)
                print(record, flush=True)
                continue
            spec = {"store": str(store), "labels": str(labels), "target": target, "max_tokens": run["max_tokens"]}
            spec |= {"threads": args.threads, "limit_bytes": int((0.85 * available + 4) * 1e9)}
            _drop_cache(work)
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            command = [sys.executable, __file__, "--child", json.dumps(spec)]
            proc = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, env=env)
            if proc.returncode != 0:
                record["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
            else:
                record |= json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(record)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in record.items()}, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nstore: {args.videos} videos x {args.tokens} tokens x {args.hidden} hidden, fp16, 1 step x 2 layers "
        f"({store_gb:.2f} GB on disk, one slab {slab_gb:.2f} GB; written in {write_s:.0f} s); "
        f"cold sequential read {read_gbs:.2f} GB/s; {args.threads} torch thread(s), group 1"
    )
    header = f"{'target':<10} {'videos':>6} {'budget':>7} {'peak RSS MB':>11} {'seconds':>8} {'read MB':>8}"
    print(header + f" {'score':>6} {'control':>7} {'x_t':>6} {'null L0':>7}")
    for r in results:
        budget = "all" if r["max_tokens"] is None else str(r["max_tokens"])
        line = f"{r['kind']:<10} {r['videos']:>6} {budget:>7}"
        if "peak_rss_mb" not in r:
            print(line + f"  {r.get('skipped') or r.get('error')}")
            continue
        print(
            line + f" {r['peak_rss_mb']:>11.0f} {r['seconds']:>8.1f} {r['read_mb']:>8.0f} {r['value']:>6.3f}"
            f" {r['control']:>7.3f} {r['x_t']:>6.3f} {r['null_layer_value']:>7.3f}"
        )
    bayes = bayes_accuracy(args.signal)
    print(
        f"class score: test accuracy (Bayes about {bayes:.3f} for separation {args.signal}); regression: R^2 "
        "(about 0.8). Physical floor: each run reads every HDF5 chunk holding a selected token; a random "
        f"budget touches nearly all, so every run reads about {2 * slab_gb * 1e3:.0f} MB of slabs, "
        f"{2 * slab_gb / read_gbs:.1f} s at the measured disk bandwidth."
    )
    sys.path.insert(0, str(HERE))
    from _record import save_record

    record = {
        "store": {"videos": args.videos, "tokens": args.tokens, "hidden": args.hidden, "dtype": "float16"}
        | {"slabs": 2, "store_gb": store_gb, "write_seconds": write_s, "cold_read_gb_per_s": read_gbs},
        "signal": args.signal,
        "bayes_accuracy": bayes,
        "runs": results,
    }
    out = args.out or (None if args.quick else HERE / "results" / "probe_memory.json")
    if out is not None:  # a quick run is a test: it leaves the measured figures alone
        save_record(record, out, args.threads)
        print(f"wrote {out}")


def bayes_accuracy(signal: float, positive: float = 0.3) -> float:
    """Best accuracy on the planted class: means -+signal along the direction, unit noise, priors."""
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    t = math.log((1 - positive) / positive) / (2 * signal)  # the likelihood-ratio threshold
    return positive * phi(signal - t) + (1 - positive) * phi(t + signal)


def _meminfo(field: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return float("nan")


if __name__ == "__main__":
    main()
