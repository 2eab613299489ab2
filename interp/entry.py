"""The ``interp`` script: Ctrl-C at any moment, the start-up imports included, ends with one line
(exit 130), never a traceback. Kept free of heavy imports so the handler is in place first."""

import sys


def main() -> None:
    try:
        from interp.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("\ninterp: interrupted\n")
        sys.exit(130)
