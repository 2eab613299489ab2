"""Sparse autoencoders per (denoising step, layer), trained from an activation store with the field's library
(SAELens), saved in its on-disk format, and measured on held-out videos (issue 31)."""
