"""Getting captured tensors to the host for the writer without stalling the device.

``HostStager.stage`` snapshots a tensor in the store's dtype and returns a ``Staged`` whose
``array()`` the writer thread calls:

- CUDA tensors: the cast to the store dtype runs on the device (half the bytes to move), then a
  ``non_blocking`` copy into a pinned host buffer is issued on a side stream that waits for the
  compute stream, with an event recorded after it; the sampling thread returns at once. The writer
  thread waits on that event, writes the buffer, and gives it back to the pool (``release``), so a
  buffer is reused only after its bytes are on their way to disk. UNTESTED ON A DEVICE so far
  (no GPU was lent to the session that wrote it).
- CPU tensors and numpy arrays: cast (a copy, so the model may reuse its memory) in the caller's
  thread; there is no copy to overlap.

Non-finite values are counted at capture, before the cast: NaN, +-Inf, and finite values beyond
the store dtype's range (``overflow``: float16 holds at most 65504, larger values would be stored as
Inf). On CUDA the three counts are reductions on the device copied like the data (no sync).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

NONFINITE_COLUMNS = ("nan", "inf", "overflow")


def _torch():
    import torch

    return torch


class PinnedPool:
    """Pinned host buffers by (shape, dtype); a buffer taken is out until ``give`` returns it. The
    pool holds at most what was in flight at once, which the writer's byte bound limits."""

    def __init__(self, pin: bool = True):
        self.pin = pin  # False: plain host memory (tests without a device)
        self.allocated = 0  # buffers made, for tests of reuse
        self._free: dict[tuple, list] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype):
        with self._lock:
            free = self._free.get((shape, dtype))
            if free:
                return free.pop()
        self.allocated += 1
        return _torch().empty(shape, dtype=dtype, pin_memory=self.pin)

    def give(self, buffer) -> None:
        with self._lock:
            self._free.setdefault((tuple(buffer.shape), buffer.dtype), []).append(buffer)


class Staged:
    """A host copy on its way: ``array()`` (writer thread) waits for it; ``release()`` frees its buffer."""

    def __init__(self, array: np.ndarray | None = None, buffer=None, event=None, pool: PinnedPool | None = None):
        self._array, self._buffer, self._event, self._pool = array, buffer, event, pool

    def array(self) -> np.ndarray:
        if self._array is None:
            self._event.synchronize()  # the copy into the pinned buffer has finished
            self._array = self._buffer.numpy()
        return self._array

    def release(self) -> None:
        if self._pool is not None and self._buffer is not None:
            self._array = None
            self._pool.give(self._buffer)
            self._buffer = self._pool = None


class HostStager:
    """Snapshots tensors into host arrays of the store's dtype (see the module doc)."""

    def __init__(self, dtype: str):
        self.dtype = dtype
        self.limit = float(np.finfo(np.dtype(dtype)).max)
        self._pool = PinnedPool()
        self._streams: dict[Any, Any] = {}

    def nbytes(self, array) -> int:
        return int(np.prod(tuple(array.shape))) * np.dtype(self.dtype).itemsize

    def stage(self, array) -> Staged:
        if not hasattr(array, "detach"):
            return Staged(np.ascontiguousarray(array, dtype=self.dtype))
        torch = _torch()
        tensor = array.detach()
        dtype = getattr(torch, self.dtype)
        if not tensor.is_cuda:
            return Staged(np.ascontiguousarray(tensor.to("cpu", dtype).numpy()))
        return self._copy_async(tensor.to(dtype).contiguous())  # the cast on the device: half the bytes

    def count_nonfinite(self, array) -> Staged:
        """(nan, inf, overflow) counts of ``array`` as captured, before any cast."""
        if not hasattr(array, "detach"):
            values = np.asarray(array)
            finite = np.isfinite(values)
            counts = [np.isnan(values).sum(), np.isinf(values).sum(), (np.abs(values[finite]) > self.limit).sum()]
            return Staged(np.asarray(counts, dtype=np.int64))
        torch = _torch()
        tensor = array.detach()
        if not tensor.is_cuda:
            # One pass in the common case: a NaN makes both extremes NaN, an Inf or overflow shows in one.
            low, high = torch.aminmax(tensor)
            if bool(torch.isfinite(low) & torch.isfinite(high)) and max(-float(low), float(high)) <= self.limit:
                return Staged(np.zeros(3, dtype=np.int64))
        counts = torch.stack([
            torch.isnan(tensor).sum(), torch.isinf(tensor).sum(),
            (torch.isfinite(tensor) & (tensor.abs() > self.limit)).sum(),
        ])  # fmt: skip
        if not tensor.is_cuda:
            return Staged(counts.numpy().astype(np.int64))
        return self._copy_async(counts)

    def _copy_async(self, tensor) -> Staged:
        torch = _torch()
        device = tensor.device
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device=device)
        stream = self._streams[device]
        stream.wait_stream(torch.cuda.current_stream(device))  # the values exist before they are copied
        buffer = self._pool.take(tuple(tensor.shape), tensor.dtype)
        with torch.cuda.stream(stream):
            buffer.copy_(tensor, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        tensor.record_stream(stream)  # the allocator keeps the device copy until the side stream is done
        return Staged(buffer=buffer, event=event, pool=self._pool)
