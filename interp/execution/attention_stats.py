"""Attention across frames, read from the very q and k a model's attention processor hands to its attention
kernel, without ever holding an attention map (issue 30, item 1: the computation).

``FrameAttentionRecorder`` intercepts the kernel call of watched attention modules
(``interp.execution.attention_kernel``): it first computes, in chunks of queries, the statistics of
``softmax(q k^T * scale + mask)`` over the module's token layout, then calls the kernel with the same
arguments and returns its result: the run is unchanged. Memory: one chunk of queries x every key
(``chunk_bytes``).

Per call (batch row, head), with query and key frames of the video token grid (frame-major):

- ``mass``: (T, T) mean over a query frame's tokens of the attention summed over a key frame's tokens;
- ``text``: (T,) the same mass on text keys (joint streams: CogVideoX, HunyuanVideo), 0 where none;
- ``entropy``: (T,) mean over a query frame's tokens of the attention distribution's entropy (nats).

Each row's mass over frames plus text sums to 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interp.execution.attention_kernel import KernelCall, TokenLayout, intercepting

DEFAULT_CHUNK_BYTES = 256 << 20  # one chunk of queries x all keys, float32, every batch row and head


@dataclass
class FrameStats:
    """Statistics of one attention call: (batch, heads, T, T) mass, (batch, heads, T) text mass and entropy."""

    mass: torch.Tensor
    text: torch.Tensor
    entropy: torch.Tensor


def frame_statistics(
    query: torch.Tensor,
    key: torch.Tensor,
    layout: TokenLayout,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> FrameStats:
    """Statistics of ``softmax(query key^T * scale + mask)`` per (batch row, head) over the video's query and
    key frames; ``query``, ``key``: (B, H, S, D) as ``scaled_dot_product_attention`` takes them. The
    probabilities are computed in float32, in chunks of query rows (never the whole map)."""
    batch, heads, length, dim = query.shape
    frames, per_frame = layout.grid[0], layout.grid[1] * layout.grid[2]
    rows = layout.video_rows(length)
    keys = layout.video_rows(key.shape[2])
    text_keys = torch.ones(key.shape[2], dtype=torch.bool, device=key.device)
    text_keys[keys] = False
    scale = dim**-0.5 if scale is None else scale
    mass = torch.zeros(batch, heads, frames, frames, dtype=torch.float64, device=query.device)
    text = torch.zeros(batch, heads, frames, dtype=torch.float64, device=query.device)
    entropy = torch.zeros(batch, heads, frames, dtype=torch.float64, device=query.device)
    chunk = max(1, int(chunk_bytes // max(1, batch * heads * key.shape[2] * 4)))
    k = key.float()
    for start in range(rows.start, rows.stop, chunk):
        stop = min(start + chunk, rows.stop)
        logits = torch.matmul(query[:, :, start:stop].float(), k.transpose(-1, -2)) * scale
        if attn_mask is not None:
            mask = attn_mask[..., start:stop, :] if attn_mask.shape[-2] == length else attn_mask
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
        p = torch.softmax(logits, dim=-1)  # (B, H, C, K)
        frame_of = (torch.arange(start, stop, device=query.device) - rows.start) // per_frame  # query frame per row
        by_key_frame = p[..., keys].unflatten(-1, (frames, per_frame)).sum(-1)  # (B, H, C, T)
        mass.index_add_(2, frame_of, by_key_frame.double())
        text.index_add_(2, frame_of, p[..., text_keys].sum(-1).double())
        entropy.index_add_(2, frame_of, -torch.special.xlogy(p, p).sum(-1).double())
    return FrameStats((mass / per_frame).float(), (text / per_frame).float(), (entropy / per_frame).float())


@dataclass
class FrameAttentionRecorder:
    """Record ``FrameStats`` of chosen attention modules (``modules``: name -> (module, TokenLayout)) while a
    run goes on; ``records[name]`` lists one ``FrameStats`` per call over the video's keys, in call order.
    Use as a context manager around the run; the kernels' results are returned unchanged."""

    modules: dict[str, tuple[torch.nn.Module, TokenLayout]]
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    records: dict[str, list[FrameStats]] = field(default_factory=dict)
    enabled: bool = True  # False: calls go straight to the kernel (a tracer turns it on at stored steps only)

    def __enter__(self) -> FrameAttentionRecorder:
        self._context = intercepting(self.modules, self._observe)
        self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)

    def _observe(self, call: KernelCall) -> torch.Tensor:
        if self.enabled and call.key.shape[2] >= call.layout.n_video:  # not over other keys (Wan I2V's image)
            with torch.no_grad():
                stats = frame_statistics(call.query, call.key, call.layout, call.attn_mask, call.scale,
                                         self.chunk_bytes)  # fmt: skip
            self.records.setdefault(call.name, []).append(stats)
        return call.run(call.query, call.key, call.value, call.attn_mask)
