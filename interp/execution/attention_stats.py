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

Each row's mass over frames plus text sums to 1. A cross-attention (``TokenLayout.context``: Wan's attn2 over
text and, in I2V, the image's keys in a call of their own) gets, per key group, the ``entropy`` of its attention
and the ``norm`` of its output per query frame (how much each group adds to a frame's tokens).
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

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"mass": self.mass, "text": self.text, "entropy": self.entropy}


@dataclass
class ContextStats:
    """Statistics of a cross-attention's calls, one per key group (``TokenLayout.context``): (batch, heads,
    groups, T) entropy of each group's attention and mean norm of each group's output, per query frame."""

    entropy: torch.Tensor
    norm: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"entropy": self.entropy, "norm": self.norm}


def _probabilities(query, key, rows: slice, attn_mask, scale, chunk_bytes: int):
    """``softmax(query key^T * scale + mask)`` in float32 for the query ``rows``, one chunk of rows at a time:
    yields (start, stop, p (B, H, stop - start, K))."""
    batch, heads, length, dim = query.shape
    scale = dim**-0.5 if scale is None else scale
    chunk = max(1, int(chunk_bytes // max(1, batch * heads * key.shape[2] * 4)))
    k = key.float()
    for start in range(rows.start, rows.stop, chunk):
        stop = min(start + chunk, rows.stop)
        logits = torch.matmul(query[:, :, start:stop].float(), k.transpose(-1, -2)) * scale
        if attn_mask is not None:
            mask = attn_mask[..., start:stop, :] if attn_mask.shape[-2] == length else attn_mask
            logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
        yield start, stop, torch.softmax(logits, dim=-1)


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
    batch, heads = query.shape[:2]
    frames, per_frame = layout.grid[0], layout.grid[1] * layout.grid[2]
    rows = layout.video_rows(query.shape[2])
    keys = layout.video_rows(key.shape[2])
    text_keys = torch.ones(key.shape[2], dtype=torch.bool, device=key.device)
    text_keys[keys] = False
    mass = torch.zeros(batch, heads, frames, frames, dtype=torch.float64, device=query.device)
    text = torch.zeros(batch, heads, frames, dtype=torch.float64, device=query.device)
    entropy = torch.zeros(batch, heads, frames, dtype=torch.float64, device=query.device)
    for start, stop, p in _probabilities(query, key, rows, attn_mask, scale, chunk_bytes):
        frame_of = (torch.arange(start, stop, device=query.device) - rows.start) // per_frame  # query frame per row
        by_key_frame = p[..., keys].unflatten(-1, (frames, per_frame)).sum(-1)  # (B, H, C, T)
        mass.index_add_(2, frame_of, by_key_frame.double())
        text.index_add_(2, frame_of, p[..., text_keys].sum(-1).double())
        entropy.index_add_(2, frame_of, -torch.special.xlogy(p, p).sum(-1).double())
    return FrameStats((mass / per_frame).float(), (text / per_frame).float(), (entropy / per_frame).float())


def context_statistics(
    query: torch.Tensor,
    key: torch.Tensor,
    output: torch.Tensor,
    layout: TokenLayout,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One cross-attention call from the video's queries to other keys: (B, H, T) the entropy of each query's
    attention and the norm of its output (what this key group adds to the token), means per query frame."""
    batch, heads = query.shape[:2]
    frames, per_frame = layout.grid[0], layout.grid[1] * layout.grid[2]
    rows = layout.video_rows(query.shape[2])
    entropy = torch.zeros(batch, heads, frames, dtype=torch.float64, device=query.device)
    for start, stop, p in _probabilities(query, key, rows, attn_mask, scale, chunk_bytes):
        frame_of = (torch.arange(start, stop, device=query.device) - rows.start) // per_frame
        entropy.index_add_(2, frame_of, -torch.special.xlogy(p, p).sum(-1).double())
    norm = output[:, :, rows].float().norm(dim=-1).unflatten(-1, (frames, per_frame)).mean(-1)
    return (entropy / per_frame).float(), norm


@dataclass
class FrameAttentionRecorder:
    """Record the statistics of chosen attention modules (``modules``: name -> (module, TokenLayout)) while a
    run goes on; ``records[name]`` lists one record per module call, in call order: ``FrameStats`` for a
    self-attention over the video's keys, ``ContextStats`` for a cross-attention (its calls over each key
    group of ``TokenLayout.context`` gathered). Use as a context manager around the run; the kernels'
    results are returned unchanged."""

    modules: dict[str, tuple[torch.nn.Module, TokenLayout]]
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    records: dict[str, list[FrameStats | ContextStats]] = field(default_factory=dict)
    enabled: bool = True  # False: calls go straight to the kernel (a tracer turns it on at stored steps only)
    _groups: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    def __enter__(self) -> FrameAttentionRecorder:
        self._context = intercepting(self.modules, self._observe)
        self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)

    def _observe(self, call: KernelCall) -> torch.Tensor:
        layout = call.layout
        if layout.context:
            output = call.run(call.query, call.key, call.value, call.attn_mask)
            if self.enabled:
                with torch.no_grad():
                    stats = context_statistics(call.query, call.key, output, layout, call.attn_mask, call.scale,
                                               self.chunk_bytes)  # fmt: skip
                groups = self._groups.setdefault(call.name, [])
                groups.append(stats)
                if len(groups) == len(layout.context):  # the module's last call: one record per module call
                    self.records.setdefault(call.name, []).append(
                        ContextStats(torch.stack([g[0] for g in groups], 2), torch.stack([g[1] for g in groups], 2)))
                    groups.clear()
            return output
        if self.enabled and call.key.shape[2] >= layout.n_video:
            with torch.no_grad():
                stats = frame_statistics(call.query, call.key, layout, call.attn_mask, call.scale, self.chunk_bytes)
            self.records.setdefault(call.name, []).append(stats)
        return call.run(call.query, call.key, call.value, call.attn_mask)
