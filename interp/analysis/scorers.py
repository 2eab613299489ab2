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

import numpy as np

MAX_TIMEOUT = 1e6  # seconds (11.6 days): what setitimer takes on every platform


class ScorerError(ValueError):
    """A scorer that did not answer with a finite number."""


class _Expired(BaseException):
    """Raised into a scorer at its time limit: a BaseException, so ``except Exception`` in user code
    does not turn the limit into an answer (and an expiry it swallows anyway is still seen: ``expired``)."""


class Scorer:
    def __init__(self, spec: str, function, timeout: float | None = None):
        self.spec, self.function, self.timeout = spec, function, timeout

    def __call__(self, frames: np.ndarray, what: str = "a video") -> float:
        """The score of ``frames``; ``what`` names the sample in an error."""
        late = ScorerError(f"--scorer {self.spec} took longer than {self.timeout or 0:g} s on {what}")
        limit = _TimeLimit(self.timeout)
        try:
            with limit:
                value = self.function(frames)
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


def load_scorer(spec: str, timeout: float | None = None) -> Scorer:
    """``module:function``: a Python function of decoded frames (T, H, W, 3) uint8 returning a number;
    ``timeout``: seconds one call may take (None: no limit)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"--scorer takes module:function, got {spec!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout <= MAX_TIMEOUT):
        raise ValueError(f"--scorer-timeout must be a positive number of seconds, at most {MAX_TIMEOUT:g}: {timeout!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except SystemExit as err:
        raise ValueError(f"--scorer {spec}: importing it called sys.exit({err.code!r})") from None
    except Exception as err:  # noqa: BLE001 - a module that fails on import, in any way
        raise ValueError(f"--scorer {spec}: cannot import it ({type(err).__name__}: {err})") from err
    if not callable(fn):
        raise ValueError(f"--scorer {spec}: not a function")
    return Scorer(spec, fn, timeout)
