"""The CLI commands of registered experiments, made from their config dataclasses.

Every field becomes an option (``--field-name``; flags and help from the config's ``cli_help`` /
``cli_flags``; ``cli_hidden`` fields keep their defaults), plus ``--config`` (rerun a saved config), ``--out``
and ``--threads``; a config over a source (``interp.sources.SourceConfig``) thereby takes ``--model``,
``--data``, ``--samples`` and the sampling options of every family. A new experiment gets its command by
registering.
"""

from __future__ import annotations

import functools
import inspect
import time
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import typer

from interp.experiments.base import Experiment, experiments, load_config
from interp.plans import show
from interp.reader_plans import READERS
from interp.validation import UsageError, build, check_output, check_threads


def split_names(items: list[str]) -> list[str] | None:
    """Names given as repeated options or ``A,B`` (None: none given)."""
    return [x for item in items for x in item.split(",") if x] or None


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(check_threads(threads))


def _option(name: str, annotation, default, help_text: str, flags=None) -> inspect.Parameter:
    flag = name.replace("_", "-")
    flags = tuple(flags or ((f"--{flag}/--no-{flag}",) if annotation is bool else (f"--{flag}",)))  # a bool: both ways
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(default, *flags, help=help_text),
        annotation=annotation,
    )


# Execution on Ray, for experiments whose run takes an ``executor`` (the causal sweeps); as ``interp trace``.
RAY_OPTIONS = {
    "ray": (bool, False, "Spread the units of work (videos, start steps, variants) over Ray workers (pip install "
                         "'.[ray]')."),
    "ray_address": (str | None, None, "With --ray: a running cluster; default a local instance."),
    "workers": (int, 2, "With --ray and no address: workers of the local instance."),
    "threads_per_worker": (int, 1, "With --ray: CPU threads (and Ray CPUs) per worker."),
}


def ray_executor(values: dict):
    """None (this process) or a ``RayExecutor`` from the --ray options; nothing imports ray here."""
    if not values["ray"]:
        return None
    from interp.experiments.executors import RayExecutor

    if values["workers"] < 1 or values["threads_per_worker"] < 1:
        raise UsageError("--workers and --threads-per-worker must be at least 1")
    return RayExecutor(values["ray_address"], values["workers"], values["threads_per_worker"])


def _argument(name: str, help_text: str) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=typer.Argument(..., help=help_text),
                             annotation=Path)  # fmt: skip


