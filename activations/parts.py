"""One batch of videos being written into its own part file of a store (``StoreWriter.begin_part``): the
datasets a part holds, each step's slabs queued to the writer thread, and the publish on ``finish``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import h5py
import numpy as np

from activations.integrity import STORE_ID
from activations.schema import CHECKED, attention_dims, attention_shapes, part_path
from activations.slabs import SlabWriter, site_chunks
from activations.staging import NONFINITE_COLUMNS


class PartWriter:
    """One batch of videos being written; call ``finish`` when every step is in."""

    def __init__(self, store, videos: list[int]):  # store: the StoreWriter that owns the part
        self.store = store
        self.videos = videos
        lay = store.layout
        self._step_pos = {s: i for i, s in enumerate(lay.steps)}
        self._final_path = part_path(store.parts, videos)
        self._tmp_path = self._final_path.with_name(self._final_path.name + ".tmp")
        self._file: h5py.File | None = None
        self._slabs: dict[str, SlabWriter] = {}  # site -> writer; looking a dataset up by name costs ~0.5 ms
        b, n_s = len(videos), len(lay.steps)
        self._site_pos = {s: i for i, s in enumerate(lay.sites)}
        self._nonfinite = np.zeros((len(lay.sites), n_s, len(NONFINITE_COLUMNS)), dtype=np.int64)

        def create() -> None:
            store._open_parts.add(self)
            f = h5py.File(self._tmp_path, "w")
            f.attrs["video_indices"] = np.asarray(videos, dtype=np.int64)
            if store.store_id is not None:
                f.attrs[STORE_ID] = store.store_id
            for site in lay.sites:
                shape = (b, n_s, lay.n_tokens, lay.hidden[site])
                chunks = site_chunks(b, lay.n_tokens, lay.hidden[site], np.dtype(lay.dtype).itemsize)
                # NaN where a site did not run (Wan 2.2: each step runs one expert only)
                ds = f.create_dataset(f"sites/{site}", shape=shape, dtype=lay.dtype, chunks=chunks, fillvalue=np.nan,
                                      **CHECKED)  # fmt: skip
                self._slabs[site] = SlabWriter(ds)
            self._x0_hat = f.create_dataset("x0_hat", shape=(b, n_s, *lay.latent_shape), dtype=lay.dtype, **CHECKED)
            self._x_t = f.create_dataset("x_t", shape=(b, n_s, *lay.latent_shape), dtype=lay.dtype, **CHECKED)
            if lay.condition_shape is not None:
                f.create_dataset("condition", shape=(b, *lay.condition_shape), dtype=lay.dtype, fillvalue=np.nan,
                                 **CHECKED)  # fmt: skip
            f.create_dataset("final", shape=(b, *lay.latent_shape), dtype=lay.dtype, **CHECKED)
            for name, shape in attention_shapes(lay, b, n_s).items():  # NaN where a site did not run
                f.create_dataset(name, shape=shape, dtype=lay.dtype, fillvalue=np.nan, **CHECKED)
            self._file = f

        store.submit(create)

    def _position(self, step: int) -> int:
        if step not in self._step_pos:
            raise ValueError(f"step {step} is not among the store's steps {self.store.layout.steps}")
        return self._step_pos[step]

    def write_site(self, site: str, step: int, tokens, captured=None) -> None:
        """Tokens of ``site`` at denoising ``step`` for the whole batch: (batch, n_tokens, hidden).
        ``captured``: the values before pooling, where NaN / Inf / overflow are counted (default ``tokens``)."""
        lay = self.store.layout
        if site not in lay.hidden:
            raise ValueError(f"site {site!r} is not in the store (sites: {lay.sites})")
        expected = (len(self.videos), lay.n_tokens, lay.hidden[site])
        if tuple(tokens.shape) != expected:
            raise ValueError(f"{site} at step {step}: expected shape {expected}, got {tuple(tokens.shape)}")
        pos = self._position(step)
        counts = self.store.stager.count_nonfinite(tokens if captured is None else captured)
        slab = (self._site_pos[site], pos)

        def write(data: np.ndarray) -> None:
            self._slabs[site].write(pos, data)
            self._nonfinite[slab] = counts.array()
            counts.release()

        self.store.submit_array(tokens, write)

    def write_attention(self, site: str, step: int, stats: dict) -> None:
        """Attention statistics of ``site`` at ``step`` for the whole batch, (batch, heads, *dims) as
        ``schema.attention_dims`` names them."""
        pos = self._position(step)
        shapes = attention_shapes(self.store.layout, len(self.videos), 1)
        if f"attention/{site}/entropy" not in shapes:
            raise ValueError(f"the store keeps no attention statistics of {site!r}")
        for stat in attention_dims(self.store.layout, site):
            name = f"attention/{site}/{stat}"
            if tuple(stats[stat].shape) != shapes[name][:1] + shapes[name][2:]:
                raise ValueError(f"{name} at step {step}: expected shape {shapes[name][:1] + shapes[name][2:]}, "
                                 f"got {tuple(stats[stat].shape)}")  # fmt: skip

            def write(data: np.ndarray, name=name) -> None:
                self._file[name][:, pos] = data

            self.store.submit_array(stats[stat], write)

    def write_x0_hat(self, step: int, latents) -> None:
        pos = self._position(step)
        self.store.submit_array(latents, lambda data: self._x0_hat.__setitem__(np.s_[:, pos], data))

    def write_x_t(self, step: int, latents) -> None:
        """The noisy latent that entered the model at ``step`` (what a probe sees without the network)."""
        pos = self._position(step)
        self.store.submit_array(latents, lambda data: self._x_t.__setitem__(np.s_[:, pos], data))

    def write_condition(self, condition) -> None:
        """The batch's conditioning latent, (batch, *layout.condition_shape)."""
        shape = self.store.layout.condition_shape
        expected = (len(self.videos), *shape) if shape is not None else None
        if expected is None or tuple(condition.shape) != expected:
            raise ValueError(f"condition of shape {tuple(condition.shape)} but the store expects {expected}")
        self.store.submit_array(condition, lambda data: self._file["condition"].__setitem__(Ellipsis, data))

    def finish(self, final_latents, metas: Sequence[dict]) -> None:
        """Queue the final latents and per-video metadata, then close and publish the part."""
        if len(metas) != len(self.videos):
            raise ValueError(f"{len(self.videos)} videos but {len(metas)} metadata records")
        meta = np.array([json.dumps(m, sort_keys=True) for m in metas], dtype=object)
        self.store.submit_array(final_latents, lambda data: self._file["final"].__setitem__(Ellipsis, data))

        def close() -> None:
            counts = self._file.create_dataset("nonfinite", data=self._nonfinite)
            counts.attrs["columns"] = list(NONFINITE_COLUMNS)
            self._file.create_dataset("meta", data=meta, dtype=h5py.string_dtype())
            # A full disk fails here, not inside close: a dataset whose close failed is freed behind
            # its id, and h5py's later clean-up of that id segfaulted (``abandon`` closes after truncating).
            self._file.flush()
            self._file.close()
            self.store._open_parts.discard(self)
            self.store._finish_part(self._tmp_path, self._final_path, self.videos, list(meta))
            lay = self.store.layout
            for i, j in zip(*np.nonzero(self._nonfinite.any(axis=2))):
                self.store.nonfinite.append((lay.sites[i], lay.steps[j], *map(int, self._nonfinite[i, j])))

        self.store.submit(close)

    def abandon(self) -> None:
        """After a failure: free the half-written part's space, close it, remove it."""
        if self._file is not None:
            self._slabs.clear()
            try:
                os.truncate(self._tmp_path, 0)  # frees its space, so the flush inside close succeeds
                self._file.close()
            except Exception:  # the part is discarded either way
                pass
        self._tmp_path.unlink(missing_ok=True)
