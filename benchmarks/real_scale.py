"""Capture at real width: random-init diffusers WanTransformer3DModel blocks of Wan 2.1 1.3B (hidden
1536, 12 heads, ffn 8960) and Wan 14B (5120, 40 heads, ffn 13824), a few blocks, real token counts.

Prints a table and writes benchmarks/results/real_scale.json: untraced sampling against traced +
stored with every built block captured (the toolkit's own path: ``WanAdapter``, ``trace_batch``,
``StoreWriter``), for pooling none / frame / random:K; store throughput beside plain h5py writing
the same arrays (the disk's limit here); peak host RSS per run (sampled) and, on a GPU, peak device
memory. Repeats are interleaved (untraced, then each traced run) and ratios paired per repeat.
Nothing is downloaded: weights are random (the cost of capture does not depend on their values).

CPU (default): 240x416 at 21 frames (2,340 tokens) for 1.3B width, 5 frames (780 tokens) for 14B
width, 2 blocks / 1 block, 2 steps, no guidance: token counts cut for the CPU's time, widths real.
``--gpu``: 480x832 at 81 frames (32,760 tokens), bf16, classifier-free guidance (two calls a step).
Usage: python benchmarks/real_scale.py [--gpu] [--repeats 2] [--threads 2] [--shapes 1.3b,14b]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import torch
from _record import save_record  # benchmarks/ is the script's folder
from diffusers import WanTransformer3DModel

from activations.pooling import Pooling
from activations.slabs import site_chunks
from activations.writer import DEFAULT_QUEUE_BYTES, StoreWriter
from interp.execution.capture import build_layout, trace_batch
from interp.execution.loop import sample
from interp.experiments.trace import writer_in_background
from interp.models.wan import WanAdapter, WanConditioning

SHAPES = {"1.3b": {"num_attention_heads": 12, "ffn_dim": 8960}, "14b": {"num_attention_heads": 40, "ffn_dim": 13824}}
SHIFT = 3.0  # Wan's flow shift at 480p
TEXT_TOKENS = 512  # Wan's max_sequence_length
CPU = {"1.3b": {"blocks": 2, "frames": 21}, "14b": {"blocks": 1, "frames": 5}, "height": 240, "width": 416}
GPU = {"1.3b": {"blocks": 4, "frames": 81}, "14b": {"blocks": 2, "frames": 81}, "height": 480, "width": 832}


def build_adapter(shape: str, blocks: int, device: str, dtype: torch.dtype) -> WanAdapter:
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
        freq_dim=256, num_layers=blocks, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        rope_max_seq_len=1024, **SHAPES[shape],
    )  # fmt: skip
    model = model.to(device)
    if dtype != torch.float32:  # as from_pretrained(torch_dtype=...) does: norms, rope, time embedding stay float32
        keep = set(model._keep_in_fp32_modules or ())
        for name, param in model.named_parameters():
            if not keep.intersection(name.split(".")):
                param.data = param.data.to(dtype)
    return WanAdapter(model.eval())


class PeakMemory:
    """Peak RSS of this process, sampled every 20 ms while the block runs (and peak device memory), and the
    process CPU time it took (all threads: less swayed by other jobs on a shared machine than wall time)."""

    def __enter__(self) -> PeakMemory:
        self.peak, self._stop, self._cpu = 0, threading.Event(), time.process_time()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def _watch(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(0.02)

    def __exit__(self, *exc) -> None:
        self.cpu = time.process_time() - self._cpu
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, psutil.Process().memory_info().rss)
        self.device_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def run_untraced(adapter, noise, cond, steps: int) -> float:
    tic = time.perf_counter()
    sample(adapter, noise, cond, steps, scheduler=adapter.make_scheduler(SHIFT))
    if noise.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - tic


def run_traced(adapter, noise, cond, steps: int, pooling: str, path: Path, queue_bytes: int) -> tuple[float, int]:
    """Sample with every block stored; the time includes draining the writer (the store is complete)."""
    shutil.rmtree(path.parent, ignore_errors=True)
    path.parent.mkdir(parents=True)
    layout = build_layout(
        adapter, model="random-wan", latent_shape=tuple(noise.shape[1:]), num_steps=steps, shift=SHIFT,
        steps=list(range(steps)), sites=adapter.site_names(list(range(adapter.num_blocks()))),
        pooling=Pooling.parse(pooling), video_keys=["v0"],
    )  # fmt: skip
    tic = time.perf_counter()
    # As run_trace writes: on a thread beside a GPU or a free core, else inline (the thread has no core).
    background = writer_in_background(noise.device)
    with StoreWriter(path, layout, max_queue_bytes=queue_bytes, background=background) as writer:
        part = writer.begin_part([0])
        result = trace_batch(adapter, part, layout, noise, cond, SHIFT, backend="nnsight")
        part.finish(result.latents, [{}])
    seconds = time.perf_counter() - tic
    return seconds, sum(p.stat().st_size for p in path.with_name(path.name + ".parts").glob("*.h5"))


def plain_h5py(n_tokens: int, hidden: int, slabs: int, folder: Path) -> float:
    """MB/s of h5py writing the same fp16 slabs with the store's chunks, in the foreground: the disk's limit."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    block = np.random.default_rng(0).standard_normal((1, n_tokens, hidden)).astype(np.float16)
    tic = time.perf_counter()
    with h5py.File(folder / "plain.h5", "w") as f:
        ds = f.create_dataset("s", shape=(1, slabs, n_tokens, hidden), dtype="float16",
                              chunks=site_chunks(1, n_tokens, hidden, 2))  # fmt: skip
        for i in range(slabs):
            ds[:, i] = block
    seconds = time.perf_counter() - tic
    return slabs * block.nbytes / 2**20 / seconds


