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


def test_demo_writes_every_artefact(tmp_path, run_cli):
    out = tmp_path / "demo"
    args = ["--n-filmstrips", 1, "--n-accuracy", 8, "--n-trace", 8, "--probe-target", "on_path"]
    code, stdout, err = run_cli("demo", "--out", out, *args)
    assert code == 0, err
    assert "held-out 4x4 mazes:" in stdout and "probe on_path: best selectivity" in stdout
    for path in (
        "maze4_seed0/filmstrip.png",
        "accuracy.json",
        "trace.h5",
        "probes/probes.csv",
        "probes/probe_on_path.png",
        "chain/chain.json",
        "chain/chain.png",
    ):
        assert (out / path).is_file(), path
    assert list(out.glob("energy_step*/*.png"))
