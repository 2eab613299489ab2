"""Experiments as data, and what every run leaves behind.

- ``ExperimentConfig``: a dataclass with a JSON round trip; unknown fields and a config of another
  experiment are refused with the allowed names.
- ``Experiment`` + ``register`` / ``get`` / ``experiments``: the registry the CLI, the demo and
  the report find experiments through (``kind`` -> config class, ``run``, ``save``).
- ``Manifest`` (``run.json``, or ``NAME.run.json`` beside a file): kind, config, the files a run
  wrote with their roles and captions, headline lines and summary tables. ``interp report``
  builds its page from manifests alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

MANIFEST = "run.json"
MANIFEST_SUFFIX = ".run.json"


@dataclass
class ExperimentConfig:
    experiment: ClassVar[str] = "experiment"

    def to_dict(self) -> dict:
        return {"experiment": self.experiment, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def __post_init__(self):
        from interp.validation import check

        check(self)  # every config, however made (options, a file, code), is checked before it is used

    @classmethod
    def from_dict(cls, data: dict):
        """A config from a JSON object: types, ranges and unknown fields checked first (``interp.validation``)."""
        from interp.validation import UsageError, build

        if not isinstance(data, dict):
            raise UsageError(f"a {cls.experiment} config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        kind = data.pop("experiment", cls.experiment)
        if kind != cls.experiment:
            raise UsageError(f"this is a {kind!r} config, not {cls.experiment!r}")
        return build(cls, data, f"{cls.experiment} config")

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


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


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: the CLI makes a command of it (options from the config's fields),
    the demo runs its ``demo`` step in ``demo_order``, and the report shows its manifests."""

    kind: str
    config: type[ExperimentConfig]
    run: Callable[..., Any]  # (config, progress=..., [out=...]) -> result
    save: Callable[..., Manifest]  # (result, config, out) -> manifest (written)
    summary: Callable[[Manifest], list[str]] = lambda m: m.headline  # lines the CLI prints
    run_writes: bool = False  # run(config, out=...) writes files while it runs (videos)
    cli: bool = True  # the CLI makes its command from the config's fields (False: a hand-written command)
    demo: Callable[..., None] | None = None  # (StudyContext) -> None: its part of the whole study
    demo_order: int = 100
    alternatives: tuple[type, ...] = ()  # further config classes of this kind (a pipeline variant)


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    _REGISTRY[experiment.kind] = experiment
    return experiment


def get(kind: str) -> Experiment:
    _discover()
    if kind not in _REGISTRY:
        raise ValueError(f"unknown experiment {kind!r} (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[kind]


def experiments() -> dict[str, Experiment]:
    _discover()
    return dict(_REGISTRY)


def _discover() -> None:
    import importlib
    import pkgutil

    import interp.experiments as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name not in ("base", "sweep", "distributed"):
            importlib.import_module(f"interp.experiments.{info.name}")


def load_config(path: str | Path) -> ExperimentConfig:
    """Any registered experiment's config from a JSON file (a result's ``config.json`` or a ``run.json``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no config file at {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from err
    if isinstance(data, dict) and "experiment" not in data and isinstance(data.get("config"), dict):
        data = data["config"]  # a run manifest, or a result file holding its config (ensemble.json)
    kind = data.get("experiment") if isinstance(data, dict) else None
    known = experiments()
    if not isinstance(kind, str) or kind not in known:
        raise ValueError(f"{path}: not an experiment config (experiment must be one of {list(known)})")
    classes = (known[kind].config, *known[kind].alternatives)
    keys = set(data) - {"experiment"}
    cls = next((c for c in classes if keys <= {f.name for f in fields(c)}), classes[0])
    return config_from_dict(cls, data)


def config_from_dict(cls: type, data: dict):
    """A config dataclass from a dict, unknown fields refused (any dataclass, e.g. ``probes.run.ProbeConfig``)."""
    if hasattr(cls, "from_dict"):
        return cls.from_dict(data)
    from interp.validation import build

    return build(cls, {k: v for k, v in data.items() if k != "experiment"}, f"{cls.__name__} config")
