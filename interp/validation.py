"""One validation layer: every config, from CLI options or a JSON file, is checked here before any compute.

- Types: a strict pydantic model made from the config dataclass's fields (no ``"3"`` for 3, no 2.5 for an
  integer, no ``null`` where a value is needed, no list or string where an object belongs); unknown fields
  are refused with the allowed names; NaN and Inf are refused in every number.
- Ranges and choices: ``RULES``, one table by field name (a name means the same thing in every config:
  ``n`` is always a count of mazes, ``num_steps`` of denoising steps); a class where a name means
  something else declares its own ``field_rules`` (kept by subclasses and renames).
- Output places: ``check_output`` (the folder or file can be made and written, before compute).

Every failure is one ``UsageError`` (a ``ValueError``) naming the field and what is allowed; it is the
toolkit's one error type for bad input, and the CLI prints it as one ``interp: error:`` line (exit 2).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pydantic


class UsageError(ValueError):
    """Bad input (options, config files, paths, plans): reported as one line, exit status 2."""


MAX_VIDEOS = 1_000_000  # a million videos is past any plan this toolkit can finish; larger is a typo
MAX_STEPS = 1000  # denoising steps (schedulers are trained on 1000 timesteps)
MAX_SIZE = 64  # maze cells per side and frames: the testbed's rotary embedding covers 64 positions per axis
MAX_SEED = 2**63 - 1
MAX_PIXELS = 8192  # pipeline height / width
MAX_THREADS = 1024
MAX_SCORER_TIMEOUT = 1e6  # seconds (11.6 days): what setitimer takes on every platform
MAX_SHIFT = 1000.0  # flow shift: released models use 1-17; past this every sigma rounds to 1


@dataclass(frozen=True)
class Rule:
    check: Callable[[Any], bool]
    allowed: str


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def int_range(lo: int, hi: int | None = None) -> Rule:
    text = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
    return Rule(lambda x: isinstance(x, int) and x >= lo and (hi is None or x <= hi), text)


def number(lo: float | None = None, hi: float | None = None, lo_open=False, hi_open=False) -> Rule:
    def ok(x) -> bool:
        if not _num(x) or not math.isfinite(x):
            return False
        if lo is not None and (x <= lo if lo_open else x < lo):
            return False
        return hi is None or (x < hi if hi_open else x <= hi)

    left = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
    right = "" if hi is None else f"{'<' if hi_open else '<='} {hi:g}"
    return Rule(ok, "a finite number" + (f" {left}" if left else "") + (" and" if left and right else "")
                + (f" {right}" if right else ""))  # fmt: skip


def choice(*values: str) -> Rule:
    return Rule(lambda x: x in values, "one of " + ", ".join(repr(v) for v in values))


def each(rule: Rule, min_len: int = 0) -> Rule:
    what = "a non-empty list" if min_len else "a list"
    return Rule(lambda xs: len(xs) >= min_len and all(rule.check(x) for x in xs), f"{what}, each {rule.allowed}")


_FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # module:function of a user's scorer
_SPEC_PART = re.compile(r"^\d+(-\d+(:\d+)?)?$")


def is_index_spec(spec) -> bool:
    """'all', '3', '0-9,19', '0-39:4' (the syntax; the range is checked against the model in the plan)."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return spec >= 0
    if not isinstance(spec, str):
        return False
    text = spec.strip().lower().replace(" ", "")
    if text in ("all", "*"):
        return True
    for part in text.split(","):
        if not _SPEC_PART.match(part):
            return False
        bounds = [int(v) for v in re.split("[-:]", part)]
        if len(bounds) >= 2 and (bounds[1] < bounds[0] or len(bounds) == 3 and bounds[2] < 1):
            return False
    return bool(text)


def is_pooling(spec) -> bool:
    from activations.pooling import Pooling

    try:
        Pooling.parse(spec)
    except (ValueError, AttributeError):
        return False
    return True


INDEX_SPEC = Rule(is_index_spec, "'all' or indices like '3', '0-9,19', '0-39:4'")
SEED = int_range(0, MAX_SEED)
SHARE = number(0, 1, lo_open=True)
NAME = Rule(lambda x: bool(x.strip()) and "/" not in x and "\0" not in x and x not in (".", ".."),
            "a non-empty name without '/' (it names a file and a group of the store)")  # fmt: skip

