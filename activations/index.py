"""The main file of a store: virtual datasets over the finished parts, plus what lists them.

The index is built in memory (HDF5's core driver) and written with plain file I/O to a temporary
file that is renamed over the old one. HDF5 never writes the index to disk itself, so a full disk is
an ordinary ``OSError`` here: the temporary file is removed and the old index stays valid. (Letting
HDF5 write it failed inside its close, and h5py's clean-up of the half-closed file at exit segfaulted.)
"""

from __future__ import annotations

import errno
import itertools
import json
import os
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np

from activations.integrity import (
    STORE_ID,
    PartRecord,
    contents_problem,
    file_sha256,
    listed_parts,
    one_line,
    span,
)
from activations.pooling import Pooling
from activations.schema import (
    FORMAT,
    PARTS,
    RESULTS,
    SCHEMA_VERSION,
    StoreError,
    StoreLayout,
    data_shapes,
    vds_file_name,
)

_NAMES = itertools.count()  # in-memory HDF5 files are told apart by name: one per file alive at once


def add_virtual_datasets(f: h5py.File, layout: StoreLayout, records: list[PartRecord], folder: str) -> None:
    """Every per-video dataset of ``layout`` as a virtual dataset over ``folder/<part>`` (NaN elsewhere)."""
    for name, shape in data_shapes(layout).items():
        vlayout = h5py.VirtualLayout(shape=shape, dtype=layout.dtype)
        for r in records:
            source = h5py.VirtualSource(vds_file_name(folder, r.name), name, shape=(r.count, *shape[1:]))
            vlayout[r.first : r.first + r.count] = source
        f.create_virtual_dataset(name, vlayout, fillvalue=np.nan)


def resolve_sources(path: Path, layout: StoreLayout, records: list[PartRecord], parts: Path) -> h5py.File:
    """An in-memory file whose virtual datasets name the parts by absolute path: what a reader uses
    when the main file's own source names no longer point at them (a store renamed with its parts)."""
    mem = h5py.File(f"{path}.resolved.{next(_NAMES)}", "w", driver="core", backing_store=False)
    add_virtual_datasets(mem, layout, records, str(parts.resolve()))
    return mem


def _build(
    path: Path, layout: StoreLayout, records: list[PartRecord], metas: dict[int, str], folder: str, store_id: str | None
) -> bytes:
    lay, n_v = layout, layout.n_videos
    pooling = Pooling.from_json(lay.pooling)
    with h5py.File(f"{path}.index.{next(_NAMES)}", "w", driver="core", backing_store=False, libver="latest") as f:
        f.attrs["format"] = FORMAT
        f.attrs["schema_version"] = SCHEMA_VERSION
        if store_id is not None:
            f.attrs[STORE_ID] = store_id
        f.attrs["layout"] = lay.to_json()
        for key in ("model", "adapter", "dtype", "cfg_branch", "num_steps", "n_videos"):
            f.attrs[key] = getattr(lay, key)
        f.attrs["steps"] = np.asarray(lay.steps, dtype=np.int64)
        f.attrs["timesteps"] = np.asarray(lay.timesteps, dtype=np.float64)
        f.attrs["sigmas"] = np.asarray(lay.sigmas, dtype=np.float64)
        f.attrs["sites"] = json.dumps(lay.sites)
        f.attrs["token_grid"] = np.asarray(lay.token_grid, dtype=np.int64)
        f.attrs["pooling"] = lay.pooling
        add_virtual_datasets(f, lay, records, folder)
        complete = np.zeros(n_v, dtype=bool)
        complete[list(metas)] = True
        f.create_dataset("videos/complete", data=complete)
        meta = np.array([metas.get(v, "") for v in range(n_v)], dtype=object)
        f.create_dataset("videos/meta", data=meta, dtype=h5py.string_dtype())
        strings = h5py.string_dtype()
        f.create_dataset(f"{PARTS}/name", data=np.array([r.name for r in records], dtype=object), dtype=strings)
        for key in ("first", "count", "nbytes"):
            f.create_dataset(f"{PARTS}/{'bytes' if key == 'nbytes' else key}",
                             data=np.array([getattr(r, key) for r in records], dtype=np.int64))  # fmt: skip
        f.create_dataset(f"{PARTS}/sha256", data=np.array([r.sha256 for r in records], dtype=object), dtype=strings)
        f.create_dataset("token_positions", data=pooling.token_positions(lay.token_grid))
        index = pooling.token_index(lay.token_grid)
        if index is not None:
            f.create_dataset("token_index", data=index)
        if path.is_file():  # analyses' tables live in the main file; a rebuilt index keeps them
            with h5py.File(path, "r") as old:
                if RESULTS in old:
                    old.copy(old[RESULTS], f, name=RESULTS)
        f.flush()
        return f.id.get_file_image()


def _write_file(tmp: Path, image: bytes) -> None:
    """Write and sync the index bytes (tests replace this to simulate a full disk)."""
    with open(tmp, "wb") as out:
        out.write(image)
        out.flush()
        os.fsync(out.fileno())


def write_index(
    path: Path,
    layout: StoreLayout,
    records: list[PartRecord],
    metas: dict[int, str],
    folder: str,
    store_id: str | None = None,
) -> None:
    """Rebuild the main file at ``path`` atomically; on a full disk raise one StoreError, old index intact."""
    records = sorted(records, key=lambda r: r.first)
    image = _build(path, layout, records, metas, folder, store_id)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_file(tmp, image)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StoreError(
            f"rebuilding the index {path} failed: {one_line(err)}; the finished parts are kept and the previous "
            f"index still opens{' (free some space and rerun to resume)' if full else ''}"
        ) from err


def known_records(path: Path) -> dict[str, PartRecord]:
    """The records (sizes, checksums) the current index keeps, by part name; {} if none is readable."""
    try:
        with h5py.File(path, "r") as f:
            return {r.name: r for r in listed_parts(f) or []}
    except Exception:  # a damaged index: its parts get checked (and hashed) again
        return {}


def scan_parts(
    parts: Path, layout: StoreLayout, known: dict[str, PartRecord], sha256: bool, store: Path,
    store_id: str | None = None,
) -> tuple[dict[Path, PartRecord], dict[int, str]]:  # fmt: skip
    """Every finished part in ``parts``, checked against the layout: (records, metadata per video).
    Sizes and SHA-256s come from ``known`` where the file still has its recorded size; with ``sha256``,
    a part that is not listed yet (published just before a kill, or by a shard writer) is hashed now."""
    records: dict[Path, PartRecord] = {}
    metas: dict[int, str] = {}
    for part in sorted(parts.glob("part_*.h5")):
        size, old = part.stat().st_size, known.get(part.name)
        sha = old.sha256 if old is not None and old.nbytes == size else ""
        videos: list[int] = []
        try:
            with h5py.File(part, "r") as f:
                videos = [int(v) for v in f.attrs.get("video_indices", [])]
                record = PartRecord(part.name, videos[0] if videos else 0, len(videos), size, sha)
                reason = contents_problem(f, layout, record, store_id) if videos else "holds no videos"
                if reason is None:
                    metas.update(zip(videos, f["meta"].asstr()[()]))
        except Exception as err:  # whatever damaged bytes make h5py raise
            reason = f"does not open as a part ({one_line(err)})"
        if reason is not None:
            raise StoreError(
                f"{store}: part {part.name} (videos {span(videos)}) {reason}; run `interp verify {store} --repair` "
                "(moves it aside), then rerun to recompute those videos"
            )
        records[part] = replace(record, sha256=file_sha256(part)) if sha256 and not sha else record
    return records, metas
