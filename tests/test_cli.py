import sys

import pytest

from interp import cli


def _run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["interp", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code, capsys.readouterr()


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--size", "1"], "--size must be at least 2"),
        (["generate", "--frames", "0"], "--frames must be at least 2"),
        (["generate", "--steps", "0"], "--steps must be at least 1"),
        (["generate", "--task", "sudoku"], "unknown task 'sudoku'"),
        (["generate", "--model", "/nonexistent/weights"], "no such folder"),
        (["evaluate", "-n", "0"], "-n must be at least 1"),
    ],
)
def test_impossible_arguments_give_one_clear_line(monkeypatch, capsys, args, message):
    code, captured = _run(monkeypatch, capsys, *args)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interp: error:") and message in lines[0]
    assert "Traceback" not in captured.err
