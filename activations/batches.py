"""Shuffled token batches of a store's sites, streamed with bounded memory: what a model-free trainer (a
sparse autoencoder per (step, layer) slab, SAELens' ``SAETrainer``) reads as an iterator of (batch, hidden)
tensors, never the whole slab.

Blocks of contiguous tokens of one (video, step) slab are read in a random order (a block is at most one
read window of ``block_tokens``; on the token axis the store's chunks are split the same way), pooled in a
mixing buffer of at most ``buffer_tokens`` rows, shuffled there and handed out half a buffer at a time,
so batches mix videos, steps and positions. Every token of the selection is yielded exactly once per
epoch. Memory: the buffer plus one block, float32.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from activations.reader import ActivationStore
from activations.schema import checked_reads

DEFAULT_BLOCK_TOKENS = 4096
DEFAULT_BUFFER_TOKENS = 1 << 16


@dataclass
class TokenBatches:
    """An iterable of shuffled (batch_size, hidden) float32 batches of ``site`` at ``steps`` (stored steps)
    over ``videos`` (default: every complete video); ``epochs`` None: without end (a trainer that pulls a
    fixed number of batches). ``rows_held`` is the most rows ever held at once (tests read it)."""

    store: ActivationStore
    site: str
    steps: Sequence[int]
    videos: Sequence[int] | None = None
    batch_size: int = 4096
    buffer_tokens: int = DEFAULT_BUFFER_TOKENS
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    seed: int = 0
    epochs: int | None = 1
    rows_held: int = 0
    offsets: dict | None = None  # step -> (hidden,) vector subtracted from that step's rows (a step-shared SAE)

    def __post_init__(self) -> None:
        if self.site not in self.store.layout.hidden:
            raise ValueError(f"site {self.site!r} is not in the store (sites: {self.store.sites})")
        missing = [s for s in self.steps if s not in self.store.steps]
        if missing or not self.steps:
            raise ValueError(f"step {missing[0] if missing else '(none)'} is not stored; stored steps: "
                             f"{self.store.steps}")  # fmt: skip
        self.videos = list(self.store.completed_videos if self.videos is None else self.videos)
        self.store._check_videos(self.videos)
        if not self.videos:
            raise ValueError(f"{self.store.path} has no complete video to read")
        if min(self.batch_size, self.block_tokens) < 1 or self.buffer_tokens < 2 * self.batch_size:
            raise ValueError("batch_size and block_tokens must be >= 1 and buffer_tokens at least two batches")

    @property
    def n_tokens(self) -> int:
        """Tokens per epoch."""
        return len(self.videos) * len(self.steps) * self.store.layout.n_tokens

    def blocks(self) -> list[tuple[tuple[int, ...], int, int, int]]:
        """(videos, step position, first token, end token) of every block of the selection, in store order: a
        slab larger than a block is split along its tokens; smaller slabs of one step are read together, a few
        videos at a time (one read call each: the calls, not the bytes, cost most on small slabs)."""
        n = self.store.layout.n_tokens
        positions = [self.store.layout.steps.index(s) for s in self.steps]
        per_read = max(1, self.block_tokens // n)  # videos per read where a whole slab fits a block
        groups = [tuple(self.videos[i : i + per_read]) for i in range(0, len(self.videos), per_read)]
        return [(g, p, t, min(t + self.block_tokens, n)) for g in groups for p in positions
                for t in range(0, n, self.block_tokens)]  # fmt: skip

    def in_order(self) -> Iterator[tuple[tuple[int, ...], int, int, int, np.ndarray]]:
        """Every block once, unshuffled, in store order: (videos, step, first token, end token, rows of shape
        (videos, tokens, hidden) float32), for a reader that maps rows back to their videos and tokens (labels
        per token). Memory: one block."""
        dataset = self.store.dataset(f"sites/{self.site}")
        for videos, pos, start, stop in self.blocks():
            videos = tuple(sorted(videos))  # h5py takes increasing indices
            with checked_reads(self.store.path):
                rows = dataset[list(videos), pos, start:stop] if len(videos) > 1 else \
                    dataset[videos[0], pos, start:stop][None]  # fmt: skip
            step = self.store.layout.steps[pos]
            yield videos, step, start, stop, self._centred(np.asarray(rows, dtype=np.float32), step)

    def _centred(self, rows: np.ndarray, step: int) -> np.ndarray:
        return rows if self.offsets is None else rows - np.asarray(self.offsets[step], dtype=np.float32)

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        dataset = self.store.dataset(f"sites/{self.site}")
        buffer = np.empty((0, dataset.shape[-1]), dtype=np.float32)
        blocks = self.blocks()
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            for i in rng.permutation(len(blocks)):
                videos, pos, start, stop = blocks[i]
                with checked_reads(self.store.path):  # h5py takes increasing indices: the videos are sorted
                    rows = dataset[sorted(videos), pos, start:stop] if len(videos) > 1 else \
                        dataset[videos[0], pos, start:stop][None]  # fmt: skip
                block = self._centred(np.asarray(rows, dtype=np.float32), self.store.layout.steps[pos])
                block = block.reshape(-1, block.shape[-1])
                buffer = np.concatenate([buffer, block])
                self.rows_held = max(self.rows_held, len(buffer))
                if len(buffer) >= self.buffer_tokens:  # hand out half, keep half to mix with what comes next
                    buffer = buffer[rng.permutation(len(buffer))]
                    keep = len(buffer) // 2
                    out, buffer = buffer[keep:], buffer[:keep]
                    while len(out) >= self.batch_size:
                        yield out[: self.batch_size]
                        out = out[self.batch_size :]
                    buffer = np.concatenate([buffer, out])  # the rows short of a batch go back
            epoch += 1
            if self.epochs is not None and epoch == self.epochs:  # the epoch's last rows, shuffled
                buffer = buffer[rng.permutation(len(buffer))]
                while len(buffer):
                    yield buffer[: self.batch_size]
                    buffer = buffer[self.batch_size :]
