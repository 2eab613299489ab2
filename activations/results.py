"""Tables that analyses (probes, ...) keep inside a store's main file, under ``/results/<tool>/<name>``.

A table is a set of equal-length columns (numbers or strings) plus a JSON ``config`` attribute that
says how it was made. Writing copies the (small) main file, adds the table and renames the copy over
the original, so an interrupted write never damages the store. The copy-and-rename holds the store's
writer lock (``integrity.WriterLock``, waiting up to ``wait`` seconds): a trace rebuilding its index
and other tables being written wait for each other, so none of them renames an older copy over a
newer one. Reads with plain h5py as well.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np

from activations.integrity import WriterLock
from activations.schema import RESULTS, StoreError, check_header, parts_dir

LOCK_WAIT = 60.0  # seconds a table write waits for another writer of the store


def _check_name(text: str, what: str) -> None:
    if not text or "/" in text or text.startswith("."):
        raise ValueError(f"{what} {text!r}: use a plain name without '/'")


def write_table(
    store: str | Path, tool: str, name: str, columns: dict[str, np.ndarray], config: dict, wait: float = LOCK_WAIT
) -> None:
    """Store ``columns`` as ``/results/<tool>/<name>`` (replacing a table of that name), under the
    store's writer lock; ``StoreError`` (one line) where the store is being written past ``wait``
    seconds or cannot be written."""
    _check_name(tool, "tool")
    _check_name(name, "table name")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of one table must have one length, got {sorted(lengths)}")
    path = Path(store)
    with h5py.File(path, "r") as f:
        check_header(f.attrs, path)
    parts = parts_dir(path)
    if parts.is_dir():
        lock = WriterLock(parts, path, wait=wait)
    else:  # a consolidated store: no parts folder to hold the lock, a hidden file beside it does
        lock = WriterLock(path.parent, path, wait=wait, name=f".{path.name}.lock")
    try:
        _copy_with_table(path, tool, name, columns, config)
    finally:
        lock.release()


def _copy_with_table(path: Path, tool: str, name: str, columns: dict[str, np.ndarray], config: dict) -> None:
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".results.tmp")
    except OSError as err:
        raise StoreError(f"cannot write a table into {path}: {os.strerror(err.errno or 0)}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            group_path = f"{RESULTS}/{tool}/{name}"
            if group_path in f:
                del f[group_path]
            group = f.create_group(group_path)
            group.attrs["config"] = json.dumps(config, sort_keys=True, default=str)
            group.attrs["columns"] = json.dumps(list(columns))
            for key, values in columns.items():
                arr = np.asarray(values)
                if arr.dtype.kind in "OUS":
                    group.create_dataset(key, data=arr.astype(object), dtype=h5py.string_dtype())
                else:
                    group.create_dataset(key, data=arr)
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a read-only folder: the store is as it was
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write a table into {path}: {os.strerror(err.errno) if err.errno else err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def list_tables(store: str | Path, tool: str) -> list[str]:
    with h5py.File(store, "r") as f:
        group = f.get(f"{RESULTS}/{tool}")
        return sorted(group) if group is not None else []


def read_table(store: str | Path, tool: str, name: str) -> tuple[dict[str, np.ndarray], dict]:
    """(columns, config) of a stored table."""
    with h5py.File(store, "r") as f:
        key = f"{RESULTS}/{tool}/{name}"
        if key not in f:
            raise StoreError(f"{store} has no table {key}")
        group = f[key]
        columns = {}
        for col in json.loads(group.attrs["columns"]):
            ds = group[col]
            columns[col] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
        return columns, json.loads(group.attrs["config"])
