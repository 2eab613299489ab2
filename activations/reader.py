"""Open a store and read selections of it lazily: by site, video, step and frame."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from activations.axes import HIDDEN, STEP, VIDEO, parse_site
from activations.pooling import Pooling
from activations.schema import StoreError, StoreLayout, check_header


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
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no activation store at {self.path}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise StoreError(f"{self.path} is not a readable HDF5 file ({err})") from err
        try:
            self.layout: StoreLayout = check_header(self._file.attrs, self.path)
        except StoreError:
            self._file.close()
            raise
        self.pooling = Pooling.from_json(self.layout.pooling)
        self.complete = self._file["videos/complete"][()].astype(bool)
        self.token_positions = self._file["token_positions"][()]

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

    @staticmethod
    def _read(dataset: h5py.Dataset, videos: list[int], positions: list[int]) -> np.ndarray:
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
        data = self._read(self._file[f"sites/{site}"], videos, positions)
        if frames is not None:
            data = data[:, :, self.frame_tokens([frames] if np.isscalar(frames) else frames)]
        if as_torch:
            import torch

            return torch.from_numpy(np.ascontiguousarray(data))
        return data

    def x0_hat(self, videos=None, steps=None) -> np.ndarray:
        """(video, step, C, T, H, W) clean-sample estimates in latent space."""
        videos, positions = self._select(videos, steps)
        return self._read(self._file["x0_hat"], videos, positions)

    def x_t(self, videos=None, steps=None) -> np.ndarray:
        """(video, step, C, T, H, W) noisy latents that entered the model at each stored step."""
        videos, positions = self._select(videos, steps)
        return self._read(self._file["x_t"], videos, positions)

    @property
    def has_condition(self) -> bool:
        return self.layout.condition_shape is not None

    def condition(self, videos=None) -> np.ndarray:
        """(video, *condition_shape) conditioning latents (testbed: mask + frame-0 latent)."""
        if not self.has_condition:
            raise KeyError(f"{self.path} keeps no conditioning latent (its adapter has none)")
        videos, _ = self._select(videos, None)
        return np.stack([self._file["condition"][v] for v in videos])

    def final(self, videos=None) -> np.ndarray:
        videos, _ = self._select(videos, None)
        return np.stack([self._file["final"][v] for v in videos])

    def to_xarray(self, site: str, videos=None, steps=None):
        """A labelled ``xarray.DataArray`` (video, step, token, hidden) with frame/h/w per token."""
        import xarray as xr

        videos_l, positions = self._select(videos, steps)
        data = self._read(self._file[f"sites/{site}"], videos_l, positions)
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

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
