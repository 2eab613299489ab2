"""Streams activations into a store off the sampling thread; resumable after any interruption.

Each batch of videos goes to its own part file, written under a temporary name and renamed when
complete; after each rename the main file's virtual datasets are rebuilt into a temporary file and
renamed over the old one. Both renames are atomic, so whatever kills the process, the main file
opens and lists exactly the videos whose part was finished (see ``activations.schema``).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from activations.pooling import Pooling
from activations.schema import FORMAT, RESULTS, SCHEMA_VERSION, StoreError, StoreLayout, check_header, parts_dir

_STOP = object()
# Host memory the writer's queue may hold before the sampler waits (StoreWriter(max_queue_bytes=...)).
DEFAULT_QUEUE_BYTES = 2 << 30


def _to_numpy(array, dtype: str) -> np.ndarray:
    """A detached host copy in the store's dtype (accepts torch tensors and numpy arrays)."""
    if hasattr(array, "detach"):
        import torch

        return np.ascontiguousarray(array.detach().to("cpu", getattr(torch, dtype)).numpy())
    return np.ascontiguousarray(array, dtype=dtype)


def site_chunks(batch: int, n_tokens: int, hidden: int, itemsize: int, target: int = 1 << 20) -> tuple[int, ...]:
    """Chunk shape of a part's (video, step, token, hidden) dataset: one step of several videos, about
    ``target`` bytes (one step of one video split along tokens when that alone is larger). Measured
    here: (batch, 1, tokens, hidden) chunks written step by step ran 1.5x faster than per-video chunks."""
    per_video = n_tokens * hidden * itemsize
    if per_video >= target:
        return (1, 1, max(1, min(n_tokens, target // (hidden * itemsize))), hidden)
    return (max(1, min(batch, target // per_video)), 1, n_tokens, hidden)


class SlabWriter:
    """Writes (videos, tokens, hidden) slabs to ``ds[:, pos]`` of one dataset, one whole chunk at a time.

    The store is uncompressed and its chunks span one step, so each chunk's bytes are a slice of
    the slab: ``write_direct_chunk`` skips HDF5's selection and chunk-cache copies. Measured here it
    used 2-3x less CPU than ``ds[:, pos] = data``, which matters because the writer thread shares
    the cores with the sampler. Edge chunks are padded with NaN (HDF5 stores whole chunks anyway).
    Other layouts fall back to ``ds[:, pos] = data``. The chunk layout is looked up once.
    """

    def __init__(self, ds: h5py.Dataset):
        self.ds = ds
        self.chunks = ds.chunks
        self.direct = (
            self.chunks is not None
            and not ds.id.get_create_plist().get_nfilters()
            and self.chunks[1] == 1
            and self.chunks[3] == ds.shape[3]
        )

    def write(self, pos: int, data: np.ndarray) -> None:
        if not self.direct:
            self.ds[:, pos] = data
            return
        cv, _, ct, hidden = self.chunks
        n_v, n_t, _ = data.shape
        for v0 in range(0, n_v, cv):
            for t0 in range(0, n_t, ct):
                block = data[v0 : v0 + cv, t0 : t0 + ct]
                if block.shape[:2] != (cv, ct):
                    padded = np.full((cv, ct, hidden), np.nan, dtype=data.dtype)
                    padded[: block.shape[0], : block.shape[1]] = block
                    block = padded
                self.ds.id.write_direct_chunk((v0, pos, t0, 0), np.ascontiguousarray(block))


def part_path(parts: Path, videos: Sequence[int]) -> Path:
    """The finished part file of a contiguous run of videos."""
    return parts / f"part_{videos[0]:07d}_{len(videos):04d}.h5"


def _read_part(part: Path) -> tuple[list[int], list[str]]:
    """(video indices, metadata JSON strings) of a finished part."""
    with h5py.File(part, "r") as f:
        return [int(v) for v in f.attrs["video_indices"]], list(f["meta"].asstr()[()])


class StoreWriter:
    """Create a store, or reopen one made with the same layout and resume it.

    ``index=False`` is a shard writer, for one of several processes filling the same store (Ray
    workers): it writes parts only, never reads the others, never rebuilds the main file and never
    removes other processes' half-written parts; the process that owns the store rebuilds the index afterwards
    (any ``StoreWriter`` opened with ``index=True`` does, from the parts on disk).
    """

    def __init__(
        self,
        path: str | Path,
        layout: StoreLayout,
        queue_size: int = 16,
        index: bool = True,
        max_queue_bytes: int = DEFAULT_QUEUE_BYTES,
    ):
        self.path = Path(path)
        self.layout = layout
        self.index = index
        if max_queue_bytes < 1:
            raise ValueError(f"max_queue_bytes must be positive, got {max_queue_bytes}")
        layout.to_json()  # fails here, before anything touches the disk, if the layout cannot be stored
        self.parts = parts_dir(self.path)
        if self.path.exists():
            try:
                with h5py.File(self.path, "r") as f:
                    existing = check_header(f.attrs, self.path)
            except OSError as err:
                raise StoreError(f"{self.path} exists and is not a readable HDF5 file ({err})") from err
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
        for stale in self.parts.glob("*.tmp") if index else ():  # half-written parts of an interrupted run
            stale.unlink()
        # Read once; kept in memory so that rebuilding the index never reopens earlier parts. A shard
        # writer reads none: its process was given pending videos only, and it checks its own part
        # (``part_path``); reading every part per task would grow with the store.
        self._part_files: dict[Path, list[int]] = {}
        self._meta: dict[int, str] = {}
        for part in sorted(self.parts.glob("part_*.h5")) if index else ():
            videos, metas = _read_part(part)
            self._part_files[part] = videos
            self._meta.update(zip(videos, metas))
        self._lock = threading.Lock()  # the writer thread adds finished parts while the sampler reads them
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        # Back-pressure in bytes: a producer waits while the queued arrays would exceed the bound (one
        # item larger than the bound still passes alone), so a disk slower than the model stalls the
        # sampler instead of growing host memory.
        self.max_queue_bytes = max_queue_bytes
        self._queued_bytes = 0
        self.peak_queued_bytes = 0
        self._room = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="activation-store-writer", daemon=True)
        self._thread.start()
        if index:
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
        """Wait until everything queued is on disk; raise the writer thread's error, if any."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_if_failed()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the writer thread --------------------------------------------------------------------
    def submit(self, fn: Callable[[], None], nbytes: int = 0) -> None:
        """Queue ``fn`` for the writer thread; ``nbytes``: the host memory it holds until written."""
        self._raise_if_failed()
        with self._room:
            while self._queued_bytes and self._queued_bytes + nbytes > self.max_queue_bytes and self._error is None:
                self._room.wait(timeout=1.0)
            self._queued_bytes += nbytes
            self.peak_queued_bytes = max(self.peak_queued_bytes, self._queued_bytes)
        self._queue.put((fn, nbytes))

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise StoreError(f"writing {self.path} failed: {self._error}") from self._error

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
            with self._room:
                self._queued_bytes -= nbytes
                self._room.notify_all()

    def _finish_part(self, tmp: Path, final: Path, videos: list[int], metas: list[str]) -> None:
        os.replace(tmp, final)
        with self._lock:
            self._part_files[final] = videos
            self._meta.update(zip(videos, metas))
        if self.index:
            self._write_index()

    def _write_index(self) -> None:
        """Rebuild the main file from the finished parts, atomically."""
        lay = self.layout
        n_v, n_s, n_t = lay.n_videos, len(lay.steps), lay.n_tokens
        pooling = Pooling.from_json(lay.pooling)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with self._lock:
            parts, metas = dict(self._part_files), dict(self._meta)
        try:
            self._write_index_file(tmp, n_v, n_s, n_t, pooling, parts, metas)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.path)

    def _write_index_file(
        self, tmp: Path, n_v: int, n_s: int, n_t: int, pooling: Pooling, parts: dict, metas: dict
    ) -> None:
        lay = self.layout
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs["format"] = FORMAT
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["layout"] = lay.to_json()
            for key in ("model", "adapter", "dtype", "cfg_branch", "num_steps", "n_videos"):
                f.attrs[key] = getattr(lay, key)
            f.attrs["steps"] = np.asarray(lay.steps, dtype=np.int64)
            f.attrs["timesteps"] = np.asarray(lay.timesteps, dtype=np.float64)
            f.attrs["sigmas"] = np.asarray(lay.sigmas, dtype=np.float64)
            f.attrs["sites"] = json.dumps(lay.sites)
            f.attrs["token_grid"] = np.asarray(lay.token_grid, dtype=np.int64)
            f.attrs["pooling"] = lay.pooling
            shapes = {f"sites/{s}": (n_v, n_s, n_t, lay.hidden[s]) for s in lay.sites}
            shapes["x0_hat"] = (n_v, n_s, *lay.latent_shape)
            shapes["x_t"] = (n_v, n_s, *lay.latent_shape)
            shapes["final"] = (n_v, *lay.latent_shape)
            if lay.condition_shape is not None:
                shapes["condition"] = (n_v, *lay.condition_shape)
            for name, shape in shapes.items():
                layout = h5py.VirtualLayout(shape=shape, dtype=lay.dtype)
                for part, videos in parts.items():
                    rel = f"{self.parts.name}/{part.name}"
                    layout[videos[0] : videos[-1] + 1] = h5py.VirtualSource(rel, name, shape=(len(videos), *shape[1:]))
                f.create_virtual_dataset(name, layout, fillvalue=np.nan)
            complete = np.zeros(n_v, dtype=bool)
            complete[list(metas)] = True
            meta = [metas.get(v, "") for v in range(n_v)]
            f.create_dataset("videos/complete", data=complete)
            f.create_dataset("videos/meta", data=np.array(meta, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("token_positions", data=pooling.token_positions(lay.token_grid))
            index = pooling.token_index(lay.token_grid)
            if index is not None:
                f.create_dataset("token_index", data=index)
            self._carry_results(f)

    def _carry_results(self, f: h5py.File) -> None:
        """Analyses' tables live in the main file; a rebuilt index keeps them."""
        if not self.path.exists():
            return
        with h5py.File(self.path, "r") as old:
            if RESULTS in old:
                old.copy(old[RESULTS], f, name=RESULTS)


class PartWriter:
    """One batch of videos being written; call ``finish`` when every step is in."""

    def __init__(self, store: StoreWriter, videos: list[int]):
        self.store = store
        self.videos = videos
        lay = store.layout
        self._step_pos = {s: i for i, s in enumerate(lay.steps)}
        self._final_path = part_path(store.parts, videos)
        self._tmp_path = self._final_path.with_name(self._final_path.name + ".tmp")
        self._file: h5py.File | None = None
        self._slabs: dict[str, SlabWriter] = {}  # site -> writer; looking a dataset up by name costs ~0.5 ms
        b, n_s = len(videos), len(lay.steps)

        def create() -> None:
            f = h5py.File(self._tmp_path, "w")
            f.attrs["video_indices"] = np.asarray(videos, dtype=np.int64)
            for site in lay.sites:
                shape = (b, n_s, lay.n_tokens, lay.hidden[site])
                chunks = site_chunks(b, lay.n_tokens, lay.hidden[site], np.dtype(lay.dtype).itemsize)
                # NaN where a site did not run (Wan 2.2: each step runs one expert only)
                ds = f.create_dataset(f"sites/{site}", shape=shape, dtype=lay.dtype, chunks=chunks, fillvalue=np.nan)
                self._slabs[site] = SlabWriter(ds)
            self._x0_hat = f.create_dataset("x0_hat", shape=(b, n_s, *lay.latent_shape), dtype=lay.dtype)
            self._x_t = f.create_dataset("x_t", shape=(b, n_s, *lay.latent_shape), dtype=lay.dtype)
            if lay.condition_shape is not None:
                f.create_dataset("condition", shape=(b, *lay.condition_shape), dtype=lay.dtype, fillvalue=np.nan)
            f.create_dataset("final", shape=(b, *lay.latent_shape), dtype=lay.dtype)
            self._file = f

        store.submit(create)

    def _position(self, step: int) -> int:
        if step not in self._step_pos:
            raise ValueError(f"step {step} is not among the store's steps {self.store.layout.steps}")
        return self._step_pos[step]

    def write_site(self, site: str, step: int, tokens) -> None:
        """Tokens of ``site`` at denoising ``step`` for the whole batch: (batch, n_tokens, hidden)."""
        lay = self.store.layout
        if site not in lay.hidden:
            raise ValueError(f"site {site!r} is not in the store (sites: {lay.sites})")
        expected = (len(self.videos), lay.n_tokens, lay.hidden[site])
        if tuple(tokens.shape) != expected:
            raise ValueError(f"{site} at step {step}: expected shape {expected}, got {tuple(tokens.shape)}")
        pos = self._position(step)
        data = _to_numpy(tokens, lay.dtype)
        self.store.submit(lambda: self._slabs[site].write(pos, data), data.nbytes)

    def write_x0_hat(self, step: int, latents) -> None:
        pos = self._position(step)
        data = _to_numpy(latents, self.store.layout.dtype)
        self.store.submit(lambda: self._x0_hat.__setitem__(np.s_[:, pos], data), data.nbytes)

    def write_x_t(self, step: int, latents) -> None:
        """The noisy latent that entered the model at ``step`` (what a probe sees without the network)."""
        pos = self._position(step)
        data = _to_numpy(latents, self.store.layout.dtype)
        self.store.submit(lambda: self._x_t.__setitem__(np.s_[:, pos], data), data.nbytes)

    def write_condition(self, condition) -> None:
        """The batch's conditioning latent, (batch, *layout.condition_shape)."""
        shape = self.store.layout.condition_shape
        expected = (len(self.videos), *shape) if shape is not None else None
        if expected is None or tuple(condition.shape) != expected:
            raise ValueError(f"condition of shape {tuple(condition.shape)} but the store expects {expected}")
        data = _to_numpy(condition, self.store.layout.dtype)
        self.store.submit(lambda: self._file["condition"].__setitem__(Ellipsis, data))

    def finish(self, final_latents, metas: Sequence[dict]) -> None:
        """Queue the final latents and per-video metadata, then close and publish the part."""
        if len(metas) != len(self.videos):
            raise ValueError(f"{len(self.videos)} videos but {len(metas)} metadata records")
        data = _to_numpy(final_latents, self.store.layout.dtype)
        meta = np.array([json.dumps(m, sort_keys=True) for m in metas], dtype=object)

        def close() -> None:
            self._file["final"][...] = data
            self._file.create_dataset("meta", data=meta, dtype=h5py.string_dtype())
            self._file.close()
            self.store._finish_part(self._tmp_path, self._final_path, self.videos, list(meta))

        self.store.submit(close)
