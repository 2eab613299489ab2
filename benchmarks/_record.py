"""The JSON every benchmark writes: its figures, with the date and the machine they were measured on."""

from __future__ import annotations

import json
import platform
from datetime import date
from pathlib import Path

import torch


def save_record(fields: dict, out: Path, threads: int) -> dict:
    """``fields`` after ``date`` and ``machine`` (architecture, torch threads, torch version), to ``out``."""
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {threads} torch threads, torch {torch.__version__}",
        **fields,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    return record