def make_command(experiment: Experiment):
    """A typer command for a registered experiment: every config field an option (``cli_flags``, ``cli_help``;
    ``cli_arguments``: positional; ``cli_hidden``: kept at its default; ``cli_parse``: text -> value), the
    experiment's own options (``Experiment.options``, handed to its run and plan), ``--config``, ``--out``,
    ``--threads``, Ray's options where its run takes an executor, and ``--dry-run`` (the plan, then exit 0)."""
    cls = experiment.config
    hints = typing.get_type_hints(cls)
    helps, flags = getattr(cls, "cli_help", {}), getattr(cls, "cli_flags", {})
    arguments, parsers = getattr(cls, "cli_arguments", ()), getattr(cls, "cli_parse", {})
    names = [f.name for f in fields(cls) if f.name not in getattr(cls, "cli_hidden", ())]
    params = [_argument(name, helps.get(name, "")) for name in arguments]
    for f in fields(cls):
        if f.name not in names or f.name in arguments:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        kind = hints[f.name]
        if f.name in parsers:  # given as text (repeatable), parsed into the field's value
            kind, default = list[str], []
        params.append(_option(f.name, kind, default, helps.get(f.name, ""), flags.get(f.name)))
    params += [
        _option("config", Path | None, None, "Rerun from a saved config.json or run.json (other options ignored)."),
        _option("out", Path, Path(experiment.out or f"runs/{experiment.kind}" + (".h5" if experiment.out_file else "")),
                "Output file." if experiment.out_file else "Output folder."),
        _option("threads", int, 2, "CPU threads for torch."),
        *[_option(name, *spec) for name, spec in {**experiment.options, **experiment.old_options}.items()],
    ]  # fmt: skip
    takes_executor = "executor" in inspect.signature(experiment.run).parameters
    if takes_executor:
        params += [_option(k, t, d, h, ("--ray",) if k == "ray" else None) for k, (t, d, h) in RAY_OPTIONS.items()]
    params.append(DRY_RUN_OPTION)

    def command(**values) -> None:
        import torch

        dry_run = values.pop("dry_run")
        options = {name: values.pop(name) for name in experiment.options}
        old_options = {name: values.pop(name) for name in experiment.old_options}
        if values["config"] is not None:
            cfg = load_config(values["config"])
            if not isinstance(cfg, cls):
                raise UsageError(f"{values['config']} is a {cfg.experiment!r} config, not {experiment.kind!r}")
        else:
            if experiment.cli_values is not None:  # old spellings whose meaning depends on other options
                values = experiment.cli_values(dict(values), old_options)
            chosen = {k: values[k] for k in names}
            for f in fields(cls):  # a repeatable option given no value is the field's None ("all", "own")
                if f.default is None and chosen.get(f.name) == []:
                    chosen[f.name] = None
            for name in arguments:
                chosen[name] = str(chosen[name])
            for name, parse in parsers.items():
                chosen[name] = parse(chosen[name])
            if "samples" in chosen and chosen["samples"]:
                chosen["samples"] = split_names(chosen["samples"])
            if isinstance(chosen.get("data"), (str, Path)) and "data" in names:
                chosen["data"] = str(Path(chosen["data"]).resolve())  # recorded where it is, not where we were
            cfg = build(cls, chosen, experiment.kind)
        torch.set_num_threads(check_threads(values["threads"]))
        tic, out = time.time(), values["out"]
        check_output(out, "file" if experiment.out_file else "folder")
        run_options = {"out": out} if experiment.run_writes else {}
        if takes_executor:
            options["executor"] = ray_executor(values)
        from interp.plans import experiment_plan, show

        plan = experiment_plan(experiment.kind, cfg, out, **options)
        show(plan, typer.echo)
        if dry_run:
            return
        if plan.prepared is not None:  # built by the plan, gone on with by the run (built once)
            options["prepared"] = plan.prepared
            plan.prepared = None
        result = experiment.run(cfg, **run_options, **options)
        manifest = experiment.save(result, cfg, out)
        for line in experiment.summary(manifest):
            typer.echo(line)
        folder = Path(out).parent if experiment.out_file else Path(out)  # where the manifest's paths start
        for entry in manifest.files:
            typer.echo(f"  {entry.role}: {folder / entry.path}")
        typer.echo(f"[{time.time() - tic:.0f}s]")

    command.__signature__ = inspect.Signature(params)
    command._guarded = True  # it checks its own output and plan
    module = inspect.getmodule(experiment.run)
    command.__doc__ = ((module.__doc__ if module else None) or experiment.kind).split("\n\n")[0]
    command.__name__ = experiment.kind
    return command


def add_experiment_commands(app: typer.Typer) -> None:
    """A command for every registered experiment with ``cli=True`` that the app does not have yet, and
    ``verify`` (kept here: cli.py is at its size limit); then every command is guarded (``guard``)."""
    have = {c.name for c in app.registered_commands}
    if "verify" not in have:
        app.command("verify")(verify_command)
    for kind, experiment in experiments().items():
        words = experiment.command or (kind,)
        if not experiment.cli or (len(words) == 1 and kind in have):
            continue
        if len(words) == 1:
            app.command(kind)(make_command(experiment))
            continue
        group = _group(app, words[0])
        if words[1] not in {c.name for c in group.registered_commands}:
            group.command(words[1])(make_command(experiment))
        if experiment.group_default:
            GROUP_DEFAULTS[words[0]] = words[1]
    groups = [(None, app)] + [(g.name, g.typer_instance) for g in app.registered_groups]
    for group, sub in groups:
        for c in sub.registered_commands:
            name = c.name or c.callback.__name__
            c.callback = guard(f"{group} {name}" if group else name, c.callback)


GROUP_DEFAULTS: dict[str, str] = {}  # group -> the command ``interp GROUP ARGS`` runs (an older spelling)


def _group(app: typer.Typer, name: str) -> typer.Typer:
    """The command group ``name`` of ``app``, made on first use."""
    for g in app.registered_groups:
        if g.name == name:
            return g.typer_instance
    group = typer.Typer(no_args_is_help=True, help=f"interp {name} COMMAND: the {name} commands.")
    app.add_typer(group, name=name)
    return group


def _group_default(argv: list[str]) -> list[str]:
    """``interp GROUP ARGS`` where ARGS name none of the group's commands: the group's default command (e.g.
    ``interp sae STORE``, as before ``interp sae train STORE``)."""
    if len(argv) > 2 and argv[1] in GROUP_DEFAULTS and argv[2] not in ("--help", "-h"):
        from interp.experiments.base import experiments

        commands = {e.command[1] for e in experiments().values() if e.command[:1] == (argv[1],)}
        if argv[2] not in commands:
            return [*argv[:2], GROUP_DEFAULTS[argv[1]], *argv[2:]]
    return argv


