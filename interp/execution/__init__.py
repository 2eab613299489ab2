"""Execution: the one sampling loop (``loop``), the one call runner with per-site save / replace
functions (``runner``), and its users: capture into a store (``capture``), run recording and
patching (``patching``)."""
