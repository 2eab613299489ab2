"""The attention kernel call inside a chosen attention module, intercepted: what the frame-attention
instruments (``attention_stats``: statistics; ``frame_knockout``: masking across frames) are built on.

A diffusers processor computes q and k (projections, norms, RoPE, joint text streams) and hands them to
``dispatch_attention_fn`` (Wan, LTX, HunyuanVideo: looked up in the processor's module) or to
``torch.nn.functional.scaled_dot_product_attention`` (CogVideoX). ``intercepting`` wraps both while a block
of code runs; a call made inside a watched module goes to the handler with the kernel's own arguments in
``scaled_dot_product_attention``'s layout (B, H, S, D), any other call goes straight to the kernel.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLayout:
    """Where an attention call's video tokens sit in its sequence: ``grid`` (T, H, W) of video tokens in
    frame-major order, and the text rows beside them in a self-attention: ``text`` "before" (CogVideoX),
    "after" (HunyuanVideo) or None (video only: Wan, LTX, the testbed)."""

    grid: tuple[int, int, int]
    text: str | None = None
    # A cross-attention (e.g. ``blocks.K.attn2``): the video's queries attend to other keys, one kernel call per
    # key group, in call order (Wan I2V: ("image", "text"); text encoders' cross-attention: ("text",)).
    context: tuple[str, ...] = ()

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

    def frame_of(self, length: int, device=None) -> torch.Tensor:
        """(length,) the latent frame of each row of a sequence, -1 for text rows."""
        out = torch.full((length,), -1, dtype=torch.long, device=device)
        rows = self.video_rows(length)
        out[rows] = torch.arange(self.n_video, device=device) // (self.grid[1] * self.grid[2])
        return out


@dataclass
class KernelCall:
    """One intercepted call: q, k, v (B, H, S, D), the kernel's mask and scale, the module's name and layout,
    and ``run(query, key, value, attn_mask)``: the original kernel on other arguments (same layout)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: torch.Tensor | None
    scale: float | None
    name: str
    layout: TokenLayout
    run: Callable[..., torch.Tensor]


Handler = Callable[[KernelCall], torch.Tensor]  # returns the call's output, (B, H, S, D)
_STATE = threading.local()
_LOCK = threading.Lock()


@contextmanager
def intercepting(modules: dict[str, tuple[torch.nn.Module, TokenLayout]], handler: Handler) -> Iterator[None]:
    """While the block runs, every attention-kernel call inside ``modules`` (name -> (module, layout)) goes to
    ``handler``; one interception at a time per process."""
    import torch.nn.functional as F

    if not _LOCK.acquire(blocking=False):
        raise RuntimeError("another attention interception is running in this process")
    patches: list[tuple[object, str, object]] = []
    handles = []
    try:
        for name, (module, layout) in modules.items():
            handles.append(module.register_forward_pre_hook(_entering(name, layout)))
            handles.append(module.register_forward_hook(_leaving))
        sdpa = F.scaled_dot_product_attention

        def wrapped_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
            def run(q, k, v, mask):
                return sdpa(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kwargs)

            active = getattr(_STATE, "active", None)
            if active is None or getattr(_STATE, "in_dispatch", False) or dropout_p or is_causal:
                return run(query, key, value, attn_mask)
            return handler(KernelCall(query, key, value, attn_mask, scale, *active, run))

        patches.append((F, "scaled_dot_product_attention", sdpa))
        F.scaled_dot_product_attention = wrapped_sdpa
        for owner in _processor_modules(modules):
            dispatch = getattr(owner, "dispatch_attention_fn", None)
            if dispatch is None or any(p[0] is owner for p in patches):
                continue
            patches.append((owner, "dispatch_attention_fn", dispatch))
            owner.dispatch_attention_fn = _wrapped_dispatch(dispatch, handler)
        yield
    finally:
        for owner, attr, original in reversed(patches):
            setattr(owner, attr, original)
        for handle in handles:
            handle.remove()
        _STATE.active = None
        _LOCK.release()


def _wrapped_dispatch(dispatch, handler: Handler):
    def wrapped(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, *args, **kwargs):
        def run(q, k, v, mask):  # (B, H, S, D) in and out; the dispatcher takes (B, S, H, D)
            _STATE.in_dispatch = True
            try:
                out = dispatch(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, dropout_p, is_causal,
                               scale, *args, **kwargs)  # fmt: skip
            finally:
                _STATE.in_dispatch = False
            return out.transpose(1, 2)

        active = getattr(_STATE, "active", None)
        if active is None or dropout_p or is_causal:
            _STATE.in_dispatch = True
            try:
                return dispatch(query, key, value, attn_mask, dropout_p, is_causal, scale, *args, **kwargs)
            finally:
                _STATE.in_dispatch = False
        call = KernelCall(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask, scale,
                          *active, run)  # fmt: skip
        return handler(call).transpose(1, 2)

    return wrapped


def _entering(name: str, layout: TokenLayout):
    def hook(module, args):
        _STATE.active = (name, layout)

    return hook


def _leaving(module, args, output):
    _STATE.active = None


def _processor_modules(modules) -> Iterator[object]:
    """The Python modules the watched attention modules' processors are defined in (where their kernel
    function is looked up)."""
    for module, _ in modules.values():
        processor = getattr(module, "processor", None)
        if processor is not None:
            yield importlib.import_module(type(processor).__module__)
