"""Open a store and read selections of it lazily: by site, video, step and frame.

Opening checks the store cheaply (``activations.integrity``): a missing or damaged part would read as
NaN through the virtual datasets, so it is refused with one ``StoreError`` instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from activations.axes import HIDDEN, STEP, VIDEO, parse_site
from activations.index import resolve_sources
from activations.integrity import (
    Problem,
    coverage_problems,
    index_problems,
    listed_parts,
    one_line,
    part_problem,
    store_id_of,
)
from activations.pooling import Pooling
from activations.schema import (
    StoreError,
    StoreLayout,
    attention_dims,
    check_header,
    check_store_path,
    checked_reads,
    data_shapes,
    parts_dir,
    vds_file_name,
)


def _as_list(selection, allowed: Sequence[int], what: str) -> list[int]:
    if selection is None:
        return list(allowed)
    items = [int(selection)] if np.isscalar(selection) else [int(s) for s in selection]
    missing = [s for s in items if s not in allowed]
    if missing:
        raise KeyError(f"{what} {missing[0]} is not in the store (available: {list(allowed)})")
    return items


class ActivationStore:
    """Read-only view of an activation store; nothing is loaded until asked for."""

    def __init__(self, path: str | Path):
        self.path = check_store_path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise StoreError(f"{self.path} is not a readable HDF5 file ({one_line(err)})") from err
        self._data: h5py.File = self._file  # where the per-video datasets are read from
        try:
            self.layout: StoreLayout = check_header(self._file.attrs, self.path)
            self._check()
        except BaseException:
            self.close()
            raise
        self.pooling = Pooling.from_json(self.layout.pooling)
        self.token_positions = self._file["token_positions"][()]

    def _check(self) -> None:
        """Refuse a damaged store: the index's datasets, then every listed part (cheap: no checksums)."""
        f, layout = self._file, self.layout
        problems = index_problems(f, layout)
        records = listed_parts(f) if not problems else None
        parts = parts_dir(self.path)
        if records is not None:
            self.complete = f["videos/complete"][()].astype(bool)
            store_id = store_id_of(f)
            for r in records:
                reason = part_problem(parts / r.name, layout, r, store_id=store_id)
                if reason is not None:
                    problems.append(Problem(r.name, r.videos, reason))
            problems += coverage_problems(self.complete, records)
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise StoreError(
                f"{self.path} is damaged: {problems[0].line()}{more}; run `interp verify {self.path} --repair`, "
                "then rerun the trace to recompute what it drops"
            )
        self.complete = f["videos/complete"][()].astype(bool)
        if records and self._source_names() != {vds_file_name(parts.name, r.name) for r in records}:
            # Renamed together with its parts folder: the index's source names point at the old name.
            self._data = resolve_sources(self.path, layout, records, parts)

    def _source_names(self) -> set[str]:
        return {m.file_name for m in self._file["x0_hat"].virtual_sources()}

    def dataset(self, name: str) -> h5py.Dataset:
        """A per-video dataset (``x0_hat``, ``sites/<site>``, ...) with its parts resolved, or any other."""
        return self._data[name] if name in data_shapes(self.layout) else self._file[name]

    # -- what is in it ------------------------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return list(self.layout.sites)

    @property
    def steps(self) -> list[int]:
        return list(self.layout.steps)

    @property
    def layers(self) -> list[int]:
        """Block indices of the block-output sites (``blocks.K``)."""
        return sorted({parse_site(s)[1] for s in self.sites if parse_site(s)[2] is None})

    @property
    def completed_videos(self) -> list[int]:
        return [int(v) for v in np.flatnonzero(self.complete)]

    @property
    def n_videos(self) -> int:
        return self.layout.n_videos

    def meta(self, video: int) -> dict:
        self._check_videos([video])
        return json.loads(self._file["videos/meta"].asstr()[video])

    def sigma(self, step: int) -> float:
        return float(self.layout.sigmas[step])

    # -- reading --------------------------------------------------------------------------------
    def _check_videos(self, videos: Sequence[int]) -> None:
        for v in videos:
            if not 0 <= v < self.n_videos:
                raise KeyError(f"video {v} is out of range (store has {self.n_videos})")
            if not self.complete[v]:
                raise KeyError(f"video {v} is not complete in {self.path} (interrupted run?)")

    def _select(self, videos, steps) -> tuple[list[int], list[int]]:
        videos = self.completed_videos if videos is None else _as_list(videos, range(self.n_videos), "video")
        self._check_videos(videos)
        steps = _as_list(steps, self.steps, "step")
        return videos, [self.layout.steps.index(s) for s in steps]

    def _read(self, dataset: h5py.Dataset, videos: list[int], positions: list[int]) -> np.ndarray:
        with checked_reads(self.path):
            return self._read_sorted(dataset, videos, positions)

    @staticmethod
    def _read_sorted(dataset: h5py.Dataset, videos: list[int], positions: list[int]) -> np.ndarray:
        """h5py wants increasing indices; read sorted, then restore the asked order."""
        order_v, order_s = np.argsort(videos), np.argsort(positions)
        sv, ss = np.asarray(videos)[order_v], np.asarray(positions)[order_s]
        uv, inv_v = np.unique(sv, return_inverse=True)
        us, inv_s = np.unique(ss, return_inverse=True)
        if len(us) == 1:  # one step of many videos: one read (chunks span a step of several videos)
            block = dataset[list(map(int, uv)), int(us[0])][:, None]
        else:
            block = np.stack([dataset[int(v), list(map(int, us))] for v in uv])
        block = block[inv_v][:, inv_s]
        return block[np.argsort(order_v)][:, np.argsort(order_s)]

    def frame_tokens(self, frames: Sequence[int]) -> np.ndarray:
        """Positions on the token axis of the tokens that belong to ``frames``."""
        return np.flatnonzero(np.isin(self.token_positions[:, 0], list(frames)))

    def activations(self, site: str, videos=None, steps=None, frames=None, as_torch: bool = False):
        """(video, step, token, hidden) for ``site``; defaults: every complete video, every step."""
        if site not in self.layout.hidden:
            raise KeyError(f"site {site!r} is not in the store (sites: {self.sites})")
        videos, positions = self._select(videos, steps)
        data = self._read(self._data[f"sites/{site}"], videos, positions)
        if frames is not None:
            data = data[:, :, self.frame_tokens([frames] if np.isscalar(frames) else frames)]
        if as_torch:
            import torch

            return torch.from_numpy(np.ascontiguousarray(data))
        return data

    def x0_hat(self, videos=None, steps=None) -> np.ndarray:
        """(video, step, C, T, H, W) clean-sample estimates in latent space."""
        videos, positions = self._select(videos, steps)
        return self._read(self._data["x0_hat"], videos, positions)

    def x_t(self, videos=None, steps=None) -> np.ndarray:
        """(video, step, C, T, H, W) noisy latents that entered the model at each stored step."""
        videos, positions = self._select(videos, steps)
        return self._read(self._data["x_t"], videos, positions)

    @property
    def has_condition(self) -> bool:
        return self.layout.condition_shape is not None

    def condition(self, videos=None) -> np.ndarray:
        """(video, *condition_shape) conditioning latents (testbed: mask + frame-0 latent)."""
        if not self.has_condition:
            raise KeyError(f"{self.path} keeps no conditioning latent (its adapter has none)")
        videos, _ = self._select(videos, None)
        return self._read_each("condition", videos)

    def final(self, videos=None) -> np.ndarray:
        videos, _ = self._select(videos, None)
        return self._read_each("final", videos)

    def _read_each(self, name: str, videos: list[int]) -> np.ndarray:
        with checked_reads(self.path):
            return np.stack([self._data[name][v] for v in videos])

    def to_xarray(self, site: str | Sequence[str], videos=None, steps=None):
        """A labelled ``xarray.DataArray`` (video, step, token, hidden) with frame/h/w per token.

        Several sites (e.g. ``activations.axes.block_output_sites``, or every block output with
        ``"blocks"``) give one array (layer, video, step, token, hidden) with a ``layer`` axis
        (coordinates: block index, and ``site``); their widths must agree."""
        import xarray as xr

        if not isinstance(site, str) or site == "blocks":
            chosen = [s for s in self.sites if parse_site(s)[2] is None] if site == "blocks" else list(site)
            if not chosen:
                raise ValueError("no sites to stack")
            widths = {self.layout.hidden[s] for s in chosen if s in self.layout.hidden}
            if len(widths) > 1:
                raise ValueError(f"sites of different widths cannot share a layer axis: {sorted(widths)}")
            arrays = [self.to_xarray(s, videos, steps) for s in chosen]
            layer = [parse_site(s)[1] for s in chosen]
            stacked = xr.concat(arrays, dim="layer", coords="minimal", compat="override")
            return stacked.assign_coords(layer=layer, site=("layer", chosen)).rename("blocks")
        videos_l, positions = self._select(videos, steps)
        if f"sites/{site}" not in self._data:
            raise ValueError(f"site {site!r} is not in the store (stored: {', '.join(self.sites)})")
        data = self._read(self._data[f"sites/{site}"], videos_l, positions)
        pos = self.token_positions
        return xr.DataArray(
            data,
            dims=(VIDEO, STEP, "token", HIDDEN),
            coords={
                VIDEO: videos_l,
                STEP: [self.layout.steps[p] for p in positions],
                "sigma": (STEP, [self.layout.sigmas[self.layout.steps[p]] for p in positions]),
                "frame": ("token", pos[:, 0]),
                "h": ("token", pos[:, 1]),
                "w": ("token", pos[:, 2]),
            },
            name=site,
            attrs={"model": self.layout.model, "pooling": self.layout.pooling},
        )

    @property
    def attention_sites(self) -> list[str]:
        """Attention sites whose frame-attention statistics the store keeps (``trace --attention``)."""
        return list((self.layout.extra.get("attention") or {}).get("sites", []))

    def attention(self, site: str, videos=None, steps=None, heads=None):
        """Attention statistics of ``site`` as an ``xarray.Dataset`` with dims (video, step, head, ...): a
        self-attention's ``mass`` (query_frame, key_frame), ``text`` and ``entropy`` (query_frame); a
        cross-attention's ``entropy`` and ``norm`` (keys, query_frame), ``keys`` naming its key groups
        (``schema.attention_dims``). ``heads``: a selection of head indices (None: all)."""
        import xarray as xr

        if site not in self.attention_sites:
            raise ValueError(f"no attention statistics of {site!r} in the store (kept for: "
                             f"{', '.join(self.attention_sites) or 'none: trace with --attention'})")  # fmt: skip
        videos_l, positions = self._select(videos, steps)
        spec = self.layout.extra["attention"]
        head_idx = list(range(spec["heads"][site])) if heads is None else [int(h) for h in heads]
        frames = list(range(spec["frames"]))
        data = {}
        for stat, dims in attention_dims(self.layout, site).items():
            values = self._read(self._data[f"attention/{site}/{stat}"], videos_l, positions)[:, :, head_idx]
            data[stat] = ((VIDEO, STEP, "head", *dims), values)
        coords = {VIDEO: videos_l, STEP: [self.layout.steps[p] for p in positions], "head": head_idx,
                  "query_frame": frames, "key_frame": frames,
                  "sigma": (STEP, [self.layout.sigmas[self.layout.steps[p]] for p in positions])}  # fmt: skip
        if site in spec.get("context", {}):
            del coords["key_frame"]
            coords["keys"] = list(spec["context"][site])
        return xr.Dataset(data, coords=coords, attrs={"site": site, "model": self.layout.model})

    def close(self) -> None:
        if self._data is not self._file:
            self._data.close()
        self._file.close()

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
