"""Shuffled token batches streamed from a store (issue 31, item 6: an SAE trainer reads a slab as an
iterator of batches, never the slab whole): every token of the selection comes out exactly once per epoch,
the rows held at once stay within the mixing buffer plus one block, batches mix videos, steps and positions,
and the order is the seed's."""

import itertools

import numpy as np
import pytest

from activations import ActivationStore
from activations.batches import TokenBatches
from interp.experiments.trace import TraceConfig, run_trace


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("batches") / "t.h5"
    return run_trace(TraceConfig(n=3, steps="0,5,9", layers="0,2", num_steps=10, dtype="float32"), path, progress=False)


def _rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_every_token_once_within_a_bounded_buffer(store):
    with ActivationStore(store) as s:
        every = s.activations("blocks.2", steps=[0, 9]).reshape(-1, s.layout.hidden["blocks.2"])
        batches = TokenBatches(s, "blocks.2", steps=[0, 9], batch_size=16, buffer_tokens=64, block_tokens=24, seed=3)
        out = list(batches)
    got = np.concatenate(out)
    assert got.shape == every.shape and np.array_equal(_rows(got), _rows(every))
    assert all(len(b) == 16 for b in out[:-1]) and batches.n_tokens == len(every)
    assert batches.rows_held <= 64 + 24  # the mixing buffer and one block, never the slab (384 rows)
    slab = {row.tobytes(): (v, p) for v in range(3) for p, step in enumerate([0, 9])
            for row in every.reshape(3, 2, -1, every.shape[-1])[v, p]}  # fmt: skip
    assert len({slab[row.tobytes()] for row in out[0]}) > 1  # a batch mixes (video, step) slabs


def test_the_order_is_the_seeds_and_a_trainer_can_pull_without_end(store):
    with ActivationStore(store) as s:
        first = [b.copy() for b in TokenBatches(s, "blocks.0", steps=[5], batch_size=32, buffer_tokens=64, seed=1)]
        again = [b.copy() for b in TokenBatches(s, "blocks.0", steps=[5], batch_size=32, buffer_tokens=64, seed=1)]
        other = [b.copy() for b in TokenBatches(s, "blocks.0", steps=[5], batch_size=32, buffer_tokens=64, seed=2)]
        endless = TokenBatches(s, "blocks.0", steps=[5], batch_size=32, buffer_tokens=64, epochs=None)
        pulled = list(itertools.islice(endless, 50))  # 50 batches of 32 from a 192-token slab: several epochs
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert len(pulled) == 50 and all(b.shape == (32, first[0].shape[1]) for b in pulled)


def test_a_selection_the_store_cannot_serve_is_one_clear_error(store):
    with ActivationStore(store) as s:
        for kwargs, message in (({"site": "blocks.7"}, "is not in the store"), ({"steps": [3]}, "step 3 is not stored"),
                                ({"buffer_tokens": 16}, "at least two batches")):  # fmt: skip
            with pytest.raises(ValueError, match=message):
                TokenBatches(s, **{"site": "blocks.0", "steps": [0], "batch_size": 16, **kwargs})


def test_in_order_blocks_map_back_to_their_videos_and_tokens(store):
    """The unshuffled reader (features against labels per token): each block is the slab's rows of its videos and
    token range, and together they cover the selection once, whatever order the videos were given in."""
    with ActivationStore(store) as s:
        every = s.activations("blocks.0", steps=[5])[:, 0]
        seen = np.zeros(every.shape[:2], dtype=int)
        for block_tokens in (24, 64, 1000):
            seen[:] = 0
            reader = TokenBatches(s, "blocks.0", [5], videos=[2, 0, 1], block_tokens=block_tokens)
            for videos, step, start, stop, rows in reader.in_order():
                assert step == 5 and list(videos) == sorted(videos)
                assert np.array_equal(rows, every[list(videos), start:stop])
                seen[list(videos), start:stop] += 1
            assert (seen == 1).all()


def test_offsets_centre_each_steps_rows(store):
    """Per-step offsets (a step-shared SAE's mean tokens) are subtracted from that step's rows only."""
    with ActivationStore(store) as s:
        every = s.activations("blocks.0", steps=[0, 9])
        offsets = {0: every[:, 0].reshape(-1, every.shape[-1]).mean(0), 9: np.full(every.shape[-1], 3.0, np.float32)}
        got = np.concatenate(list(TokenBatches(s, "blocks.0", [0, 9], batch_size=32, buffer_tokens=64,
                                               offsets=offsets)))  # fmt: skip
        expected = np.concatenate([every[:, 0].reshape(-1, every.shape[-1]) - offsets[0],
                                   every[:, 1].reshape(-1, every.shape[-1]) - offsets[9]])  # fmt: skip
    assert np.allclose(_rows(got), _rows(expected), atol=1e-6)
