"""Mechanistic interpretability of video diffusion transformers.

The Python API is ``interp.api`` (its names are also importable from ``interp`` itself, loaded on
first use so that ``import interp.tasks`` stays light): ``open_model``, ``inputs`` (any model's
samples, as the commands make them), ``maze_inputs``, ``run`` (a
cache of named sites), interventions ``copy_from``, ``zero``, ``mean``, ``add_direction`` and
``Intervention``, ``block`` (site names) and ``frame_tokens``. Stores are read with
``activations.ActivationStore`` (``to_xarray``), probes fitted with ``probes.run_probes`` (tables,
written into the store) or ``probes.arrays.fit_probe`` (one probe from arrays, weights saved).
See ``notebooks/04_python_api.ipynb``.
"""

_API = {
    "Intervention", "Run", "add_direction", "block", "copy_from", "frame_tokens", "inputs", "knockout",
    "maze_inputs", "mean", "open_model", "run", "zero",
}  # fmt: skip


def __getattr__(name: str):
    if name in _API:
        from interp import api

        return getattr(api, name)
    raise AttributeError(f"module 'interp' has no attribute {name!r}")
