"""A user's scorer (``module:function`` of decoded frames (T, H, W, 3) uint8 -> a number), called so
that nothing it does can pass for an answer: an exception, ``SystemExit`` (a scorer that calls
``sys.exit``), a result that is not a finite real number, or a call past the time limit ends the
command with one line naming the scorer and the sample. ``KeyboardInterrupt`` passes through."""

from __future__ import annotations

import importlib
import math
import numbers
import signal
import threading
from pathlib import Path

import numpy as np

from interp.validation import MAX_SCORER_TIMEOUT as MAX_TIMEOUT


class ScorerError(ValueError):
    """A scorer that did not answer with a finite number."""


class _Expired(BaseException):
    """Raised into a scorer at its time limit: a BaseException, so ``except Exception`` in user code
    does not turn the limit into an answer (and an expiry it swallows anyway is still seen: ``expired``)."""


class Scorer:
    needs_sample = False  # a built-in that reads the sample's truth (``maze``) sets this

    def __init__(self, spec: str, function, timeout: float | None = None):
        self.spec, self.function, self.timeout = spec, function, timeout

    def __call__(self, frames: np.ndarray, what: str = "a video", sample: Path | None = None) -> float:
        """The score of ``frames``; ``what`` names the sample in an error; ``sample``: its folder (what a
        built-in such as ``maze`` reads its truth from; a user's ``module:function`` gets frames only)."""
        late = ScorerError(f"--scorer {self.spec} took longer than {self.timeout or 0:g} s on {what}")
        limit = _TimeLimit(self.timeout)
        try:
            with limit:
                value = self.function(frames, sample) if self.needs_sample else self.function(frames)
        except _Expired:
            raise late from None
        except SystemExit as err:  # the scorer tried to end the program: an error, never an answer
            raise ScorerError(f"--scorer {self.spec} called sys.exit({err.code!r}) on {what}") from None
        except Exception as err:  # noqa: BLE001 - any failure of user code is reported as that scorer's
            message = " ".join(str(err).split()) or "no message"
            if limit.expired:  # the expiry surfaced as another exception (e.g. re-raised by user code)
                raise late from None
            raise ScorerError(f"--scorer {self.spec} failed on {what}: {type(err).__name__}: {message}") from err
        if limit.expired:  # the scorer swallowed the expiry and answered anyway: not an answer
            raise late
        return _number(value, f"--scorer {self.spec} on {what}")


def _number(value, where: str) -> float:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ScorerError(f"{where}: returned {type(value).__name__}, not a number")
    if not math.isfinite(float(value)):
        raise ScorerError(f"{where}: returned {value}, not a finite number")
    return float(value)


class _TimeLimit:
    """SIGALRM-bounded block (Unix, main thread); elsewhere the limit is not enforced. A call stuck in
    C code is interrupted when it returns to Python."""

    def __init__(self, seconds: float | None):
        self.seconds, self.expired, self._previous = seconds, False, None
        main = threading.current_thread() is threading.main_thread()
        self.usable = bool(seconds) and hasattr(signal, "setitimer") and main

    def _expire(self, _signum, _frame):
        self.expired = True
        raise _Expired

    def __enter__(self):
        if self.usable:
            self._previous = signal.signal(signal.SIGALRM, self._expire)
            try:
                signal.setitimer(signal.ITIMER_REAL, float(self.seconds))
            except BaseException:
                signal.signal(signal.SIGALRM, self._previous)
                raise
        return self

    def __exit__(self, *exc):
        if self.usable:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
        return False


class MazeScorer(Scorer):
    """``--scorer maze``: the maze verifier on decoded frames of any size, against the sample folder's
    ``maze.json`` (``interp data maze``): 1 solved, 0 not."""

    needs_sample = True

    def __init__(self, timeout: float | None = None):
        super().__init__("maze", self._score, timeout)
        self._mazes: dict[Path, object] = {}

    def _score(self, frames: np.ndarray, sample: Path | None) -> float:
        from interp.tasks.maze_data import maze_score, read_maze

        if sample is None:
            raise ValueError("the maze scorer needs the sample's folder (its maze.json): samples read with --data")
        if sample not in self._mazes:
            self._mazes[sample] = read_maze(sample)
        return maze_score(frames, self._mazes[sample])


BUILT_IN = {"maze": MazeScorer}


def load_scorer(spec: str, timeout: float | None = None) -> Scorer:
    """``module:function``: a Python function of decoded frames (T, H, W, 3) uint8 returning a number,
    or a built-in (``maze``); ``timeout``: seconds one call may take (None: no limit)."""
    if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout <= MAX_TIMEOUT):
        raise ValueError(f"--scorer-timeout must be a positive number of seconds, at most {MAX_TIMEOUT:g}: {timeout!r}")
    if spec in BUILT_IN:
        return BUILT_IN[spec](timeout)
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"--scorer takes module:function or one of {', '.join(BUILT_IN)}, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except SystemExit as err:
        raise ValueError(f"--scorer {spec}: importing it called sys.exit({err.code!r})") from None
    except Exception as err:  # noqa: BLE001 - a module that fails on import, in any way
        raise ValueError(f"--scorer {spec}: cannot import it ({type(err).__name__}: {err})") from err
    if not callable(fn):
        raise ValueError(f"--scorer {spec}: not a function")
    return Scorer(spec, fn, timeout)
