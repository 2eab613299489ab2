"""One self-contained HDF5 file from a store: the virtual datasets copied into real ones.

A store is a main file of virtual datasets over ``.parts/`` (so that writing is crash-safe and
shards can come from many workers). To mail one file, or to read without the parts folder, copy it
into a single file with the same names and attributes; it opens with ``ActivationStore`` and plain
h5py exactly like the original. Copies one video at a time, so memory stays at one video's slab.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from activations.schema import check_header


def consolidate_store(path: str | Path, out: str | Path) -> Path:
    """Write the store at ``path`` as one file at ``out`` (written to ``out.tmp``, then renamed)."""
    path, out = Path(path), Path(out)
    if out.resolve() == path.resolve():
        raise ValueError("consolidate into a new path, not over the store itself")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(path, "r") as src:
        check_header(src.attrs, path)
        with h5py.File(tmp, "w", libver="latest") as dst:
            dst.attrs.update(src.attrs)

            def copy(name: str, obj) -> None:
                if isinstance(obj, h5py.Group):
                    dst.require_group(name).attrs.update(obj.attrs)
                    return
                if not obj.is_virtual:
                    src.copy(obj, dst, name=name)  # small datasets: metadata, results tables
                    return
                chunks = (1, *obj.shape[1:]) if len(obj.shape) > 1 else None
                ds = dst.create_dataset(name, shape=obj.shape, dtype=obj.dtype, chunks=chunks)
                ds.attrs.update(obj.attrs)
                for v in range(obj.shape[0]):
                    ds[v] = obj[v]

            src.visititems(copy)
    tmp.replace(out)
    return out
