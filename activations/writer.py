"""Streams activations into a store off the sampling thread; resumable after any interruption.

Each batch of videos goes to its own part file, written under a temporary name and renamed when
complete; after each rename the main file's virtual datasets are rebuilt into a temporary file and
renamed over the old one (``activations.index``). Both renames are atomic, so whatever kills the
process, the main file opens and lists exactly the videos whose part was finished (see
``activations.schema``). One writer at a time holds the store (``integrity.WriterLock``).
"""

from __future__ import annotations

import os
import queue
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from activations.index import known_records, scan_parts, write_index
from activations.integrity import WRITER_WAIT, PartRecord, WriterLock, file_sha256, one_line, store_id_of
from activations.parts import PartWriter
from activations.schema import (
    StoreError,
    StoreLayout,
    check_header,
    parts_dir,
)
from activations.staging import NONFINITE_COLUMNS, HostStager

_STOP = object()
# Host memory the writer's queue may hold before the sampler waits (StoreWriter(max_queue_bytes=...),
# ``interp trace --queue-mb``): 2 GiB, six Wan 14B block outputs at 480p x 81 frames in fp16.
DEFAULT_QUEUE_BYTES = 2 << 30


class NonFiniteWarning(UserWarning):
    """Activations held NaN, Inf or values beyond the store dtype's range (counted before the cast)."""


