"""Token pooling: which of a block's (frames x h x w) tokens a store keeps, and how.

- ``none``: every token.
- ``spatial:K``: average over K x K spatial windows (a coarser grid; edges padded by the mean of what exists).
- ``frame``: the mean over each frame's tokens, one token per frame.
- ``random:K``: K tokens drawn once (seeded); their flat indices are stored with the data.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is needed only while tracing; reading a store needs h5py and numpy alone
    import torch


@dataclass(frozen=True)
class Pooling:
    kind: str = "none"
    factor: int = 1  # spatial
    count: int = 0  # random
    seed: int = 0  # random

    @classmethod
    def parse(cls, text: str) -> Pooling:
        name, _, arg = text.strip().lower().partition(":")
        try:
            if name == "none" and not arg:
                return cls()
            if name == "frame" and not arg:
                return cls("frame")
            if name == "spatial":
                factor = int(arg)
                if factor >= 1:
                    return cls("spatial", factor=factor)
            if name == "random":
                count, _, seed = arg.partition(":")
                if int(count) >= 1:
                    return cls("random", count=int(count), seed=int(seed or 0))
        except ValueError:
            pass
        raise ValueError(f"bad pooling {text!r}: use 'none', 'frame', 'spatial:K' (K >= 1) or 'random:K[:SEED]'")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Pooling:
        return cls(**json.loads(text))

    def check(self, grid: tuple[int, int, int]) -> None:
        """Refuse a pooling that does not fit the token grid (a window larger than the grid pools nothing)."""
        t, h, w = grid
        if self.kind == "spatial" and self.factor > max(h, w):
            raise ValueError(f"pooling spatial:{self.factor} is larger than the {h}x{w} token grid: K is 1-{max(h, w)}")
        if self.kind == "random" and self.count > t * h * w:
            raise ValueError(f"pooling random:{self.count}: the token grid {grid} has only {t * h * w} tokens")

    def output_grid(self, grid: tuple[int, int, int]) -> tuple[int, int, int] | None:
        """(frames, h, w) of the pooled tokens, or None when they are not a grid (random subset)."""
        t, h, w = grid
        if self.kind == "none":
            return grid
        if self.kind == "spatial":
            return (t, math.ceil(h / self.factor), math.ceil(w / self.factor))
        if self.kind == "frame":
            return (t, 1, 1)
        return None

    def token_index(self, grid: tuple[int, int, int]) -> np.ndarray | None:
        """Flat indices into the full (frames*h*w) grid of the kept tokens (random subset only)."""
        if self.kind != "random":
            return None
        total = int(np.prod(grid))
        if self.count > total:
            raise ValueError(f"random:{self.count} asks for more tokens than the grid {grid} has ({total})")
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(total, size=self.count, replace=False))

    def num_tokens(self, grid: tuple[int, int, int]) -> int:
        out = self.output_grid(grid)
        return int(np.prod(out)) if out is not None else self.count

    def token_positions(self, grid: tuple[int, int, int]) -> np.ndarray:
        """(n_tokens, 3) array of (frame, h, w) of each stored token (pooled grids: window index)."""
        out = self.output_grid(grid)
        if out is None:
            return np.stack(np.unravel_index(self.token_index(grid), grid), axis=1)
        return np.stack(np.unravel_index(np.arange(int(np.prod(out))), out), axis=1)

    def apply(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Pool (batch, frames*h*w, hidden) tokens laid out frame-major, as DiTs flatten them."""
        import torch

        b, n, d = tokens.shape
        t, h, w = grid
        if n != t * h * w:
            raise ValueError(f"{n} tokens do not fill the token grid {grid} ({t * h * w} tokens)")
        if self.kind == "none":
            return tokens
        if self.kind == "random":
            index = torch.as_tensor(self.token_index(grid), device=tokens.device)
            return tokens.index_select(1, index)
        x = tokens.reshape(b, t, h, w, d)
        if self.kind == "frame":
            return x.mean(dim=(2, 3))
        # spatial: average pooling that ignores the padding at ragged edges
        x = x.permute(0, 1, 4, 2, 3).reshape(b * t, d, h, w)
        pooled = torch.nn.functional.avg_pool2d(x, self.factor, ceil_mode=True, count_include_pad=False)
        th, tw = pooled.shape[-2:]
        return pooled.reshape(b, t, d, th, tw).permute(0, 1, 3, 4, 2).reshape(b, t * th * tw, d)