RULES: dict[str, Rule] = {
    "n": int_range(1, MAX_VIDEOS),
    "size": int_range(2, MAX_SIZE),
    "sizes": each(int_range(2, MAX_SIZE), 1),
    "frames": int_range(2, MAX_SIZE),
    "num_steps": int_range(1, MAX_STEPS),
    "sample_steps": int_range(1, MAX_STEPS),
    "first_seed": SEED, "seed": SEED, "noise_seed": SEED, "seeds": each(SEED, 1),
    "shift": number(0, MAX_SHIFT, lo_open=True),
    "steps": Rule(lambda x: 1 <= x <= MAX_STEPS if isinstance(x, int) else is_index_spec(x),
                  f"a number of steps from 1 to {MAX_STEPS}, or a step selection like 'all', '0-9,19', '0-19:2'"),
    "layers": INDEX_SPEC, "inject_steps": INDEX_SPEC, "patch_steps": INDEX_SPEC, "cka_steps": INDEX_SPEC,
    "frames_to_noise": INDEX_SPEC, "videos": INDEX_SPEC,
    "pooling": Rule(is_pooling, "'none', 'frame', 'spatial:K' (K >= 1) or 'random:K[:SEED]'"),
    "dtype": choice("float16", "float32"),
    "torch_dtype": choice("float32", "bfloat16", "float16"),
    "backend": choice("nnsight", "hooks"),
    "branch": choice("cond", "uncond"),
    "task": choice("maze"),
    "sub": choice("attn1", "attn2", "ffn"),
    "subs": each(choice("attn1", "attn2", "ffn")),
    "direction": choice("denoising", "noising"),
    "metric": choice("maze", "latent"),
    "span": choice("step", "onward"),
    "other": Rule(lambda x: x == "rewired" or bool(re.fullmatch(r"[+-]?\d+", x)),
                  "'rewired' or a seed offset like '1000' or '-1000'"),  # fmt: skip
    "merges": each(choice("mean", "rescaled", "x0"), 1),
    "scores": each(Rule(lambda x: x in ("verifier", "connectivity") or bool(_FUNCTION.fullmatch(x)),
                        "'verifier', 'connectivity' or module:function"), 1),  # fmt: skip
    "ks": each(int_range(1, MAX_STEPS), 1),
    "temperatures": each(number(0, lo_open=True), 1),
    "strength": number(0, 1),
    "batch_size": int_range(1, 65536),
    "max_batch": int_range(1),
    "min_branches": int_range(1),
    "superposition_share": SHARE, "formed_share": SHARE,
    "superposition_extra": int_range(0),
    "threshold": number(0, lo_open=True),
    "video": int_range(0), "step": int_range(0),
    "height": int_range(1, MAX_PIXELS), "width": int_range(1, MAX_PIXELS), "num_frames": int_range(1, 4096),
    "max_sequence_length": int_range(1, 65536),
    "guidance_scale": number(0),
    "true_cfg_scale": number(0),
    "max_frames": int_range(1, 4096),
    "method": choice("fast", "sklearn"),
    "test_fraction": number(0, 1, lo_open=True, hi_open=True),
    "folds": int_range(2, 100),
    "cs": each(number(0, lo_open=True), 1), "alphas": each(number(0, lo_open=True), 1),
    "tol": number(0, lo_open=True), "max_iter": int_range(1), "patience": int_range(0), "group": int_range(1),
    "name": NAME, "probes": NAME,
    "max_tokens": int_range(1), "control_condition_types": int_range(1, 256),
    "scorer_timeout": number(0, MAX_SCORER_TIMEOUT, lo_open=True),
    "lr": number(0, lo_open=True), "min_lr_ratio": number(0, 1), "warmup": int_range(0),
    "weight_decay": number(0), "ema_decay": number(0, 1), "grad_clip": number(0, lo_open=True),
    "checkpoint_every": int_range(1), "eval_every": int_range(1), "eval_mazes": int_range(0),
    "size_weights": each(number(0)),
}
# Where a field of a class means something else, the class says so itself: a class attribute
# ``field_rules`` (a dict of field name -> Rule) overrides these for that class and its subclasses.


