"""Plans of the commands that read a store or a run folder: what they read of it, write and hold, from the
store's layout alone (``interp.plans`` for the rest). ``READERS`` maps a written-out command (verify,
report) to its plan; ``interp.cli_options`` prints it before the command runs. The experiments that read a
store (filmstrip, energy, chain) declare theirs beside their run with the helpers here."""

from __future__ import annotations

from pathlib import Path

from interp.plans import Plan, count, model_weight_bytes
from interp.validation import UsageError


def store_layout(path: Path):
    from activations.reader import ActivationStore

    with ActivationStore(path) as store:
        return store.layout, list(store.completed_videos)


def decoder_bytes(model: str | None, device: str, torch_dtype: str | None) -> int:
    """What decodes x0_hat: the model's weights (a pipeline's folder is loaded whole), nothing loaded to count."""
    from interp.sources import default_dtype

    return model_weight_bytes(model, default_dtype(device, torch_dtype)) if model else 0


def verify_plan(values: dict) -> Plan:
    from activations.schema import check_store_path, parts_dir

    store = check_store_path(values["store"])
    parts = parts_dir(store)
    files = [p for p in (parts.glob("part_*.h5") if parts.is_dir() else []) if p.is_file()]
    read = sum(p.stat().st_size for p in files) if values.get("checksums") else 0
    detail = "every chunk checked" if values.get("checksums") else "headers, shapes, flags (--checksums: every chunk)"
    return Plan("verify", store.parent, 0, details=[f"{count(len(files), 'part')}: {detail}"], read_bytes=read,
                source=store)  # fmt: skip


def report_plan(values: dict) -> Plan:
    run_dir = Path(values["run_dir"])
    if not run_dir.is_dir():
        raise UsageError(f"no run folder at {run_dir}")
    from interp.report.html import embedded_files

    images = embedded_files(run_dir)
    embedded = sum(p.stat().st_size for p in images) * 4 // 3  # base64 in the page
    out = Path(values["out"]) if values.get("out") else run_dir / "report.html"
    return Plan("report", out, 0, disk_bytes=embedded + 2**20, memory_bytes=2 * embedded,
                details=[f"{count(len(images), 'figure')} embedded"], read_bytes=embedded * 3 // 4,
                source=run_dir)  # fmt: skip


READERS = {"verify": verify_plan, "report": report_plan}
