"""Attention knockout across frames (issue 30, item 3): at chosen steps, inside chosen attention modules,
the attention between chosen (query frame, key frame) pairs is removed and every row renormalised: the
kernel runs on the processor's own q, k, v with those entries masked (``-inf`` before the softmax), in
chunks of query rows so the mask is never larger than one chunk x every key. Text rows of a joint stream
(CogVideoX, HunyuanVideo) are never masked, as queries or as keys.

Rules (``removed_pairs``): ``cross`` (no attention between different frames), ``causal`` (no frame sees a
later one: what a Chain-of-Frames would need), ``anticausal`` (no frame sees an earlier one), ``to_first``
(no later frame sees the first one). A frame always keeps itself, so no row is left without keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interp.execution.attention_kernel import KernelCall, TokenLayout, intercepting
from interp.execution.loop import StepHook, StepState

RULES = ("cross", "causal", "anticausal", "to_first")
DEFAULT_CHUNK_ROWS = 4096


def removed_pairs(rule: str, frames: int) -> torch.Tensor:
    """(query frame, key frame) -> True where ``rule`` removes that attention."""
    q, k = torch.arange(frames)[:, None], torch.arange(frames)[None, :]
    if rule == "cross":
        return q != k
    if rule == "causal":
        return k > q
    if rule == "anticausal":
        return k < q
    if rule == "to_first":
        return (k == 0) & (q != 0)
    raise ValueError(f"unknown knockout rule {rule!r}; choose from {', '.join(RULES)}")


def knocked_attention(
    call: KernelCall,
    removed: torch.Tensor,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    generator: torch.Generator | None = None,
    heads: Sequence[int] | None = None,
) -> torch.Tensor:
    """The kernel on the call's own arguments with the ``removed`` (query frame, key frame) entries masked out,
    (B, H, S, D); chunks of ``chunk_rows`` query rows. ``generator``: the random control instead: each video
    query row loses as many video keys as the rule takes from it, drawn at random (never its own token).
    ``heads``: only these heads lose them (None: every head)."""
    if heads is not None and any(not 0 <= h < call.query.shape[1] for h in heads):
        raise ValueError(f"heads {list(heads)}: this attention has heads 0-{call.query.shape[1] - 1}")
    length, keys = call.query.shape[2], call.key.shape[2]
    device = call.query.device
    frame_q, frame_k = call.layout.frame_of(length, device), call.layout.frame_of(keys, device)
    removed = removed.to(device)
    outs = []
    for start in range(0, length, chunk_rows):
        stop = min(start + chunk_rows, length)
        fq = frame_q[start:stop]
        video = (fq[:, None] >= 0) & (frame_k[None, :] >= 0)
        cut = removed[fq.clamp_min(0)][:, frame_k.clamp_min(0)] & video
        if generator is not None:
            cut = _random_cut(cut, video, start, call.layout, length, keys, generator)
        if heads is not None:  # (heads, rows, keys): the other heads keep every entry
            per_head = torch.zeros(call.query.shape[1], *cut.shape, dtype=torch.bool, device=device)
            per_head[list(heads)] = cut
            cut = per_head
        outs.append(call.run(call.query[:, :, start:stop], call.key, call.value,
                             _with(call.attn_mask, ~cut, start, stop, length)))  # fmt: skip
    return torch.cat(outs, 2)


def _random_cut(cut, video, start: int, layout: TokenLayout, length: int, keys: int, generator) -> torch.Tensor:
    """As many video keys per row as ``cut`` removes, drawn at random among the row's video keys but itself."""
    scores = torch.rand(cut.shape, generator=generator).to(cut.device)
    rows = torch.arange(start, start + cut.shape[0], device=cut.device)
    own = rows[:, None] - layout.video_rows(length).start + layout.video_rows(keys).start
    scores[~video] = float("inf")
    scores.scatter_(1, own.clamp(0, keys - 1), float("inf"))  # never a row's own token
    ranks = scores.argsort(1).argsort(1)
    return (ranks < cut.sum(1, keepdim=True)) & video


def _with(mask: torch.Tensor | None, allowed: torch.Tensor, start: int, stop: int, length: int) -> torch.Tensor:
    """The kernel's own mask for query rows ``start:stop`` combined with ``allowed`` (rows x keys)."""
    allowed = allowed.reshape((1,) * (4 - allowed.ndim) + tuple(allowed.shape))  # (1, 1 or heads, rows, keys)
    if mask is None:
        return allowed
    rows = mask[..., start:stop, :] if mask.ndim >= 2 and mask.shape[-2] == length else mask
    if rows.dtype == torch.bool:
        return rows & allowed
    return rows.masked_fill(~allowed, float("-inf"))


def check_sites(model, sites: Sequence[str], heads: Sequence[int] | None) -> None:
    """Before any run: the sites are the model's, and ``heads`` (None: all) are heads each of them has."""
    for site in sites:
        count = getattr(model.site_module(site), "heads", None)
        if heads is not None and count is not None and any(not 0 <= h < count for h in heads):
            raise ValueError(f"heads {list(heads)}: {site} has heads 0-{count - 1}")


class FrameKnockout(StepHook):
    """Remove ``rule``'s frame-to-frame attention in ``sites`` (attention sub-modules, e.g. ``blocks.3.attn1``)
    at ``steps`` (None: every step) of a run of ``model``. A step hook: ``run(..., hooks=[knockout])``; the
    interception is installed for those steps' model calls only."""

    def __init__(self, model, sites: Sequence[str], rule: str, steps: Sequence[int] | None = None,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, control_seed: int | None = None,
                 heads: Sequence[int] | None = None):  # fmt: skip
        """``control_seed``: the random control of ``rule`` (as many entries per row, at random, seeded);
        ``heads``: only these heads of each site (None: every head)."""
        self.model, self.sites, self.rule, self.chunk_rows = model, list(sites), rule, chunk_rows
        self.control_seed, self.heads = control_seed, None if heads is None else [int(h) for h in heads]
        self.steps = None if steps is None else {int(s) for s in steps}
        removed_pairs(rule, 1)  # the rule is checked before any run
        check_sites(model, self.sites, self.heads)
        self._context = None

    def before_model(self, state: StepState) -> None:
        if self.steps is not None and state.step not in self.steps:
            return None
        grid = self.model.token_grid(tuple(state.latents.shape[1:]), next(iter(self.model.transformers())))
        layout = TokenLayout(tuple(int(g) for g in grid), self.model.attention_text)
        removed = removed_pairs(self.rule, layout.grid[0])
        modules = {site: (self.model.site_module(site), layout) for site in self.sites}
        generator = None
        if self.control_seed is not None:  # one stream per (seed, step): the same draws in any process
            generator = torch.Generator().manual_seed(int(self.control_seed) * 1_000_003 + state.step)
        self._context = intercepting(modules, lambda call: knocked_attention(call, removed, self.chunk_rows,
                                                                             generator, self.heads))  # fmt: skip
        self._context.__enter__()
        return None

    def after_step(self, state: StepState) -> None:
        self.close()
        return None

    def close(self) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)