def _describe(annotation) -> str:
    """What a type annotation accepts, in words."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        words = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict or annotation is dict:
        return "an object"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


@cache
def _model(cls: type) -> type[pydantic.BaseModel]:
    hints = typing.get_type_hints(cls)
    spec = {f.name: (hints[f.name], ...) for f in fields(cls)}
    config = pydantic.ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)
    return pydantic.create_model(f"{cls.__name__}Fields", __config__=config, **spec)


def _label(cls: type) -> str:
    return getattr(cls, "experiment", None) if isinstance(getattr(cls, "experiment", None), str) else cls.__name__


def _defaults(cls: type) -> dict:
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def plain(value):
    """numpy scalars and paths as the Python values a JSON config holds (a notebook passes both)."""
    import numpy as np

    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def check_fields(cls: type, data: dict, where: str = "") -> None:
    """Raise one UsageError for the first field of ``data`` (defaults filled in) that ``cls`` does not allow."""
    where = where or _label(cls)
    if not isinstance(data, dict):
        raise UsageError(f"{where}: a config must be a JSON object of fields, got {type(data).__name__}")
    data = plain(data)
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    values = {**_defaults(cls), **data}
    missing = sorted(allowed - set(values))
    if missing:
        raise UsageError(f"{where}: field {missing[0]!r} is required")
    hints = typing.get_type_hints(cls)
    try:
        _model(cls).model_validate(values)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0])
        allowed = _describe(hints[name]) + (" (no NaN or Inf)" if first["type"] == "finite_number" else "")
        raise UsageError(f"{where}: {name} must be {allowed}, got {_show(values[name])}") from None
    rules = {**RULES, **getattr(cls, "field_rules", {})}
    for name, value in values.items():
        rule = rules.get(name)
        if rule is not None and value is not None and not rule.check(value):
            raise UsageError(f"{where}: {name} must be {rule.allowed}, got {_show(value)}")


def _show(value) -> str:
    text = repr(value)
    return (text[:60] + "...") if len(text) > 60 else text


def build(cls: type, data: dict, where: str = ""):
    """A config of ``cls`` from ``data``, every field checked first (nothing is constructed from bad input)."""
    check_fields(cls, data, where)
    return cls(**plain(data))


def check(cfg) -> None:
    """Check an already constructed config (e.g. one a command made from its options)."""
    if not is_dataclass(cfg):
        raise TypeError(f"not a config dataclass: {type(cfg).__name__}")
    for f in fields(cfg):  # kept as plain values, so the config saves as JSON
        value = getattr(cfg, f.name)
        if (kept := plain(value)) is not value:
            object.__setattr__(cfg, f.name, kept)
    check_fields(type(cfg), {f.name: getattr(cfg, f.name) for f in fields(cfg)})


def check_threads(threads: int) -> int:
    if not int_range(1, MAX_THREADS).check(threads):
        raise UsageError(f"--threads must be an integer from 1 to {MAX_THREADS}, got {threads}")
    return threads


def parse_labels(items: list[str]) -> dict[str, str]:
    """``NAME=FILE.npy`` options to a dict; each NAME once, FILE an existing .npy file."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise UsageError(f"--labels takes NAME=FILE.npy, got {item!r}")
        if key in out:
            raise UsageError(f"--labels {key} is given twice ({out[key]} and {path}); each name once")
        if not NAME.check(key):
            raise UsageError(f"--labels NAME must be {NAME.allowed}, got {key!r}")
        if Path(path).suffix != ".npy" or not Path(path).is_file():
            raise UsageError(f"--labels {key}: {path} is not a .npy file")
        out[key] = path
    return out


def nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(path: str | Path, kind: str = "folder", flag: str = "--out") -> None:
    """Refuse, before compute, an output place that cannot be made or written: a file on the way to it, a
    folder where a file belongs (or the reverse), or a place without write permission or on a read-only
    filesystem (a probe file is created and removed, so root and read-only mounts are caught alike)."""
    path = Path(path)
    if path.exists():
        if kind == "folder" and not path.is_dir():
            raise UsageError(f"{flag} {path}: is a file, not a folder")
        if kind == "file" and path.is_dir():
            raise UsageError(f"{flag} {path}: is a folder; give a file path")
    base = nearest_existing(path.parent if kind == "file" and not path.is_dir() else path)
    if not base.is_dir():
        raise UsageError(f"{flag} {path}: cannot be created, {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: no permission to write in {base}")
    try:
        with tempfile.TemporaryFile(dir=base, prefix=".interp-write-probe-"):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write in {base} ({err.strerror or err})") from None
