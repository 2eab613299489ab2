"""Causal interventions across denoising steps and layers.

``patching`` holds the one mechanism (replace named sites' outputs at chosen steps with those of
another run, starting from a cached latent); ``experiments`` the study's experiments as config
objects that serialise to JSON (activation patching, latent swapping, noise at step vs at frame,
information flow); ``plots`` their figures.
"""
