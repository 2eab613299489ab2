"""The ``interp`` script: Ctrl-C at any moment, the start-up imports included, ends with one line
(exit 130), never a traceback. Kept free of heavy imports so the handler is in place first.

A Ctrl-C that lands inside a garbage-collection callback or a ``__del__`` is swallowed by Python
("Exception ignored in ...", and the run goes on); the unraisable hook here hands it back to the
main thread instead, so the command still stops."""

import sys


def _redeliver_interrupts(unraisable) -> None:
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        import _thread
        import threading

        # Raised again in the main thread once the callback has returned (from another thread, a
        # moment later: raised here it would land in this hook and be swallowed again).
        threading.Timer(0.01, _thread.interrupt_main).start()
        return
    sys.__unraisablehook__(unraisable)


def main() -> None:
    sys.unraisablehook = _redeliver_interrupts
    try:
        from interp.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        _interrupted()
    except Exception as err:  # an interrupt that Python wrapped on its way out (e.g. in a class's __set_name__)
        if _caused_by_interrupt(err):
            _interrupted()
        raise


def _interrupted() -> None:
    sys.stderr.write("\ninterp: interrupted\n")
    sys.exit(130)


def _caused_by_interrupt(err: BaseException) -> bool:
    seen = 0
    while err is not None and seen < 20:
        if isinstance(err, KeyboardInterrupt):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False
