"""Linear probes per (denoising step, layer) over an activation store, with controls.

``run``: a probing run as data (``ProbeConfig`` -> a tidy table of every score beside its controls
and 95% bootstrap intervals over test videos; ``run_probes`` also writes it into the store, where
``read_results`` finds it; labels by a task's provider, ``.npy`` files or arrays in memory);
``arrays``: one probe fitted on arrays (``fit_probe``, ``fit_probe_on_store``) with its weights in
raw feature space, saved as safetensors and reusable as a steering direction; ``labels``: what a
probe reads out; ``masks``: pixel masks brought to the stored token grid; ``features``: token
features and the controls' inputs; ``fit``: the batched fast path; ``reference``: the
scikit-learn loop it is checked against; ``budget`` / ``streaming``: probes under a token budget;
``intervals``: the bootstrap; ``summary``: best cells and targets the inputs already decode;
``plots``: the figures. This package imports ``activations`` only, never ``interp``, so a store
made on a GPU cluster can be probed on a laptop.
"""

from probes.arrays import Probe, fit_probe, fit_probe_on_store
from probes.run import ProbeConfig, read_results, run_probes, save_results

__all__ = ["Probe", "ProbeConfig", "fit_probe", "fit_probe_on_store", "read_results", "run_probes", "save_results"]
