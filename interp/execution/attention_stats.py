"""Attention across frames, read from the very q and k a model's attention processor hands to its attention
kernel, without ever holding an attention map (issue 30, item 1: the computation).

A diffusers processor computes q and k (projections, norms, RoPE, joint text streams) and passes them to
``dispatch_attention_fn`` (Wan, LTX, HunyuanVideo) or ``torch.nn.functional.scaled_dot_product_attention``
(CogVideoX). ``FrameAttentionRecorder`` wraps both for the duration of a run: while a watched attention
module runs, the wrapper first computes, in chunks of queries, the statistics of ``softmax(q k^T * scale +
mask)`` over the module's token layout, then calls the original function with the same arguments and
returns its result: the run is unchanged. Memory: one chunk of queries x every key (``chunk_bytes``).

Per call (batch row, head), with query and key frames of the video token grid (frame-major):

- ``mass``: (T, T) mean over a query frame's tokens of the attention summed over a key frame's tokens;
- ``text``: (T,) the same mass on text keys (joint streams: CogVideoX, HunyuanVideo), 0 where none;
- ``entropy``: (T,) mean over a query frame's tokens of the attention distribution's entropy (nats).

Each row's mass over frames plus text sums to 1.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

DEFAULT_CHUNK_BYTES = 256 << 20  # one chunk of queries x all keys, float32, every batch row and head


@dataclass(frozen=True)
class TokenLayout:
    """Where a self-attention call's video tokens sit in its sequence: ``grid`` (T, H, W) of video tokens in
    frame-major order, and the text rows beside them: ``text`` "before" (CogVideoX), "after" (HunyuanVideo)
    or None (video only: Wan, LTX, the testbed)."""

    grid: tuple[int, int, int]
    text: str | None = None

    @property
    def n_video(self) -> int:
        return math.prod(self.grid)

    def video_rows(self, length: int) -> slice:
        if length < self.n_video:
            raise ValueError(f"an attention call over {length} tokens cannot hold the {self.n_video}-token video grid")
        if self.text == "before":
            return slice(length - self.n_video, length)
        if self.text is None and length != self.n_video:
            raise ValueError(f"{length} tokens in an attention call over the {self.n_video} video tokens only")
        return slice(0, self.n_video)


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


# The one recorder that may run at a time in this process, and the module it is inside of (per thread).
_STATE = threading.local()
_PATCH_LOCK = threading.Lock()


@dataclass
class FrameAttentionRecorder:
    """Record ``FrameStats`` of chosen attention modules (``modules``: name -> (module, TokenLayout)) while a
    run goes on; ``records[name]`` lists one ``FrameStats`` per call, in call order. Use as a context manager
    around the run. The attention kernels' results are returned unchanged."""

    modules: dict[str, tuple[torch.nn.Module, TokenLayout]]
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    records: dict[str, list[FrameStats]] = field(default_factory=dict)

    def __enter__(self) -> FrameAttentionRecorder:
        self._handles = []
        for name, (module, layout) in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._enter(name, layout)))
            self._handles.append(module.register_forward_hook(self._leave))
        self._patches = _install(self)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        _uninstall(self._patches)
        _STATE.active = None

    def _enter(self, name: str, layout: TokenLayout):
        def hook(module, args):
            _STATE.active = (self, name, layout)

        return hook

    @staticmethod
    def _leave(module, args, output):
        _STATE.active = None

    def observe(self, query, key, attn_mask, scale, heads_first: bool) -> None:
        """Called by the wrapped kernels with their own arguments (B, H, S, D when ``heads_first``)."""
        active = getattr(_STATE, "active", None)
        if active is None or active[0] is not self:
            return
        _, name, layout = active
        if not heads_first:  # dispatch_attention_fn takes (B, S, H, D); its mask is already the kernel's
            query, key = query.transpose(1, 2), key.transpose(1, 2)
        if key.shape[2] < layout.n_video:  # a call over other keys (Wan I2V's image keys): not across frames
            return
        with torch.no_grad():
            stats = frame_statistics(query, key, layout, attn_mask, scale, self.chunk_bytes)
        self.records.setdefault(name, []).append(stats)


def _install(recorder: FrameAttentionRecorder) -> list[tuple[object, str, object]]:
    """Wrap ``scaled_dot_product_attention`` and every processor module's ``dispatch_attention_fn``."""
    import torch.nn.functional as F

    if not _PATCH_LOCK.acquire(blocking=False):
        raise RuntimeError("another FrameAttentionRecorder is recording in this process")
    patches: list[tuple[object, str, object]] = []
    sdpa = F.scaled_dot_product_attention

    def wrapped_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if not getattr(_STATE, "in_dispatch", False):  # a dispatcher's own kernel call was observed already
            recorder.observe(query, key, attn_mask, scale, heads_first=True)
        return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                    **kwargs)  # fmt: skip

    patches.append((F, "scaled_dot_product_attention", sdpa))
    F.scaled_dot_product_attention = wrapped_sdpa
    for module in _processor_modules(recorder):
        dispatch = getattr(module, "dispatch_attention_fn", None)
        if dispatch is None or any(p[0] is module for p in patches):
            continue

        def wrapped_dispatch(query, key, value, attn_mask=None, *args, _original=dispatch, **kwargs):
            scale = kwargs.get("scale", args[2] if len(args) > 2 else None)
            recorder.observe(query, key, attn_mask, scale, heads_first=False)
            _STATE.in_dispatch = True
            try:
                return _original(query, key, value, attn_mask, *args, **kwargs)
            finally:
                _STATE.in_dispatch = False

        patches.append((module, "dispatch_attention_fn", dispatch))
        module.dispatch_attention_fn = wrapped_dispatch
    return patches


def _uninstall(patches: Sequence[tuple[object, str, object]]) -> None:
    try:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)
    finally:
        _PATCH_LOCK.release()


def _processor_modules(recorder: FrameAttentionRecorder) -> Iterator[object]:
    """The Python modules the watched attention modules' processors are defined in (where their kernel
    function is looked up)."""
    for module, _ in recorder.modules.values():
        processor = getattr(module, "processor", None)
        if processor is not None:
            yield importlib.import_module(type(processor).__module__)


@contextmanager
def recording(modules: dict[str, tuple[torch.nn.Module, TokenLayout]], chunk_bytes: int = DEFAULT_CHUNK_BYTES):
    """``with recording({...}) as recorder: run ...``; then ``recorder.records``."""
    recorder = FrameAttentionRecorder(modules, chunk_bytes)
    with recorder:
        yield recorder
