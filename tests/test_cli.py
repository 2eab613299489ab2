import pytest


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--size", "1"], "--size must be at least 2"),
        (["generate", "--frames", "0"], "--frames must be at least 2"),
        (["generate", "--steps", "0"], "--steps must be at least 1"),
        (["generate", "--task", "sudoku"], "unknown task 'sudoku'"),
        (["generate", "--model", "/nonexistent/weights"], "no such folder"),
        (["evaluate", "-n", "0"], "-n must be at least 1"),
        (["trace", "--layers", "99"], "layer 99 is out of range"),
        (["trace", "--steps", "0-20"], "step 20 is out of range"),
        (["trace", "--pooling", "mean"], "bad pooling"),
        (["trace", "--dtype", "int8"], "--dtype must be float16 or float32"),
        (["energy", "/nonexistent/store.h5"], "no activation store"),
    ],
)
def test_impossible_arguments_give_one_clear_line(run_cli, args, message):
    code, _, err = run_cli(*args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interp: error:") and message in lines[0]
    assert "Traceback" not in err
