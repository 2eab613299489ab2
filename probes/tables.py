"""A probing table's homes: a CSV (and the config) in the run folder, and ``results/probes/NAME``
inside the store (``activations.results``, under the store's writer lock). The CSV is written first,
so a store that cannot take the table (read-only, a full disk, another writer past the wait) costs
the copy in the store, never the fits."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from activations.schema import StoreError
from probes.config import ProbeConfig


def write_into_store(table, store_path: str | Path, cfg: ProbeConfig) -> str | None:
    """The table into the store; None, or the one line saying why it is not there."""
    from activations.results import write_table

    columns = {c: table[c].to_numpy() for c in table.columns}
    try:
        write_table(store_path, "probes", cfg.name, columns, {"config": asdict(cfg), "store": str(store_path)})
    except StoreError as err:
        return f"probe table {cfg.name!r} not written into the store: {err}"
    return None


def save_results(table, store_path: str | Path, cfg: ProbeConfig, out_dir: str | Path | None) -> dict[str, Path]:
    """The table as CSV (and the config as JSON) in ``out_dir``, then inside the store. Returns the
    paths written; ``"store_problem"`` holds the line saying why the store did not take it."""
    paths: dict = {}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths["table"] = out / f"{cfg.name}.csv"
        table.to_csv(paths["table"], index=False)
        paths["config"] = out / f"{cfg.name}.config.json"
        paths["config"].write_text(cfg.to_json())
    problem = write_into_store(table, store_path, cfg)
    if problem:
        if out_dir is None:
            raise StoreError(problem)
        paths["store_problem"] = f"{problem}; the table is in {paths['table']}"
    return paths


def read_results(store_path: str | Path, name: str = "probes"):
    """A probing table stored inside a store, as a pandas DataFrame."""
    import pandas as pd

    from activations.results import read_table

    columns, _ = read_table(store_path, "probes", name)
    return pd.DataFrame(columns)
