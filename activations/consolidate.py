"""One self-contained HDF5 file from a store: the virtual datasets copied into real ones.

A store is a main file of virtual datasets over ``.parts/`` (so that writing is crash-safe and
shards can come from many workers). To mail one file, or to read without the parts folder, copy it
into a single file with the same names and attributes; it opens with ``ActivationStore`` and plain
h5py exactly like the original. Copies one video at a time, so memory stays at one video's slab.
The store is opened with ``ActivationStore``: its parts are checked first (a damaged store is refused,
not copied as NaN) and found also when it was renamed with its parts folder. ``/parts`` is copied as
a record of where the data came from; readers ignore it in a file whose datasets are not virtual.
The parts' NaN / Inf / overflow counts are summed into the file's own ``/nonfinite``.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from activations.nonfinite import nonfinite_totals
from activations.reader import ActivationStore
from activations.schema import CHECKED
from activations.staging import NONFINITE_COLUMNS


def consolidate_store(path: str | Path, out: str | Path) -> Path:
    """Write the store at ``path`` as one file at ``out`` (written to ``out.tmp``, then renamed)."""
    path, out = Path(path), Path(out)
    if out.resolve() == path.resolve():
        raise ValueError("consolidate into a new path, not over the store itself")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with ActivationStore(path) as store:
        src = store._file
        with h5py.File(tmp, "w", libver="latest") as dst:
            dst.attrs.update(src.attrs)

            def copy(name: str, obj) -> None:
                if isinstance(obj, h5py.Group):
                    dst.require_group(name).attrs.update(obj.attrs)
                    return
                if name == "nonfinite":  # a consolidated file's own counts: written below from the same sum
                    return
                if not obj.is_virtual:
                    src.copy(obj, dst, name=name)  # small datasets: metadata, results tables
                    return
                chunks = (1, *obj.shape[1:]) if len(obj.shape) > 1 else None
                ds = dst.create_dataset(name, shape=obj.shape, dtype=obj.dtype, chunks=chunks, **CHECKED)
                ds.attrs.update(obj.attrs)
                data = store.dataset(name)
                for v in range(obj.shape[0]):
                    ds[v] = data[v]

            src.visititems(copy)
            counts = dst.create_dataset("nonfinite", data=nonfinite_totals(path))
            counts.attrs["columns"] = list(NONFINITE_COLUMNS)
    tmp.replace(out)
    return out
