"""Is a store what its index says? Cheap checks of the parts (every open), checksums (``verify``),
and the writer's lock.

The main file's virtual datasets read missing or unreadable sources as NaN without an error, so
nothing may compute on a store before its parts are checked: ``ActivationStore`` runs the cheap
checks on open (each listed part exists, has the size it had when written, opens, and holds the
datasets the layout says); every read checks the Fletcher-32 of the chunks it reads, and
``activations.verify --checksums`` reads every chunk (plus the part's SHA-256 where the writer was
asked to record one).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from activations.schema import PARTS, StoreError, StoreLayout, data_shapes

LOCK_NAME = "writer.lock"  # inside NAME.h5.parts/: travels with the store, never matches part_*.h5
WRITER_WAIT = 2.0  # seconds a writer waits for the lock: enough for a result table's copy of the main file
# A store's identity: a random id written into the index and into every part when the store is created.
# It lives inside the files, so a rename or copy keeps it; an index beside another store's parts fails it.
STORE_ID = "store_id"


def store_id_of(f: h5py.File) -> str | None:
    """The id a main file or part carries (None: written before stores had ids)."""
    value = f.attrs.get(STORE_ID)
    return None if value is None else str(value)


def one_line(err: BaseException) -> str:
    """An error as one line: HDF5's messages span several (time, file name, descriptor, buffer...)."""
    code = getattr(err, "errno", None)
    if not isinstance(code, int) or code <= 0:  # h5py raises some OS failures as RuntimeError
        found = re.search(r"errno = (\d+)", str(err))
        code = int(found.group(1)) if found else None
    if code and not getattr(err, "filename", None):
        return os.strerror(code)
    return " ".join(str(err).split()) or type(err).__name__


def span(videos: list[int]) -> str:
    if not videos:
        return "none"
    return str(videos[0]) if len(videos) == 1 else f"{videos[0]}-{videos[-1]}"


@dataclass(frozen=True)
class PartRecord:
    """One part as the index lists it; ``nbytes`` -1 and ``sha256`` "" where not recorded."""

    name: str
    first: int
    count: int
    nbytes: int = -1
    sha256: str = ""

    @property
    def videos(self) -> list[int]:
        return list(range(self.first, self.first + self.count))


@dataclass(frozen=True)
class Problem:
    """Something damaged: a part (its file name) or the index itself (``part`` = "index")."""

    part: str
    videos: list[int]
    reason: str

    def line(self) -> str:
        held = f" (videos {span(self.videos)})" if self.videos else ""
        return f"{self.part}{held}: {self.reason}"


def file_sha256(path: Path) -> str:
    digest, buffer = hashlib.sha256(), bytearray(1 << 16)  # small: runs beside the writer's bounded queue
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def listed_parts(f: h5py.File) -> list[PartRecord] | None:
    """The parts a main file maps; None for a consolidated file (real datasets, no parts)."""
    x0 = f.get("x0_hat")
    if not isinstance(x0, h5py.Dataset) or not x0.is_virtual:
        return None
    if PARTS in f:
        g = f[PARTS]
        names = g["name"].asstr()[()]
        return [
            PartRecord(str(n), int(a), int(c), int(b), str(h))
            for n, a, c, b, h in zip(names, g["first"][()], g["count"][()], g["bytes"][()], g["sha256"].asstr()[()])
        ]
    records = []  # a store written before /parts: its mappings name the parts
    for m in x0.virtual_sources():
        start, end = m.vspace.get_select_bounds()
        name = m.file_name.replace("\\", "/").rsplit("/", 1)[-1].replace("%%", "%")
        records.append(PartRecord(name, int(start[0]), int(end[0]) - int(start[0]) + 1))
    return records


def contents_problem(f: h5py.File, layout: StoreLayout, record: PartRecord, store_id: str | None = None) -> str | None:
    """Why an open part is not the one ``record`` lists for a store of ``layout`` (and id ``store_id``,
    where the store has one), or None."""
    if store_id is not None and store_id_of(f) != store_id:
        theirs = store_id_of(f)
        return ("carries no store id: it was not written for this store" if theirs is None else
                f"belongs to another store (id {theirs[:12]}, this store's {store_id[:12]})")  # fmt: skip
    held = [int(v) for v in f.attrs.get("video_indices", [])]
    if held != record.videos:
        return f"holds videos {span(held)}, the index says {span(record.videos)}"
    for name, shape in data_shapes(layout, record.count).items():
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset):
            return f"has no dataset {name}"
        if ds.shape != shape or ds.dtype != np.dtype(layout.dtype):
            return f"{name} is {ds.dtype}{list(ds.shape)}, the layout says {layout.dtype}{list(shape)}"
    meta = f.get("meta")
    if not isinstance(meta, h5py.Dataset) or meta.shape != (record.count,):
        return "has no metadata of its videos (unfinished part)"
    return None


