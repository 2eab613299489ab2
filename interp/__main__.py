"""``python -m interp``: the same command line as the ``interp`` script."""

from interp.entry import main

if __name__ == "__main__":
    main()
