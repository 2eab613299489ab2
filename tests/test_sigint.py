"""Ctrl-C: during start-up or mid-trace, the command ends with one line (exit 130), no traceback,
and the store it was writing is resumable: the same command finishes it. ``--quiet`` and
``TQDM_DISABLE=1`` hide every progress bar."""

import signal
import subprocess
import sys
import time
from pathlib import Path

INTERP = [str(Path(sys.executable).parent / "interp")]


def _interrupt(cmd: list[str], when) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not when() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    started = time.monotonic()
    code, err = _interrupt([*INTERP, "trace", "-n", "4", "--out", str(tmp_path / "t.h5")],
                           lambda: time.monotonic() - started > 0.4)  # fmt: skip
    assert code == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "interp: interrupted"


def test_ctrl_c_mid_trace_leaves_a_resumable_store(tmp_path):
    from activations import ActivationStore

    store = tmp_path / "t.h5"
    cmd = [*INTERP, "trace", "-n", "24", "--batch-size", "4", "--layers", "0", "--steps", "0,5", "--out", str(store)]
    parts = tmp_path / "t.h5.parts"
    code, err = _interrupt(cmd, lambda: store.is_file() and parts.is_dir() and any(parts.glob("part_*.h5")))
    assert code == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "interp: interrupted"
    with ActivationStore(store) as s:  # readable, listing what finished
        assert len(s.completed_videos) < 24
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with ActivationStore(store) as s:
        assert s.completed_videos == list(range(24))


def test_quiet_and_tqdm_disable_hide_every_progress_bar(tmp_path):
    import os

    cmd = [*INTERP, "trace", "-n", "2", "--layers", "0", "--steps", "0", "--out"]
    loud = subprocess.run([*cmd, str(tmp_path / "a.h5")], capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0 and "it/s" in loud.stderr  # the bar the others must hide
    quiet = subprocess.run([*cmd, str(tmp_path / "b.h5"), "--quiet"], capture_output=True, text=True, timeout=300)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    by_env = subprocess.run([*cmd, str(tmp_path / "c.h5")], capture_output=True, text=True, timeout=300, env=env)
    for done in (quiet, by_env):
        assert done.returncode == 0 and "it/s" not in done.stderr and "%|" not in done.stderr, done.stderr


def test_a_ctrl_c_swallowed_by_a_garbage_collection_callback_still_stops_the_command():
    """Python prints "Exception ignored" for a KeyboardInterrupt raised inside a weakref callback and
    goes on; the entry point's hook hands it back to the main thread."""
    import weakref

    import pytest

    from interp.entry import _redeliver_interrupts

    class Thing:
        pass

    def interrupted(_ref):
        raise KeyboardInterrupt

    previous = sys.unraisablehook
    sys.unraisablehook = _redeliver_interrupts
    try:
        with pytest.raises(KeyboardInterrupt):
            thing = Thing()
            ref = weakref.ref(thing, interrupted)  # noqa: F841 - kept alive so its callback runs
            del thing  # the callback raises; Python would swallow it
            for _ in range(10_000_000):  # the interrupt arrives at the next check of the main thread
                pass
    finally:
        sys.unraisablehook = previous


def test_an_interrupt_python_wrapped_during_start_up_is_still_an_interrupt():
    """A Ctrl-C inside a class's ``__set_name__`` (torch's imports create such classes) reaches the script as a
    RuntimeError caused by the KeyboardInterrupt: it still ends as one line, exit 130."""
    from interp.entry import _caused_by_interrupt

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise RuntimeError("Error calling __set_name__") from interrupt
    except RuntimeError as wrapped:
        assert _caused_by_interrupt(wrapped)
    assert not _caused_by_interrupt(ValueError("a bad input"))
