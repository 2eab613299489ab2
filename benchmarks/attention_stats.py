"""Cost of frame-attention statistics (issue 30, item 6): a forward with ``FrameAttentionRecorder`` on every
block's self-attention against the plain forward, interleaved repeats in one process, on this machine.

Cases: the shipped testbed (16 mazes, 8 blocks, 64 tokens) and one Wan block pair at the 1.3B width (12 heads x
128, 2,340 tokens: 3 latent frames of 30 x 26). Beside each ratio its physical limit: the statistics redo
Q K^T and the softmax once (2 S^2 D flops per head plus ~5 S^2 elementwise), against the block's own
attention (4 S^2 D) and projections and feed-forward (2 S (4 d^2 + 2 d f)).

    .venv/bin/python benchmarks/attention_stats.py [--repeats 5] [--out benchmarks/results/attention_stats.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from activations.axes import block_site
from interp.execution.attention_stats import DEFAULT_CHUNK_BYTES

ROOT = Path(__file__).resolve().parents[1]


def _time(fn) -> float:
    tic = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - tic


def _case(name: str, forward, modules, repeats: int, flops_ratio: float) -> dict:
    from interp.execution.attention_stats import FrameAttentionRecorder

    def recorded():
        with FrameAttentionRecorder(modules):
            forward()

    forward(), recorded()  # warm up
    plain, stats = [], []
    for _ in range(repeats):  # interleaved, so drift hits both alike
        plain.append(_time(forward))
        stats.append(_time(recorded))
    ratio = statistics.median(s / p for s, p in zip(stats, plain))
    return {"case": name, "plain_s": statistics.median(plain), "with_stats_s": statistics.median(stats),
            "ratio": ratio, "flops_limit_ratio": 1 + flops_ratio, "repeats": repeats}  # fmt: skip


def testbed_case(repeats: int) -> dict:
    from interp.api import maze_inputs, open_model
    from interp.execution.attention_kernel import TokenLayout
    from interp.execution.loop import sample

    model = open_model("testbed")
    noise, cond, _ = maze_inputs(model, n=16)
    layout = TokenLayout(model.token_grid(tuple(noise.shape[1:])))
    sites = [block_site(k, "attn1") for k in range(model.num_blocks())]
    modules = {site: (model.site_module(site), layout) for site in sites}
    s, d, f, h = 64, 128, 512, 4
    extra = 2 * s * s * d + 5 * s * s * h
    block = 4 * s * s * d + 2 * s * (4 * d * d + 2 * d * f) + 2 * s * (2 * d * d)  # + cross-attention projections
    return _case("testbed, 16 mazes, 1 step, 8 blocks", lambda: sample(model, noise, cond, 1), modules, repeats,
                 extra / block)  # fmt: skip


def wide_model():
    """(forward, modules) of the 1.3B-width case."""
    from diffusers import WanTransformer3DModel

    from interp.execution.attention_kernel import TokenLayout

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                                  out_channels=16, text_dim=64, freq_dim=256, ffn_dim=8960, num_layers=2,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6).eval()  # fmt: skip
    latents = torch.randn(1, 16, 3, 60, 52)
    text = torch.randn(1, 16, 64)
    timestep = torch.tensor([500.0])
    layout = TokenLayout((3, 30, 26))
    modules = {block_site(k, "attn1"): (model.blocks[k].attn1, layout) for k in range(2)}
    return (lambda: model(latents, timestep, text, return_dict=False)), modules


def wide_case(repeats: int) -> dict:
    forward, modules = wide_model()
    s, d, f, h = 2340, 1536, 8960, 12
    extra = 2 * s * s * d + 5 * s * s * h
    block = 4 * s * s * d + 2 * s * (4 * d * d + 2 * d * f) + 2 * s * (2 * d * d)
    row = _case("Wan 1.3B width, 2,340 tokens, 2 blocks", forward, modules, repeats, extra / block)
    plain, stats = _peak_rss(False), _peak_rss(True)
    chunk = min(DEFAULT_CHUNK_BYTES, h * s * s * 4)  # what one chunk of queries x every key may add
    row.update(peak_rss_plain=plain, peak_rss_stats=stats,
               peak_extra=stats - plain, one_chunk_bytes=chunk)  # fmt: skip
    return row


def _peak_rss(with_stats: bool) -> int:
    """Peak resident memory (bytes) of a fresh process making one wide forward, with or without statistics."""
    import subprocess
    import sys

    code = (
        "import resource, sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import attention_stats as b\n"
        "forward, modules = b.wide_model()\n"
        "from interp.execution.attention_stats import FrameAttentionRecorder\n"
        "with torch.no_grad():\n"
        f"    if {with_stats!r}:\n"
        "        with FrameAttentionRecorder(modules):\n"
        "            forward()\n"
        "    else:\n"
        "        forward()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024  # Linux reports KiB


def planned_14b() -> dict:
    """Wan 2.1 14B at 480p x 81 frames, from its config alone (nothing run): the working memory of one chunk and
    the flops the statistics add to a block (40 heads x 128, 5,120 wide, feed-forward 13,824, 32,760 tokens)."""
    from interp.execution.attention_stats import DEFAULT_CHUNK_BYTES

    s, d, f, h = 32760, 5120, 13824, 40
    rows = DEFAULT_CHUNK_BYTES // (h * s * 4)  # one guidance branch per call (Wan runs them apart)
    extra = 2 * s * s * d + 5 * s * s * h
    block = 4 * s * s * d + 2 * s * (4 * d * d + 2 * d * f) + 2 * s * (2 * d * d)
    return {"case": "Wan 14B 480p x 81 frames (planned)", "chunk_rows": int(rows), "chunks_per_call": -(-s // rows),
            "chunk_bytes": DEFAULT_CHUNK_BYTES, "flops_limit_ratio": 1 + extra / block}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "attention_stats.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [testbed_case(args.repeats), wide_case(args.repeats)]
    print(f"{'case':<42} {'plain s':>8} {'stats s':>8} {'ratio':>6} {'flops limit':>11}")
    for r in rows:
        print(f"{r['case']:<42} {r['plain_s']:>8.3f} {r['with_stats_s']:>8.3f} {r['ratio']:>6.2f} "
              f"{r['flops_limit_ratio']:>11.2f}")  # fmt: skip
        if "peak_extra" in r:
            print(f"  peak RSS {r['peak_rss_plain'] / 2**20:.0f} MiB plain, {r['peak_rss_stats'] / 2**20:.0f} MiB with "
                  f"statistics: +{r['peak_extra'] / 2**20:.0f} MiB (one chunk: {r['one_chunk_bytes'] / 2**20:.0f} MiB)")
    plan = planned_14b()
    print(f"{plan['case']}: {plan['chunk_rows']} query rows per {plan['chunk_bytes'] >> 20} MiB chunk, "
          f"{plan['chunks_per_call']} chunks per call, flops limit {plan['flops_limit_ratio']:.2f}x")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": "this VM, 2 CPU threads", "rows": rows, "planned": plan}, indent=2))


if __name__ == "__main__":
    main()
