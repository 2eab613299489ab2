"""Training an SAE from the store against training it from the same tokens in memory (issue 31, item 6: goal
<= 1.10x), interleaved repeats in one process, on this machine.

Both train the same SAELens TopK SAE (same seed, same number of steps and batch size) on one (step, layer)
slab's training videos: one reads ``activations.batches.TokenBatches`` (blocks read from the store into a
mixing buffer), the other shuffled batches of the slab held whole in memory. The physical limit beside the
ratio: the stream's extra work is reading the slab's bytes once per pass over it and copying them through the
buffer, against the SAE's own flops (encoder and decoder forward and backward, 6 x 2 x d_in x d_sae per token).

    .venv/bin/python benchmarks/sae_stream.py STORE [--site blocks.6] [--step 10] [--repeats 3]
        [--tokens 131072] [--out benchmarks/results/sae_stream.json]

At real width without a model: ``STORE`` = ``synthetic`` writes a store of ``--videos`` x ``--store-tokens`` x
``--hidden`` fp16 (``probe_memory.write_store``: Wan 2.1 1.3B's 1,536 by default) and reads its ``blocks.1``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._record import save_record  # noqa: E402


def _in_memory(slab: np.ndarray, batch_size: int, seed: int):
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(slab))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield slab[order[i : i + batch_size]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="a store (.h5), or 'synthetic' (real width, no model)")
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--store-tokens", type=int, default=4096)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--site", default="blocks.6")
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sae_stream.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from activations.batches import TokenBatches
    from activations.reader import ActivationStore
    from interp.features.saes import SAESpec, train_sae

    spec = SAESpec(expansion=args.expansion, training_tokens=args.tokens, batch_size=args.batch_size,
                   buffer_tokens=8 * args.batch_size)  # fmt: skip
    if args.store == "synthetic":
        from benchmarks.probe_memory import write_store

        args.store = ROOT / "runs" / "bench_sae" / f"synthetic_{args.hidden}.h5"
        if not args.store.is_file():
            args.store.parent.mkdir(parents=True, exist_ok=True)
            write_store(args.store, args.videos, args.store_tokens, args.hidden, signal=1.0)
        args.site, args.step = "blocks.1", 0
    with ActivationStore(args.store) as store:
        videos = store.completed_videos
        hidden = store.layout.hidden[args.site]
        slab = store.activations(args.site, videos=videos, steps=[args.step]).reshape(-1, hidden).astype(np.float32)
        out = ROOT / "runs" / "bench_sae"

        def streamed() -> float:
            batches = TokenBatches(store, args.site, [args.step], videos, args.batch_size, spec.buffer_tokens,
                                   epochs=None)  # fmt: skip
            tic = time.perf_counter()
            train_sae(batches, spec, hidden, out / "stream", {"hook_name": args.site}, progress=False)
            return time.perf_counter() - tic

        def held() -> float:
            tic = time.perf_counter()
            train_sae(_in_memory(slab, args.batch_size, 0), spec, hidden, out / "memory", {"hook_name": args.site},
                      progress=False)  # fmt: skip
            return time.perf_counter() - tic

        held()  # warm-up: SAELens' import and first allocations
        times = {"stream": [], "memory": []}
        for _ in range(args.repeats):  # interleaved
            times["stream"].append(streamed())
            times["memory"].append(held())
    stream, memory = statistics.median(times["stream"]), statistics.median(times["memory"])
    d_sae = spec.expansion * hidden
    passes = args.tokens / len(slab)
    read_bytes = passes * len(slab) * hidden * 2  # fp16 store, read once per pass over the slab
    flops = 6 * 2 * hidden * d_sae * args.tokens
    record = save_record({
        "store": str(args.store), "site": args.site, "step": args.step, "slab_tokens": len(slab), "hidden": hidden,
        "d_sae": d_sae, "training_tokens": args.tokens, "batch_size": args.batch_size, "passes_over_slab": passes,
        "seconds_stream": times["stream"], "seconds_memory": times["memory"], "ratio": stream / memory,
        "tokens_per_second_stream": args.tokens / stream, "tokens_per_second_memory": args.tokens / memory,
        "limit": {"sae_flops": flops, "stream_read_bytes": read_bytes,
                  "note": "the stream adds reading and one buffer copy per token; the SAE's flops are the same"},
    }, args.out, args.threads)  # fmt: skip
    print(f"| case | seconds (median of {args.repeats}) | tokens/s |")
    print("| --- | --- | --- |")
    print(f"| from the store (TokenBatches) | {stream:.2f} | {args.tokens / stream:,.0f} |")
    print(f"| in memory | {memory:.2f} | {args.tokens / memory:,.0f} |")
    print(f"ratio {record['ratio']:.3f}x (goal <= 1.10x); {passes:.2f} passes over a {len(slab)}-token slab; "
          f"SAE {flops / 1e9:.1f} GFLOP ({flops / 1e9 / memory:.0f} GFLOP/s in memory), stream reads "
          f"{read_bytes / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