class StoreWriter:
    """Create a store, or reopen one made with the same layout and resume it.

    ``index=False`` is a shard writer, for one of several processes filling the same store (Ray
    workers): it writes parts only, never reads the others, never rebuilds the main file and never
    removes other processes' half-written parts; the process that owns the store rebuilds the index afterwards
    (any ``StoreWriter`` opened with ``index=True`` does, from the parts on disk).

    A second writer of the same store while one holds it is refused (shard writers share the lock with
    each other only). Every data chunk carries its Fletcher-32 (checked on each read); ``sha256``: also
    record each part file's SHA-256 in the index (``interp verify --checksums`` compares it). Off by
    default: it rereads every part on the writer thread (~0.8 GB/s on one core here, slower than a
    fast disk) for what the chunk checksums already guard.
    """

    # ``background=False`` writes in the caller's thread: on a CPU whose cores all run torch, a writer thread
    # preempts them mid parallel region (2 cores, benchmarks/trace_overhead.py: 1.25x untraced with it, 1.11x
    # inline). A model on a GPU keeps the thread: the host's cores are free while the device computes.

    def __init__(
        self,
        path: str | Path,
        layout: StoreLayout,
        queue_size: int = 16,
        index: bool = True,
        max_queue_bytes: int = DEFAULT_QUEUE_BYTES,
        sha256: bool = False,
        background: bool = True,
    ):
        self.path = Path(path)
        self.layout = layout
        self.index = index
        self.sha256 = sha256
        if max_queue_bytes < 1:
            raise ValueError(f"max_queue_bytes must be positive, got {max_queue_bytes}")
        layout.to_json()  # fails here, before anything touches the disk, if the layout cannot be stored
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a store file")
        self.parts = parts_dir(self.path)
        self.store_id: str | None = uuid.uuid4().hex  # a new store's identity (integrity.STORE_ID)
        if self.path.exists():
            try:
                with h5py.File(self.path, "r") as f:
                    existing = check_header(f.attrs, self.path)
                    self.store_id = store_id_of(f)  # resumed: its own (None: a store from before ids)
            except OSError as err:
                raise StoreError(f"{self.path} exists and is not a readable HDF5 file ({one_line(err)})") from err
            diffs = existing.differences(layout)
            if diffs:
                raise StoreError(
                    f"{self.path} was made with other settings ({', '.join(diffs)} differ); "
                    "resume with the same settings or write to a new path"
                )
        elif not index:
            raise StoreError(f"{self.path} is missing: a shard writer needs the store created first")
        elif self.parts.exists() and any(self.parts.glob("part_*.h5")):
            raise StoreError(
                f"{self.parts} holds parts but {self.path} is missing; remove the folder or restore the file"
            )
        self.parts.mkdir(parents=True, exist_ok=True)
        self._open_parts: set[PartWriter] = set()  # closed and removed if the writer thread fails
        self._lock = threading.Lock()  # the writer thread adds finished parts while the sampler reads them
        self._store_lock = WriterLock(self.parts, self.path, shared=not index, wait=WRITER_WAIT)  # before any removal
        try:
            self._load_parts()
        except BaseException:
            self._store_lock.release()
            raise
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        # Back-pressure in bytes: a producer waits while the queued arrays would exceed the bound (one
        # item larger than the bound still passes alone), so a disk slower than the model stalls the
        # sampler instead of growing host memory.
        self.max_queue_bytes = max_queue_bytes
        self._queued_bytes = 0
        self.peak_queued_bytes = 0
        self._room = threading.Condition()
        self.stager = HostStager(layout.dtype)  # device casts, async copies into pinned buffers
        self.nonfinite: list[tuple[str, int, int, int, int]] = []  # (site, step, nan, inf, overflow), nonzero only
        self._error: BaseException | None = None
        self.background = background
        self._thread = threading.Thread(target=self._work, name="activation-store-writer", daemon=True)
        if background:
            self._thread.start()

    def _load_parts(self) -> None:
        # Read once; kept in memory so that rebuilding the index never reopens earlier parts. A shard
        # writer reads none: its process was given pending videos only, and it checks its own part
        # (``part_path``); reading every part per task would grow with the store.
        self._records: dict[Path, PartRecord] = {}
        self._meta: dict[int, str] = {}
        if not self.index:
            return
        for stale in self.parts.glob("*.tmp"):  # half-written parts of an interrupted run (we hold the lock)
            stale.unlink()
        known = known_records(self.path) if self.path.exists() else {}
        self._records, self._meta = scan_parts(self.parts, self.layout, known, self.sha256, self.path, self.store_id)
        self._write_index()

    # -- public API ---------------------------------------------------------------------------
    @property
    def completed(self) -> set[int]:
        """Videos whose part is finished (on disk, renamed)."""
        with self._lock:
            return set(self._meta)

    def pending(self) -> list[int]:
        """Video indices not yet complete, in order."""
        done = self.completed
        return [v for v in range(self.layout.n_videos) if v not in done]

    def begin_part(self, video_indices: Sequence[int]) -> PartWriter:
        videos = [int(v) for v in video_indices]
        if not videos or videos != list(range(videos[0], videos[0] + len(videos))):
            raise ValueError(f"a part holds a contiguous run of videos, got {videos}")
        if videos[0] < 0 or videos[-1] >= self.layout.n_videos:
            raise ValueError(f"videos {videos[0]}-{videos[-1]} outside the store's 0-{self.layout.n_videos - 1}")
        done = self.completed.intersection(videos)
        if done:
            raise ValueError(f"videos {sorted(done)} are already complete")
        return PartWriter(self, videos)

    def close(self) -> None:
        """Wait until everything queued is on disk, release the store; raise the writer thread's error.
        Warns (``NonFiniteWarning``, one line) when captured activations held NaN, Inf or overflow."""
        try:
            if self._thread.is_alive():
                self._queue.put(_STOP)
                self._thread.join()
            self._abandon_parts()
        finally:
            self._store_lock.release()
        self._raise_if_failed()
        if self.nonfinite:
            totals = np.sum([row[2:] for row in self.nonfinite], axis=0)
            site, step = self.nonfinite[0][:2]
            warnings.warn(
                f"{self.path.name}: non-finite activations at {len(self.nonfinite)} (site, step) pairs (first: {site} "
                f"step {step}); " + ", ".join(f"{n} {c}" for n, c in zip(totals, NONFINITE_COLUMNS))
                + f" values, counted before the {self.layout.dtype} cast; list them with `interp verify`",
                NonFiniteWarning,
                stacklevel=2,
            )

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the writer thread --------------------------------------------------------------------
    def submit(self, fn: Callable[[], None], nbytes: int = 0) -> None:
        """Queue ``fn`` for the writer thread; ``nbytes``: the host memory it holds until written."""
        if not self.background:
            return self._run_now(fn)
        self._reserve(nbytes)
        self._queue.put((fn, nbytes))

    def _run_now(self, fn: Callable[[], None]) -> None:
        self._raise_if_failed()
        try:
            fn()
        except BaseException as err:  # as the writer thread would: parts abandoned, raised from here on
            self._error = err
            self._abandon_parts()
        self._raise_if_failed()

    def submit_array(self, array, write: Callable[[np.ndarray], None]) -> None:
        """Queue ``write(host copy of array)``: room is reserved first (the sampler waits here when the
        disk is behind), then the copy is issued (``HostStager``: asynchronous from a device) and the
        writer thread waits for it, writes it and frees its buffer."""
        nbytes = self.stager.nbytes(array)
        if self.background:
            self._reserve(nbytes)
        staged = self.stager.stage(array)

        def run() -> None:
            try:
                write(staged.array())
            finally:
                staged.release()

        if not self.background:
            return self._run_now(run)
        self._queue.put((run, nbytes))

    def _reserve(self, nbytes: int) -> None:
        self._raise_if_failed()
        with self._room:
            while self._queued_bytes and self._queued_bytes + nbytes > self.max_queue_bytes and self._error is None:
                self._room.wait(timeout=1.0)
            self._queued_bytes += nbytes
            self.peak_queued_bytes = max(self.peak_queued_bytes, self._queued_bytes)

    def _raise_if_failed(self) -> None:
        if isinstance(self._error, KeyboardInterrupt):  # Ctrl-C while a write ran: an interruption, not a failure
            raise KeyboardInterrupt
        if isinstance(self._error, StoreError):
            raise StoreError(str(self._error)) from self._error
        if self._error is not None:
            raise StoreError(
                f"writing {self.path} failed: {one_line(self._error)}; finished parts are kept, rerun to resume"
            ) from self._error

    def _abandon_parts(self) -> None:
        """Close the parts a failure left open and remove them. Truncating first frees their space, so
        HDF5's close (which flushes) succeeds on a full disk; an HDF5 file left open after a failed
        write made h5py's clean-up at exit segfault."""
        for part in list(self._open_parts):
            self._open_parts.discard(part)
            part.abandon()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, nbytes = item
            if self._error is None:
                try:
                    fn()
                except BaseException as err:  # reported to the producer at its next call
                    self._error = err
                    self._abandon_parts()
            with self._room:
                self._queued_bytes -= nbytes
                self._room.notify_all()

    def _finish_part(self, tmp: Path, final: Path, videos: list[int], metas: list[str]) -> None:
        sha = file_sha256(tmp) if self.sha256 else ""  # of the closed file: what verify compares
        record = PartRecord(final.name, videos[0], len(videos), tmp.stat().st_size, sha)
        os.replace(tmp, final)
        with self._lock:
            self._records[final] = record
            self._meta.update(zip(videos, metas))
        if self.index:
            self._write_index()

    def _write_index(self) -> None:
        """Rebuild the main file from the finished parts, atomically (``activations.index``)."""
        with self._lock:
            records, metas = list(self._records.values()), dict(self._meta)
        write_index(self.path, self.layout, records, metas, self.parts.name, self.store_id)
