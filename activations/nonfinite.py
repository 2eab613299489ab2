"""Read the NaN / Inf / overflow counts a store's writer recorded per (site, step) at capture.

Each part holds ``/nonfinite`` (site, step, 3) int64, sites and steps in the layout's order, columns
``nan, inf, overflow`` (``activations.staging``); this sums them over the store's listed parts. A
consolidated file holds the sum as its own ``/nonfinite``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from activations.schema import PARTS, check_header, parts_dir


@dataclass(frozen=True)
class NonFinite:
    site: str
    step: int
    nan: int
    inf: int
    overflow: int  # finite where captured, beyond the store dtype's range (stored as Inf)


def nonfinite_totals(path: str | Path) -> np.ndarray:
    """(site, step, 3) counts of the store at ``path``: its own ``/nonfinite`` (a consolidated file),
    else the sum over its listed parts (parts written before the counts existed add nothing)."""
    return _layout_and_totals(Path(path))[1]


def nonfinite_counts(path: str | Path) -> list[NonFinite]:
    """Every (site, step) of the store at ``path`` whose captured values held NaN, Inf or overflow."""
    layout, total = _layout_and_totals(Path(path))
    return [
        NonFinite(layout.sites[i], layout.steps[j], *map(int, total[i, j]))
        for i, j in zip(*np.nonzero(total.any(axis=2)))
    ]


def _layout_and_totals(path: Path):
    with h5py.File(path, "r") as f:
        layout = check_header(f.attrs, path)
        if "nonfinite" in f:
            return layout, f["nonfinite"][()]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f[f"{PARTS}/name"][()]] if PARTS in f else []
    total = np.zeros((len(layout.sites), len(layout.steps), 3), dtype=np.int64)
    for name in names:
        with h5py.File(parts_dir(path) / name, "r") as part:
            if "nonfinite" in part:
                total += part["nonfinite"][()]
    return layout, total