def bench_shape(shape: str, args, work: Path) -> dict:
    device, dtype = ("cuda", torch.bfloat16) if args.gpu else ("cpu", torch.float32)
    sizes = GPU if args.gpu else CPU
    if args.smoke:  # a check that the script runs, not a figure
        sizes = {shape: {"blocks": 1, "frames": 5}, "height": 64, "width": 64}
    blocks, frames = sizes[shape]["blocks"], sizes[shape]["frames"]
    adapter = build_adapter(shape, blocks, device, dtype)
    latent = (16, (frames - 1) // 4 + 1, sizes["height"] // 8, sizes["width"] // 8)
    grid = adapter.token_grid(latent)
    n_tokens, hidden = int(np.prod(grid)), adapter.hidden_size()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1, *latent, generator=gen).to(device)
    text = torch.randn(1, TEXT_TOKENS, 4096, generator=gen).to(device, dtype)
    cond = WanConditioning(text, text.clone() if args.gpu else None)  # guidance on a GPU: two calls per step
    poolings = ["none", "frame", f"random:{min(args.random_k, n_tokens // 2)}"]
    times: dict[str, list[float]] = {"untraced": [], **{p: [] for p in poolings}}
    cpu: dict[str, list[float]] = {mode: [] for mode in times}
    stored, rss, device_peak = {}, {}, {}
    run_untraced(adapter, noise, cond, 1)  # warm-up
    for _ in range(args.repeats):
        with PeakMemory() as mem:
            times["untraced"].append(run_untraced(adapter, noise, cond, args.steps))
        cpu["untraced"].append(mem.cpu)
        rss["untraced"], device_peak["untraced"] = max(rss.get("untraced", 0), mem.peak), mem.device_peak
        for p in poolings:
            with PeakMemory() as mem:
                store = work / "s" / "t.h5"
                seconds, stored[p] = run_traced(adapter, noise, cond, args.steps, p, store, args.queue_bytes)
            times[p].append(seconds)
            cpu[p].append(mem.cpu)
            rss[p], device_peak[p] = max(rss.get(p, 0), mem.peak), mem.device_peak
    slabs = blocks * args.steps
    h5_mb_s = plain_h5py(n_tokens, hidden, slabs, work / "plain")
    untraced = times["untraced"]
    rows = {}
    for mode, seconds in times.items():
        paired = statistics.median(t / u for t, u in zip(seconds, untraced)) if mode != "untraced" else 1.0
        cpu_paired = statistics.median(t / u for t, u in zip(cpu[mode], cpu["untraced"]))
        mb = stored.get(mode, 0) / 2**20
        rows[mode] = {
            "seconds": seconds, "median_seconds": statistics.median(seconds), "paired_ratio": paired,
            "cpu_seconds": cpu[mode], "cpu_paired_ratio": cpu_paired,
            "stored_mb": mb, "store_mb_per_s_wall": mb / statistics.median(seconds) if mb else None,
            "peak_rss_mb": rss[mode] / 2**20, "peak_device_mb": device_peak[mode] / 2**20,
        }  # fmt: skip
    compute = statistics.median(untraced)
    limit = max(compute, rows["none"]["stored_mb"] / h5_mb_s)
    return {
        "shape": shape, "hidden": hidden, "blocks": blocks, "steps": args.steps, "frames": frames,
        "height": sizes["height"], "width": sizes["width"], "tokens": n_tokens, "guidance": cond.negative_prompt_embeds
        is not None, "device": device, "dtype": str(dtype),
        "writer_thread": writer_in_background(device), "rows": rows, "plain_h5py_mb_per_s": h5_mb_s,
        "limit_seconds": limit, "none_over_limit": rows["none"]["median_seconds"] / limit,
    }  # fmt: skip


