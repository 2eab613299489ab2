"""Experiments as data.

- ``ExperimentConfig``: a dataclass with a JSON round trip; unknown fields and a config of another
  experiment are refused with the allowed names.
- ``Experiment`` + ``register`` / ``get`` / ``experiments``: the registry the CLI, the demo and
  the report find experiments through (``kind`` -> config class, ``run``, ``save``).
- What every run leaves behind, its ``Manifest``, lives in ``interp.manifest`` (the report reads it
  without importing any experiment).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from interp.manifest import Manifest


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
        for old, new in getattr(cls, "old_spellings", {}).items():  # a field renamed since the file was written
            if old in data and new not in data:
                data[new] = data.pop(old)
        data = cls.upgrade(data)
        kind = data.pop("experiment", cls.experiment)
        if kind != cls.experiment:
            raise UsageError(f"this is a {kind!r} config, not {cls.experiment!r}")
        return build(cls, data, f"{cls.experiment} config")

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """A config file written by an earlier version, in today's fields (default: as it is)."""
        return data

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


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
    plan: Callable[..., Any] | None = None  # (config, out, **options) -> interp.plans.Plan; None: the generic one
    # Its command, made by ``interp.cli_options.make_command``: options beyond the config's fields, handed to
    # run and plan (name -> (type, default, help[, flags])); its default ``--out`` and whether that names a
    # file; old spellings whose meaning depends on other options: ``cli_values(field values, old options)``
    # -> today's field values, ``old_options`` read by it alone (ignored with ``--config``).
    options: dict[str, tuple] = field(default_factory=dict)
    out: str | None = None  # default: runs/<kind>
    out_file: bool = False
    cli_values: Callable[[dict, dict], dict] | None = None
    old_options: dict[str, tuple] = field(default_factory=dict)
    # Its command's words: () is ``interp KIND``; ("sae", "train") is ``interp sae train``, a command of the
    # ``sae`` group; ``group_default``: ``interp GROUP ARGS`` with no command of the group runs this one.
    command: tuple[str, ...] = ()
    group_default: bool = False


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
    return config_from_dict(known[kind].config, data)


def config_from_dict(cls: type, data: dict):
    """A config dataclass from a dict, unknown fields refused (any dataclass, e.g. ``probes.run.ProbeConfig``)."""
    if hasattr(cls, "from_dict"):
        return cls.from_dict(data)
    from interp.validation import build

    return build(cls, {k: v for k, v in data.items() if k != "experiment"}, f"{cls.__name__} config")
