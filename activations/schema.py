"""The activation store's on-disk schema (version 2), readable with plain h5py.

A store is a main file ``NAME.h5`` and a folder ``NAME.h5.parts/`` beside it:

    NAME.h5.parts/part_000000.h5   one finished batch of videos (written to *.tmp, then renamed)
    NAME.h5                        HDF5 virtual datasets over the finished parts, rewritten
                                   atomically (temp file + rename) after every part

so a run killed at any moment leaves a main file that opens, lists exactly the finished videos,
and never shows a half-written one; rerunning resumes with the videos still missing.

Main file:

    attrs   format = "video-dit-interp.activations", schema_version = 2,
            layout = JSON of StoreLayout (model, adapter, model_config, num_steps, steps,
            timesteps, sigmas, sites, hidden sizes, token_grid, pooling, dtype, latent_shape,
            condition_shape, cfg_branch, n_videos, video_keys, extra), plus the main fields as plain attrs
    /sites/<site>        (video, step, token, hidden)   e.g. /sites/blocks.12, dtype as stored
    /x0_hat              (video, step, C, T, H, W)       clean-sample estimate, latent space
    /x_t                 (video, step, C, T, H, W)       the noisy latent entering the model at the step
    /final               (video, C, T, H, W)             the final latent
    /condition           (video, *condition_shape)       conditioning latent, where the adapter has one
    /results/<tool>/<name>  tables written by analyses (probes, ...); kept when the index is rebuilt
    /token_positions     (token, 3)                      (frame, h, w) of each stored token
    /token_index         (token,)                        flat grid index (random-subset pooling)
    /videos/complete     (video,) bool                   True only for videos of a part that was finished and,
                                                         when the index was built, opened with the layout's datasets
    /videos/meta         (video,) JSON strings           task, seed, prompt, verdict, ...
    /parts/name          (part,) strings                 the parts the index maps: file name in NAME.h5.parts/
    /parts/first, /parts/count  (part,) int64            the contiguous videos each holds
    /parts/bytes         (part,) int64                   the part file's size when written
    /parts/sha256        (part,) strings                 SHA-256 of the part file ("" unless traced --sha256)

Unfinished videos read as NaN in /sites, /x0_hat, /x_t, /final and /condition. ``step`` positions refer to the
denoising steps listed in ``layout["steps"]``; ``token`` is the pooled token axis.

A part file holds the same per-video datasets for its videos only (first axis: its video count), plus
``attrs["video_indices"]``, ``/meta`` and ``/nonfinite`` (site, step, 3) int64: per site (layout order) and step
position, how many captured values were NaN, +-Inf, or finite but beyond the store dtype's range (columns
``attrs["columns"]`` = nan, inf, overflow; counted before the cast; ``activations.nonfinite`` sums them;
parts written before it existed lack it). Virtual-dataset sources are named relative to the main file's
folder (``NAME.h5.parts/part_....h5``, with ``%`` written ``%%``, as HDF5 reads ``%`` in source file names
as a format code), so moving the main file and its parts folder together keeps plain-h5py reads working;
``ActivationStore`` also reads a store renamed together with its parts folder, and refuses to open one
whose listed parts are missing or damaged (``interp verify STORE --repair``). ``/parts`` was added within
version 2: stores without it still read (their parts are listed from the virtual-dataset mappings).
``NAME.h5.parts/writer.lock`` is the writer's ``flock`` lock (shared for shard writers);
``NAME.h5.parts/damaged/`` holds parts that ``interp verify --repair`` moved out of the index. A
consolidated file (``activations.consolidate``) keeps ``/parts`` as a record; its datasets are real, and
its ``/nonfinite`` holds the parts' counts summed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "video-dit-interp.activations"
SCHEMA_VERSION = 2  # 2: x_t, condition and results added
DTYPES = ("float16", "float32")
RESULTS = "results"  # group of the main file where analyses store their tables
PARTS = "parts"  # group of the main file listing the parts its virtual datasets map
# Data datasets carry HDF5's per-chunk Fletcher-32 checksum: bytes changed after writing fail the read
# (see ``checked_reads``) instead of reading as values.
CHECKED = {"fletcher32": True}


class StoreError(ValueError):
    """A file that is not a store of ours, of another schema version, or damaged."""


def is_checksum_failure(err: BaseException) -> bool:
    """HDF5's error when a chunk fails its Fletcher-32 checksum (every part dataset carries one)."""
    return isinstance(err, OSError) and "filter returned failure" in str(err)


