"""The writer's queue is bounded in bytes: a disk slower than the model makes the sampler wait
instead of growing host memory, and what is written is the same as with an unbounded queue."""

import json
import time
import tracemalloc

import numpy as np
import pytest

from activations import ActivationStore, StoreError, StoreLayout, StoreWriter
from activations import slabs as slabs_module

GRID, HIDDEN, STEPS = (2, 8, 8), 256, 12  # one slab: 1 video x 128 tokens x 256 x 4 B = 128 KiB


def _layout(n_videos: int = 1) -> StoreLayout:
    n_tokens = int(np.prod(GRID))
    return StoreLayout(
        model="synthetic", adapter="none", num_steps=STEPS, steps=list(range(STEPS)),
        timesteps=[float(1000 - 80 * s) for s in range(STEPS)], sigmas=[1 - s / STEPS for s in range(STEPS + 1)],
        sites=["blocks.0"], hidden={"blocks.0": HIDDEN}, token_grid=GRID,
        pooling=json.dumps({"kind": "none", "factor": 1, "count": 0, "seed": 0}), n_tokens=n_tokens,
        latent_shape=(4, *GRID), n_videos=n_videos, video_keys=[f"v{i}" for i in range(n_videos)], dtype="float32",
    )  # fmt: skip


def _write(path, bound: int, slow: float = 0.0, monkeypatch=None) -> tuple[StoreWriter, float, int]:
    if slow:
        original = slabs_module.SlabWriter.write

        def slow_write(self, pos, data):
            time.sleep(slow)  # a disk much slower than the producer
            original(self, pos, data)

        monkeypatch.setattr(slabs_module.SlabWriter, "write", slow_write)
    rng = np.random.default_rng(0)
    tracemalloc.start()
    tic = time.perf_counter()
    with StoreWriter(path, _layout(), max_queue_bytes=bound) as writer:
        part = writer.begin_part([0])
        for step in range(STEPS):
            part.write_site("blocks.0", step, rng.standard_normal((1, int(np.prod(GRID)), HIDDEN)).astype(np.float32))
        produced = time.perf_counter() - tic
        part.finish(np.zeros((1, 4, *GRID), np.float32), [{}])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return writer, produced, peak


def test_a_slow_disk_makes_the_sampler_wait_within_the_byte_bound(tmp_path, monkeypatch):
    slab = int(np.prod(GRID)) * HIDDEN * 4
    bounded, produced, peak = _write(tmp_path / "b.h5", 2 * slab, slow=0.05, monkeypatch=monkeypatch)
    assert bounded.peak_queued_bytes <= 2 * slab  # never more than the bound queued
    assert produced >= 0.05 * (STEPS - 3)  # the producer waited for the disk
    assert peak < 6 * slab  # host memory: the bound plus the slab in hand, not every slab (12)
    monkeypatch.undo()
    unbounded, _, _ = _write(tmp_path / "u.h5", 1 << 40)
    assert unbounded.peak_queued_bytes <= STEPS * slab + 4 * int(np.prod(GRID)) * 4  # every slab and the final
    with ActivationStore(tmp_path / "b.h5") as a, ActivationStore(tmp_path / "u.h5") as b:
        assert np.array_equal(a.activations("blocks.0"), b.activations("blocks.0"))  # same bytes either way


def test_one_item_larger_than_the_bound_still_passes_and_bad_bounds_are_refused(tmp_path):
    writer, _, _ = _write(tmp_path / "s.h5", 1)
    assert writer.peak_queued_bytes <= int(np.prod(GRID)) * HIDDEN * 4
    with pytest.raises(ValueError, match="max_queue_bytes must be positive"):
        StoreWriter(tmp_path / "x.h5", _layout(), max_queue_bytes=0)


def test_inline_writing_stores_the_same_bytes_as_the_writer_thread(tmp_path):
    rng = np.random.default_rng(1)
    data = [rng.standard_normal((1, int(np.prod(GRID)), HIDDEN)).astype(np.float32) for _ in range(STEPS)]
    for name, background in (("t.h5", True), ("i.h5", False)):
        with StoreWriter(tmp_path / name, _layout(), background=background) as writer:
            part = writer.begin_part([0])
            for step, tokens in enumerate(data):
                part.write_site("blocks.0", step, tokens)
            part.finish(np.zeros((1, 4, *GRID), np.float32), [{}])
        assert writer._thread.is_alive() is False
    with ActivationStore(tmp_path / "t.h5") as a, ActivationStore(tmp_path / "i.h5") as b:
        assert np.array_equal(a.activations("blocks.0"), b.activations("blocks.0"))
        assert a.completed_videos == b.completed_videos == [0]


def test_an_inline_write_error_is_raised_at_once_and_leaves_no_part(tmp_path, monkeypatch):
    def broken(self, pos, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(slabs_module.SlabWriter, "write", broken)
    writer = StoreWriter(tmp_path / "e.h5", _layout(), background=False)
    part = writer.begin_part([0])
    with pytest.raises(StoreError, match="No space left on device; finished parts are kept"):
        part.write_site("blocks.0", 0, np.zeros((1, int(np.prod(GRID)), HIDDEN), np.float32))
    with pytest.raises(StoreError):
        writer.close()
    assert not list((tmp_path / "e.h5.parts").glob("part_*"))
    with ActivationStore(tmp_path / "e.h5") as store:
        assert store.completed_videos == []
