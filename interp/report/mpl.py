"""matplotlib's pyplot on the file-only Agg backend, imported on first use (figures are written, never shown)."""

from __future__ import annotations


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
