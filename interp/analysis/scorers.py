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
from contextlib import contextmanager

import numpy as np


class ScorerError(ValueError):
    """A scorer that did not answer with a finite number."""


class Scorer:
    def __init__(self, spec: str, function, timeout: float | None = None):
        self.spec, self.function, self.timeout = spec, function, timeout

    def __call__(self, frames: np.ndarray, what: str = "a video") -> float:
        """The score of ``frames``; ``what`` names the sample in an error."""
        try:
            with _time_limit(self.timeout, f"--scorer {self.spec} took longer than {self.timeout} s on {what}"):
                value = self.function(frames)
        except ScorerError:
            raise
        except SystemExit as err:  # the scorer tried to end the program: an error, never an answer
            raise ScorerError(f"--scorer {self.spec} called sys.exit({err.code!r}) on {what}") from None
        except Exception as err:  # noqa: BLE001 - any failure of user code is reported as that scorer's
            message = " ".join(str(err).split()) or "no message"
            raise ScorerError(f"--scorer {self.spec} failed on {what}: {type(err).__name__}: {message}") from err
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


@contextmanager
def _time_limit(seconds: float | None, message: str):
    """SIGALRM-bounded block (Unix, main thread); elsewhere the limit is not enforced."""
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(_signum, _frame):
        raise ScorerError(message)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_scorer(spec: str, timeout: float | None = None) -> Scorer:
    """``module:function``: a Python function of decoded frames (T, H, W, 3) uint8 returning a number;
    ``timeout``: seconds one call may take (None: no limit)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"--scorer takes module:function, got {spec!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
        raise ValueError(f"--scorer-timeout must be a positive number of seconds, got {timeout!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except SystemExit as err:
        raise ValueError(f"--scorer {spec}: importing it called sys.exit({err.code!r})") from None
    except Exception as err:  # noqa: BLE001 - a module that fails on import, in any way
        raise ValueError(f"--scorer {spec}: cannot import it ({type(err).__name__}: {err})") from err
    if not callable(fn):
        raise ValueError(f"--scorer {spec}: not a function")
    return Scorer(spec, fn, timeout)
