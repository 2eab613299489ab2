"""Linear probes per (denoising step, layer) over an activation store, with controls.

Not built yet (issue 3). This package may import ``activations`` only, never ``interp``, so a
store made on a GPU cluster can be probed on a laptop.
"""
