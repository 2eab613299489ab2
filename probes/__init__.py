"""Linear probes per (denoising step, layer) over an activation store, with controls.

``run``: a probing run as data (``ProbeConfig`` -> a tidy table, also written into the store);
``labels``: what a probe reads out (a task's label provider, a user's arrays or ``.npy`` files);
``features``: token features and the controls' inputs; ``fit``: the batched fast path;
``reference``: the scikit-learn loop it is checked against; ``plots``: heatmaps.
This package imports ``activations`` only, never ``interp``, so a store made on a GPU cluster can be
probed on a laptop.
"""
