"""Host staging of captured tensors: copies issued without waiting give the bytes a synchronous
copy gives (a pooled buffer is reused only after the writer wrote it), and NaN / Inf / overflow
are counted per (site, step) before the fp16 cast, stored, read back and warned about."""

import json
import threading
import time

import numpy as np
import pytest
import torch

from activations import ActivationStore, StoreLayout, StoreWriter
from activations import slabs as slabs_module
from activations import writer as writer_module
from activations.consolidate import consolidate_store
from activations.nonfinite import NonFinite, nonfinite_counts
from activations.staging import HostStager, PinnedPool, Staged
from activations.verify import verify_store

GRID, HIDDEN, STEPS = (2, 4, 4), 64, 6
N_TOKENS = int(np.prod(GRID))


def _layout(dtype: str = "float16") -> StoreLayout:
    return StoreLayout(
        model="synthetic", adapter="none", num_steps=STEPS, steps=list(range(STEPS)),
        timesteps=[float(1000 - 100 * s) for s in range(STEPS)], sigmas=[1 - s / STEPS for s in range(STEPS + 1)],
        sites=["blocks.0", "blocks.1"], hidden={"blocks.0": HIDDEN, "blocks.1": HIDDEN}, token_grid=GRID,
        pooling=json.dumps({"kind": "none", "factor": 1, "count": 0, "seed": 0}), n_tokens=N_TOKENS,
        latent_shape=(4, *GRID), n_videos=2, video_keys=["v0", "v1"], dtype=dtype,
    )  # fmt: skip


class TrackedPool(PinnedPool):
    """Knows which buffers are back in the pool, so a write can check its bytes were not handed on."""

    def __init__(self):
        super().__init__(pin=False)
        self.free: set[int] = set()

    def take(self, shape, dtype):
        buffer = super().take(shape, dtype)
        self.free.discard(buffer.data_ptr())
        return buffer

    def give(self, buffer) -> None:
        self.free.add(buffer.data_ptr())
        super().give(buffer)


class DelayedCopyStager(HostStager):
    """Stands in for the CUDA path on a CPU: the copy into a pooled buffer lands later, from another
    thread, and ``array()`` waits for it, as it waits on a CUDA event."""

    def __init__(self, dtype: str):
        super().__init__(dtype)
        self._pool = TrackedPool()

    def stage(self, array) -> Staged:
        source = array.detach().to(getattr(torch, self.dtype)).clone()  # the snapshot the device cast makes
        buffer = self._pool.take(tuple(source.shape), source.dtype)
        done = threading.Event()

        def copy() -> None:
            time.sleep(0.002)
            buffer.copy_(source)
            done.set()

        threading.Thread(target=copy, daemon=True).start()
        event = type("Event", (), {"synchronize": lambda self: done.wait()})()  # what array() waits on
        return Staged(buffer=buffer, event=event, pool=self._pool)


def _write(path, stager=None, slow: float = 0.0, monkeypatch=None, planted: bool = False) -> StoreWriter:
    if slow:
        original = slabs_module.SlabWriter.write

        def slow_write(self, pos, data):
            time.sleep(slow)  # a disk behind the producer, so several buffers are in flight
            original(self, pos, data)
            assert data.ctypes.data not in stager._pool.free, "a buffer went back to the pool before it was written"

        monkeypatch.setattr(slabs_module.SlabWriter, "write", slow_write)
    rng = torch.Generator().manual_seed(0)
    with StoreWriter(path, _layout(), max_queue_bytes=4 * N_TOKENS * HIDDEN * 2) as writer:
        if stager is not None:
            writer.stager = stager
        part = writer.begin_part([0, 1])
        for step in range(STEPS):
            for site in ("blocks.0", "blocks.1"):
                tokens = torch.randn(2, N_TOKENS, HIDDEN, generator=rng)
                if planted and step == 3 and site == "blocks.1":
                    tokens[0, 5, 7] = float("nan")
                    tokens[1, 2, 3] = 1e6  # finite in float32, Inf once cast to float16
                    tokens[1, 2, 4] = -float("inf")
                part.write_site(site, step, tokens)
            part.write_x0_hat(step, torch.randn(2, 4, *GRID, generator=rng))
            part.write_x_t(step, torch.randn(2, 4, *GRID, generator=rng))
        part.finish(torch.zeros(2, 4, *GRID), [{}, {}])
    return writer


def test_copies_that_land_later_give_the_bytes_of_synchronous_copies(tmp_path, monkeypatch):
    _write(tmp_path / "sync.h5")
    stager = DelayedCopyStager("float16")
    _write(tmp_path / "async.h5", stager=stager, slow=0.005, monkeypatch=monkeypatch)
    assert stager._pool.allocated < 2 * STEPS * 2  # buffers were reused, not one per slab
    with ActivationStore(tmp_path / "sync.h5") as a, ActivationStore(tmp_path / "async.h5") as b:
        for site in ("blocks.0", "blocks.1"):
            assert np.array_equal(a.activations(site), b.activations(site))
        assert np.array_equal(a.x0_hat(), b.x0_hat()) and np.array_equal(a.final(), b.final())
        assert np.array_equal(a.x_t(), b.x_t())


def test_nan_inf_and_overflow_are_counted_before_the_cast_stored_and_warned(tmp_path):
    with pytest.warns(writer_module.NonFiniteWarning, match=r"1 \(site, step\) pairs.*1 nan, 1 inf, 1 overflow"):
        _write(tmp_path / "n.h5", planted=True)
    assert nonfinite_counts(tmp_path / "n.h5") == [NonFinite("blocks.1", 3, nan=1, inf=1, overflow=1)]
    one_file = consolidate_store(tmp_path / "n.h5", tmp_path / "one" / "n.h5")  # no parts folder beside it
    assert nonfinite_counts(one_file) == [NonFinite("blocks.1", 3, nan=1, inf=1, overflow=1)]
    again = consolidate_store(one_file, tmp_path / "two" / "n.h5")  # a consolidated file consolidates again
    assert nonfinite_counts(again) == [NonFinite("blocks.1", 3, nan=1, inf=1, overflow=1)]
    notes = verify_store(tmp_path / "n.h5").notes
    assert any("blocks.1 step 3: 1 nan, 1 inf, 1 overflow" in n for n in notes)  # `interp verify` lists them
    with ActivationStore(tmp_path / "n.h5") as store:
        stored = store.activations("blocks.1")[:, 3]
    assert np.isnan(stored[0, 5, 7]) and np.isposinf(stored[1, 2, 3])  # what the counts warn of


def test_a_clean_store_counts_nothing_and_numpy_input_is_counted_too(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", writer_module.NonFiniteWarning)
        _write(tmp_path / "c.h5")
    assert nonfinite_counts(tmp_path / "c.h5") == []
    values = np.array([1.0, np.nan, np.inf, 7e4, -7e4, 6e4], dtype=np.float32)
    assert HostStager("float16").count_nonfinite(values).array().tolist() == [1, 1, 2]
    assert HostStager("float16").count_nonfinite(torch.from_numpy(values)).array().tolist() == [1, 1, 2]
    assert HostStager("float32").count_nonfinite(torch.from_numpy(values)).array().tolist() == [1, 1, 0]