def print_rows(r: dict) -> None:
    print(f"{'shape':<6} {'tokens':>7} {'blocks':>6} {'run':<16} {'seconds':>8} {'paired':>7} {'CPU x':>6}"
          f" {'stored MB':>10} {'MB/s wall':>10} {'peak RSS MB':>12} {'device MB':>10}")  # fmt: skip
    for mode, row in r["rows"].items():
        label = mode if mode == "untraced" else f"traced {mode}"
        wall = f"{row['store_mb_per_s_wall']:.0f}" if row["store_mb_per_s_wall"] else "-"
        print(f"{r['shape']:<6} {r['tokens']:>7} {r['blocks']:>6} {label:<16} {row['median_seconds']:>8.2f}"
              f" {row['paired_ratio']:>7.3f} {row['cpu_paired_ratio']:>6.3f} {row['stored_mb']:>10.1f} {wall:>10}"
              f" {row['peak_rss_mb']:>12.0f} {row['peak_device_mb']:>10.0f}")  # fmt: skip
    print(f"{r['shape']:<6} plain h5py, same slabs: {r['plain_h5py_mb_per_s']:.0f} MB/s; "
          f"limit max(compute, bytes/disk) {r['limit_seconds']:.2f} s; "
          f"traced none / limit {r['none_over_limit']:.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpu", action="store_true", help="full 480x832 x 81 frames, bf16, on cuda")
    parser.add_argument("--shapes", default="1.3b,14b")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--random-k", type=int, default=1024)
    parser.add_argument("--queue-bytes", type=int, default=DEFAULT_QUEUE_BYTES)
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "real_scale.json")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # rows show as each shape finishes, also into a file
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR")))
    load_before, tic = os.getloadavg(), time.perf_counter()
    results = []
    try:
        for shape in args.shapes.split(","):
            results.append(bench_shape(shape, args, work))
            print_rows(results[-1])  # as soon as a shape is done: a long run shows its figures early
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"real-width capture, {args.steps} steps, median of {args.repeats} interleaved repeats, "
          f"{args.threads} threads; load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
          f"({os.cpu_count()} CPUs)")  # fmt: skip
    record = {"gpu": args.gpu, "load_before": load_before, "load_after": load_after,
              "seconds_total": time.perf_counter() - tic, "results": results}  # fmt: skip
    save_record(record, args.out, args.threads)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
