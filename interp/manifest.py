"""What every run leaves behind: a ``Manifest`` (``run.json``, or ``NAME.run.json`` beside a file):
kind, config, the files a run wrote with their roles and captions, headline lines, summary tables,
notes and the study's claims. ``interp report`` builds its page from manifests alone, so this
module imports nothing of the experiments; ``Manifest.read`` checks every field's type, since a
run folder may come from someone else."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

MANIFEST = "run.json"
MANIFEST_SUFFIX = ".run.json"


@dataclass
class FileEntry:
    path: str  # relative to the manifest's folder
    role: str  # figure, table, data, config, store, video, ...
    caption: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[dict]
    formats: dict[str, str] = field(default_factory=dict)


@dataclass
class Manifest:
    kind: str
    title: str
    section: str  # the report section it belongs to
    config: dict
    files: list[FileEntry] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # sentences the report prints above the figures
    claims: list[dict] = field(default_factory=list)  # the study's claims this run decides (analysis.claims)

    def add(self, path: Path | str, role: str, caption: str = "") -> Path:
        self.files.append(FileEntry(str(path), role, caption))
        return Path(path)

    def write(self, folder: str | Path, name: str | None = None) -> Path:
        """``folder/run.json`` (or ``folder/NAME.run.json``); file paths are made relative to ``folder``."""
        folder = Path(folder).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        for entry in self.files:
            p = Path(entry.path)
            if p.is_absolute() or not (folder / p).exists():
                p = Path(os.path.relpath(p.resolve(), folder))  # a file outside the folder: "../..."
            entry.path = p.as_posix()
        path = folder / (MANIFEST if name is None else name + MANIFEST_SUFFIX)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, default=_json_default))
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """A manifest from its file, every field's type checked: a run folder may come from someone
        else, so what the report renders is what this says it is (``ManifestError``, one line)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:  # JSON errors, 4300+ digit numbers, deep nesting
            raise ManifestError(f"{path}: not a readable JSON manifest ({type(err).__name__})") from None
        return cls(**_checked(data, path))


class ManifestError(ValueError):
    """A run manifest whose content is not what the toolkit writes."""


def _checked(data, path) -> dict:
    """The fields of a manifest with their types checked (cells of tables and claims: any JSON value,
    which the report shows escaped)."""

    def fail(what: str) -> None:
        raise ManifestError(f"{path}: {what}")

    def text(value, what: str) -> str:
        if not isinstance(value, str):
            fail(f"{what} must be a string, got {type(value).__name__}")
        return value

    def texts(value, what: str) -> list[str]:
        if not isinstance(value, list):
            fail(f"{what} must be a list of strings")
        return [text(v, what) for v in value]

    def obj(value, what: str) -> dict:
        if not isinstance(value, dict):
            fail(f"{what} must be an object")
        return value

    if not isinstance(data, dict):
        fail("a manifest must be a JSON object")
    unknown = sorted(set(data) - {f.name for f in fields(Manifest)})
    if unknown:
        fail(f"unknown field {unknown[0]!r}")
    for name in ("kind", "title", "section", "config"):
        if name not in data:
            fail(f"missing field {name!r}")
    out = {name: text(data[name], name) for name in ("kind", "title", "section")}
    if not isinstance(data["config"], dict):
        fail("config must be an object")
    out["config"] = data["config"]
    out["headline"] = texts(data.get("headline", []), "headline")
    out["notes"] = texts(data.get("notes", []), "notes")
    files = data.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        fail("files must be a list of objects")
    out["files"] = []
    for f in files:
        if set(f) - {"path", "role", "caption"} or "path" not in f or "role" not in f:
            fail("a file entry has path, role and caption")
        out["files"].append(FileEntry(text(f["path"], "a file's path"), text(f["role"], "a file's role"),
                                      text(f.get("caption", ""), "a file's caption")))  # fmt: skip
    tables = data.get("tables", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        fail("tables must be a list of objects")
    out["tables"] = []
    for t in tables:
        if set(t) - {"title", "columns", "rows", "formats"} or not {"title", "columns", "rows"} <= set(t):
            fail("a table has title, columns, rows and formats")
        rows = t["rows"]
        if not isinstance(rows, list):
            fail("a table's rows must be a list")
        formats = obj(t.get("formats", {}), "a table's formats")
        out["tables"].append(Table(text(t["title"], "a table's title"), texts(t["columns"], "a table's columns"),
                                   [obj(r, "a table row") for r in rows],
                                   {k: text(v, "a format") for k, v in formats.items()}))  # fmt: skip
    claims = data.get("claims", [])
    if not isinstance(claims, list):
        fail("claims must be a list of objects")
    out["claims"] = [obj(c, "a claim") for c in claims]
    if any(not isinstance(c.get("claim"), str) for c in out["claims"]):
        fail("every claim names its claim")
    return out


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def is_manifest(path: Path) -> bool:
    return path.name == MANIFEST or path.name.endswith(MANIFEST_SUFFIX)