def chunk_problem(f: h5py.File) -> str | None:
    """The first dataset with a chunk that fails its Fletcher-32 checksum, read one chunk at a time."""
    checked = []
    f.visititems(lambda name, obj: checked.append(name) if isinstance(obj, h5py.Dataset) and obj.fletcher32 else None)
    for name in checked:
        ds = f[name]
        try:
            for chunk in ds.iter_chunks():
                ds[chunk]
        except OSError as err:
            return f"{name} has a chunk that fails its Fletcher-32 checksum (damaged bytes; {one_line(err)})"
    return None


def part_problem(
    path: Path, layout: StoreLayout, record: PartRecord, checksum: bool = False, store_id: str | None = None
) -> str | None:
    """Why the part at ``path`` is not the one ``record`` lists, or None. ``checksum``: also read every
    chunk (HDF5 checks each one's Fletcher-32) and compare the file's SHA-256 where one was recorded."""
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if record.nbytes >= 0 and size != record.nbytes:
        return f"is {size} bytes, {record.nbytes} when written (truncated or overwritten)"
    try:
        with h5py.File(path, "r") as f:
            reason = contents_problem(f, layout, record, store_id)
            if reason is None and checksum:
                reason = chunk_problem(f)
    except Exception as err:  # whatever damaged bytes make h5py raise
        return f"does not open as a part ({one_line(err)})"
    if reason is None and checksum and record.sha256 and file_sha256(path) != record.sha256:
        return "differs from the SHA-256 recorded when it was written (damaged bytes)"
    return reason


def index_problems(f: h5py.File, layout: StoreLayout) -> list[Problem]:
    """The main file's own datasets: present, with the layout's shapes."""
    expected = {"videos/complete": (layout.n_videos,), "videos/meta": (layout.n_videos,), "token_positions": None}
    expected.update(data_shapes(layout))
    problems = []
    for name, shape in expected.items():
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset):
            problems.append(Problem("index", [], f"has no {name}"))
        elif shape is not None and ds.shape != shape:
            problems.append(Problem("index", [], f"{name} has shape {list(ds.shape)}, the layout says {list(shape)}"))
        elif shape is not None and name != "videos/complete" and name != "videos/meta" and ds.dtype != layout.dtype:
            problems.append(Problem("index", [], f"{name} is {ds.dtype}, the layout says {layout.dtype}"))
    return problems


def coverage_problems(complete: np.ndarray, records: list[PartRecord]) -> list[Problem]:
    """Videos listed complete must be exactly those the listed parts hold."""
    held = np.zeros(len(complete), dtype=bool)
    for r in records:
        held[r.first : r.first + r.count] = True
    problems = []
    for flag, what in ((complete & ~held, "listed complete but no part holds them"),
                       (held & ~complete, "held by a listed part but not listed complete")):  # fmt: skip
        if flag.any():
            problems.append(Problem("index", [int(v) for v in np.flatnonzero(flag)], what))
    return problems


class WriterLock:
    """``flock`` on ``PARTS/writer.lock``: exclusive for a store's writer (and for a result table's
    copy-and-rename, ``activations.results``), shared for shard writers (many run at once, none
    while an exclusive holder has it). ``wait``: seconds to wait for a holder to finish (0: refuse at
    once). Released on ``release`` and by the kernel when the process dies; filesystems without
    locks (some network mounts) run unlocked."""

    def __init__(self, parts: Path, store: Path, shared: bool = False, wait: float = 0.0, name: str = LOCK_NAME):
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            return
        try:
            fd = os.open(parts / name, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StoreError(f"cannot write {store}: {parts} is not writable ({one_line(err)})") from None
            raise
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise StoreError(
                        f"another process is writing {store} (it holds {parts / name}); "
                        "wait for it to finish, or write to another path"
                    ) from None
                if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    return
                raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
