import pytest


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--size", "1"], "size must be an integer from 2 to 64, got 1"),
        (["generate", "--frames", "0"], "num_frames must be an integer from 1 to 4096, got 0"),
        (["generate", "--frames", "1"], "num_frames must be from 2 to 64 for a maze model, got 1"),
        (["generate", "--steps", "0"], "num_steps must be an integer from 1 to 1000, got 0"),
        (["generate", "--task", "sudoku"], "task must be one of 'maze', got 'sudoku'"),
        (["generate", "--model", "/nonexistent/weights"], "not a shipped testbed (testbed, testbed-mixed), a folder"),
        (["evaluate", "-n", "0"], "n must be an integer from 1 to"),
        (["trace", "--layers", "99"], "layer 99 is out of range"),
        (["trace", "--steps", "0-20"], "step 20 is out of range"),
        (["trace", "--pooling", "mean"], "pooling must be 'none'"),
        (["trace", "--dtype", "int8"], "dtype must be one of 'float16', 'float32'"),
        (["energy", "/nonexistent/store.h5"], "no activation store"),
    ],
)
def test_impossible_arguments_give_one_clear_line(run_cli, args, message):
    code, _, err = run_cli(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interp: error:") and message in lines[0]
    assert "Traceback" not in err


def test_what_validation_missed_is_one_line_with_a_hint_and_debug_shows_the_traceback(run_cli, tmp_path, monkeypatch):
    from interp.report import html

    def broken(*_args, **_kwargs):  # a defect in the toolkit itself, not in the user's input
        raise TypeError("an internal error\nsecond line")

    monkeypatch.setattr(html, "write_report", broken)
    code, _, err = run_cli("report", tmp_path)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "rerun with --debug" in lines[0] and "Traceback" not in err
    with pytest.raises(TypeError):
        run_cli("report", tmp_path, "--debug")


def test_a_damaged_manifest_is_named_in_the_report_not_a_crash(run_cli, tmp_path):
    (tmp_path / "run.json").write_text('{"kind": "x"}')  # fields missing
    code, out, err = run_cli("report", tmp_path)
    assert code == 0, err
    page = (tmp_path / "report.html").read_text()
    assert "Unreadable run manifests" in page and "run.json: missing field &#x27;title&#x27;" in page


def test_every_experiment_command_is_made_from_its_config():
    """One factory: every registered experiment's command is generated from its config (options, --config,
    --out, --threads, --dry-run); only what is not an experiment is written out."""
    import inspect

    from interp.cli import app
    from interp.cli_options import add_experiment_commands
    from interp.experiments.base import experiments

    add_experiment_commands(app)
    commands = {c.name or c.callback.__name__: c.callback for c in app.registered_commands}
    generated = {name for name, fn in commands.items() if "config" in inspect.signature(fn).parameters}
    assert set(commands) - generated == {"report", "demo", "verify"}  # what is not an experiment
    groups = {g.name: g.typer_instance for g in app.registered_groups}
    for kind, experiment in experiments().items():
        if experiment.command:  # a command of a group: ``interp sae train``
            group, name = experiment.command
            command = next(c.callback for c in groups[group].registered_commands if c.name == name)
        else:
            command = commands[kind]
        params = inspect.signature(command).parameters
        assert {"config", "out", "threads", "dry_run"} <= set(params), kind


def test_a_saved_config_reruns_the_same_command(run_cli, tmp_path):
    """`--config run.json` reruns what a command wrote, for a command with old spellings of its own
    (generate: --noise-seed) and one with options beyond its config (trace: --queue-mb); a testbed config
    written while every source recorded 226 prompt tokens still reads."""
    import json

    from interp.experiments.patch import PatchConfig

    code, _, err = run_cli("generate", "--seed", 7, "--steps", "4", "--out", tmp_path / "g")
    assert code == 0, err
    code, _, err = run_cli("generate", "--config", tmp_path / "g" / "run.json", "--out", tmp_path / "g2")
    assert code == 0, err
    gifs = [sorted(p.relative_to(tmp_path / k).as_posix() for p in (tmp_path / k).rglob("*.gif")) for k in ("g", "g2")]
    assert gifs[0] and gifs[0] == gifs[1]
    code, _, err = run_cli("trace", "-n", 1, "--layers", "0", "--steps", "0", "--queue-mb", 64,
                           "--out", tmp_path / "a.h5")  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli("trace", "--config", tmp_path / "a.h5.run.json", "--out", tmp_path / "b.h5")
    assert code == 0, err
    old = json.loads((tmp_path / "g" / "run.json").read_text())["config"]
    old["max_sequence_length"] = 226  # what every config recorded before the pipeline's own default
    PatchConfig.from_dict({"experiment": "patch", "max_sequence_length": 226}).check(pipeline=False)
    saved = _write(tmp_path / "old.json", {"config": old})
    code, _, err = run_cli("generate", "--config", saved, "--out", tmp_path / "g3")
    assert code == 0, err


def _write(path, record):
    import json

    path.write_text(json.dumps(record))
    return path