DRY_RUN_OPTION = _option("dry_run", bool, False, "Print the plan (videos, steps, sites, disk, memory) only.",
                         ("--dry-run",))  # fmt: skip
OUTPUTS = ("out", "checkpoint", "export")


def file_output(fn):
    """A written-out command whose ``--out`` names a file, not a folder."""
    fn._file_output = True
    return fn


def guard(name: str, fn):
    """A written-out command that first checks its output places (``interp.validation.check_output``); a
    store or folder reader (``interp.reader_plans.READERS``) prints its plan first and takes ``--dry-run``.
    Generated commands check their own (``make_command``)."""
    if getattr(fn, "_guarded", False):
        return fn
    sig = inspect.signature(fn)
    reader = name in READERS
    if reader and "dry_run" not in sig.parameters:
        sig = sig.replace(parameters=[*sig.parameters.values(), DRY_RUN_OPTION])

    @functools.wraps(fn)
    def command(**values):
        dry_run = values.pop("dry_run", False) if reader else False
        for key in OUTPUTS:
            if values.get(key) is not None:
                check_output(values[key], "file" if getattr(fn, "_file_output", False) else "folder", "--" + key)
        if reader:
            show(READERS[name](values), typer.echo)
            if dry_run:
                return None
        return fn(**values)

    command.__signature__ = sig
    command._guarded = True
    return command


REPAIR_HELP = "Drop damaged or missing parts from the index (damaged files go to PARTS/damaged/); rerun to redo them."


def verify_command(
    store: Path = typer.Argument(..., help="An activation store (.h5)."),
    repair: bool = typer.Option(False, "--repair", help=REPAIR_HELP),
    checksums: bool = typer.Option(False, "--checksums", help="Also check every chunk and recorded SHA-256."),
) -> None:
    """Check every part of a store against its index: one line per damaged or missing part (exit 1)."""
    from activations.verify import repair_store, verify_store

    report = repair_store(store, checksums) if repair else verify_store(store, checksums)
    for line in report.lines():
        typer.echo(line)
    if not (report.ok or report.repaired):
        raise typer.Exit(1)


def _one_line(err: BaseException) -> str:
    """An error's message on one line (a message from a library or user code may span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def _silence_progress_bars() -> None:
    """``--quiet`` or ``TQDM_DISABLE=1``: no progress bar at all. tqdm reads its environment for defaults
    only, and the toolkit's bars pass ``disable=`` explicitly, so the flag is applied here, once."""
    from tqdm import std

    init = std.tqdm.__init__

    def quiet_init(self, *args, **kwargs):
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    std.tqdm.__init__ = quiet_init


def _end_progress_bars() -> None:
    """Clear the bars an error interrupted, so the error line starts on its own line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False  # closing erases the bar's line instead of printing it again
        bar.close()


def run_app(app: typer.Typer) -> None:
    """Run the CLI: a bad input is one ``interp: error:`` line (exit 2); anything else validation
    missed is one line with a hint (exit 1); ``--debug`` shows the traceback instead."""
    import os
    import sys

    add_experiment_commands(app)  # experiments registered after import (a user's own)
    debug = "--debug" in sys.argv
    if "--quiet" in sys.argv or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        _silence_progress_bars()
    sys.argv = _group_default([x for x in sys.argv if x not in ("--debug", "--quiet")])
    from typer._click import exceptions as click  # typer 0.29 vendors click (pinned in pyproject)
    from typer.exceptions import Abort

    try:
        code = app(standalone_mode=False)  # click's own usage errors come here too, to be one line
    except click.NoArgsIsHelpError as err:
        typer.echo(err.format_message())
        sys.exit(2)
    except click.ClickException as err:  # an option of the wrong type, an unknown option, a missing argument
        if debug:
            raise
        typer.echo(f"interp: error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except (Abort, KeyboardInterrupt):
        _end_progress_bars()
        typer.echo("interp: interrupted", err=True)
        sys.exit(130)
    except (UsageError, FileNotFoundError, ValueError) as err:
        if debug:
            raise
        _end_progress_bars()
        typer.echo(f"interp: error: {_one_line(err)}", err=True)
        sys.exit(2)
    except Exception as err:  # what validation missed: one line, the traceback on request
        if debug:
            raise
        from activations.schema import checksum_message, is_checksum_failure

        _end_progress_bars()
        if is_checksum_failure(err):  # a read outside the store's checked reads (e.g. streamed probes)
            typer.echo(f"interp: error: {checksum_message('STORE')}", err=True)
            sys.exit(2)
        typer.echo(f"interp: error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for the traceback)",
                   err=True)  # fmt: skip
        sys.exit(1)
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130, silently
        _end_progress_bars()
        typer.echo("interp: interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)