def checksum_message(path) -> str:
    return (f"{path}: stored data failed its checksum (a damaged part); run `interp verify {path} --checksums` "
            "to find it and `--repair` to drop it")  # fmt: skip


@contextmanager
def checked_reads(path) -> Iterator[None]:
    """Reads inside: a chunk whose bytes changed after writing is one StoreError, never data."""
    try:
        yield
    except OSError as err:
        if is_checksum_failure(err):
            raise StoreError(checksum_message(path)) from None
        raise


@dataclass
class StoreLayout:
    """Everything fixed for the life of a store; a resumed run must ask for the same."""

    model: str
    adapter: str
    num_steps: int
    steps: list[int]
    timesteps: list[float]
    sigmas: list[float]
    sites: list[str]
    hidden: dict[str, int]
    token_grid: tuple[int, int, int]
    pooling: str  # Pooling.to_json()
    n_tokens: int
    latent_shape: tuple[int, int, int, int]
    n_videos: int
    video_keys: list[str]
    dtype: str = "float16"
    condition_shape: tuple[int, ...] | None = None  # conditioning latent per video (testbed: mask + frame 0)
    cfg_branch: str = "cond"
    model_config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.token_grid = tuple(int(v) for v in self.token_grid)
        self.latent_shape = tuple(int(v) for v in self.latent_shape)
        if self.condition_shape is not None:
            self.condition_shape = tuple(int(v) for v in self.condition_shape)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if len(self.video_keys) != self.n_videos or len(set(self.video_keys)) != self.n_videos:
            raise ValueError("video_keys must name each of the n_videos videos once")
        if set(self.hidden) != set(self.sites):
            raise ValueError("hidden must give the hidden size of every site")
        # Configs carry paths and tuples; keep only what JSON says back, so a resumed layout compares equal.
        self.model_config = json.loads(json.dumps(self.model_config, default=str))
        self.extra = json.loads(json.dumps(self.extra, default=str))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StoreLayout:
        return cls(**json.loads(text))

    def differences(self, other: StoreLayout) -> list[str]:
        """Fields that differ; in ``extra``, and in its records (``trace_config``), only keys both layouts
        have (a key one side lacks is a description a newer toolkit records, e.g. ``latent_frame_axis``, or a
        config field added since, not a different setting: those are the layout's own fields); a model config's
        ``_name_or_path`` (the folder it was loaded from) is not compared."""
        mine, theirs = asdict(self), asdict(other)
        mine["extra"], theirs["extra"] = _shared(_renamed(mine["extra"]), _renamed(theirs["extra"]))
        for side in (mine, theirs):  # where the weights were read from is not what they are (a moved checkout)
            side["model_config"] = {expert: {k: v for k, v in config.items() if k != "_name_or_path"}
                                    if isinstance(config, dict) else config
                                    for expert, config in side["model_config"].items()}  # fmt: skip
        return [k for k in mine if json.dumps(mine[k], sort_keys=True) != json.dumps(theirs[k], sort_keys=True)]


RENAMED_RECORDS = {"pipeline_trace_config": "trace_config"}  # a pipeline's trace config before one source


def _renamed(extra: dict) -> dict:
    return {RENAMED_RECORDS.get(k, k): v for k, v in extra.items()}


def _shared(a: dict, b: dict) -> tuple[dict, dict]:
    """``a`` and ``b`` cut to the keys both have, in nested records too."""
    keys = set(a) & set(b)
    a, b = {k: a[k] for k in keys}, {k: b[k] for k in keys}
    for k in keys:
        if isinstance(a[k], dict) and isinstance(b[k], dict):
            a[k], b[k] = _shared(a[k], b[k])
    return a, b


def parts_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".parts")


def part_path(parts: Path, videos: list[int]) -> Path:
    """The finished part file of a contiguous run of videos."""
    return parts / f"part_{videos[0]:07d}_{len(videos):04d}.h5"


def data_shapes(layout: StoreLayout, n_videos: int | None = None) -> dict[str, tuple[int, ...]]:
    """Shape of every per-video dataset: in the main file (``n_videos`` None) or in a part of that many."""
    n_v, n_s = layout.n_videos if n_videos is None else n_videos, len(layout.steps)
    shapes = {f"sites/{s}": (n_v, n_s, layout.n_tokens, layout.hidden[s]) for s in layout.sites}
    shapes["x0_hat"] = (n_v, n_s, *layout.latent_shape)
    shapes["x_t"] = (n_v, n_s, *layout.latent_shape)
    shapes["final"] = (n_v, *layout.latent_shape)
    if layout.condition_shape is not None:
        shapes["condition"] = (n_v, *layout.condition_shape)
    shapes.update(attention_shapes(layout, n_v, n_s))
    return shapes


def attention_dims(layout: StoreLayout, site: str) -> dict[str, tuple[str, ...]]:
    """The kept statistics of an attention site and their dims after (video, step, head): a self-attention's
    ``mass`` (query_frame, key_frame), ``text`` and ``entropy`` (query_frame); a cross-attention's (a site in
    ``extra["attention"]["context"]``) ``entropy`` and ``norm`` (keys, query_frame), per key group."""
    if site in (layout.extra.get("attention") or {}).get("context", {}):
        return {"entropy": ("keys", "query_frame"), "norm": ("keys", "query_frame")}
    return {"mass": ("query_frame", "key_frame"), "text": ("query_frame",), "entropy": ("query_frame",)}


def attention_shapes(layout: StoreLayout, n_videos: int, n_steps: int) -> dict[str, tuple[int, ...]]:
    """Attention statistics of the sites ``extra["attention"]`` names (``sites``, ``heads`` per site,
    ``frames``, ``context``: key groups per cross-attention site): ``attention/<site>/<stat>`` (videos, steps,
    heads, *dims) as ``attention_dims`` names them."""
    spec = layout.extra.get("attention") or {}
    sizes = {"query_frame": spec.get("frames", 0), "key_frame": spec.get("frames", 0)}
    shapes = {}
    for site in spec.get("sites", []):
        groups = len(spec.get("context", {}).get(site, ()))
        for stat, dims in attention_dims(layout, site).items():
            shapes[f"attention/{site}/{stat}"] = (n_videos, n_steps, spec["heads"][site],
                                                  *(sizes.get(d, groups) for d in dims))  # fmt: skip
    return shapes


def vds_file_name(folder: str, part: str) -> str:
    """A virtual-dataset source file name: HDF5 parses ``%`` there as a format code and ``%%`` as ``%``."""
    return f"{folder}/{part}".replace("%", "%%")


def check_store_path(path: str | Path) -> Path:
    """A store's main file, or one error saying why the path is no store file (a folder, nothing there)."""
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a store file")
    if not path.is_file():
        raise FileNotFoundError(f"no activation store at {path}")
    return path


def check_header(attrs, path: str | Path) -> StoreLayout:
    """Validate a main file's attributes; return its layout or raise one clear StoreError."""
    fmt = attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT:
        raise StoreError(f"{path} is an HDF5 file but not a video-dit-interp activation store")
    version = int(attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path} is an activation store of schema version {version}; this toolkit reads version {SCHEMA_VERSION}"
        )
    try:
        return StoreLayout.from_json(attrs["layout"])
    except (KeyError, TypeError, ValueError) as err:
        raise StoreError(f"{path}: damaged store header ({err})") from err
