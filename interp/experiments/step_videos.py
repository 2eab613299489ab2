"""x0_hat step videos from a store (``FilmstripConfig`` / ``run_filmstrip``): the saved x0_hat of chosen
steps decoded with the model that made it (a pipeline folder, or the testbed's renderer), per video a folder
with ``step_SS.gif``, ``video.gif`` and ``filmstrip.png`` (rows steps, columns frames). Sampling new videos
with their step videos is ``interp.experiments.generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from activations.reader import ActivationStore
from activations.selection import parse_index_spec
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest
from interp.report.step_videos import write_step_videos
from interp.sources import default_dtype


@dataclass
class FilmstripConfig(ExperimentConfig):
    experiment = "filmstrip"
    store: str = ""
    model: str = "testbed"  # what decodes the latents: a testbed name or a pipeline folder
    videos: str = "0"
    steps: str = "all"
    max_frames: int = 8
    device: str = "cpu"
    torch_dtype: str | None = None

    cli_arguments = ("store",)
    cli_help = {
        "store": "An activation store (its x0_hat of every stored step).",
        "model": "What decodes the latents: a testbed name or the pipeline folder.",
        "videos": "Videos of the store, e.g. 0, 0-3.",
        "steps": "Stored steps to decode.",
        "max_frames": "Columns of each filmstrip (evenly spaced frames).",
        "device": "torch device of the decoder.",
        "torch_dtype": "Pipeline models: float32 (default), bfloat16.",
    }

    def __post_init__(self):
        super().__post_init__()  # interp.validation: types and ranges
        self.torch_dtype = default_dtype(self.device, self.torch_dtype)


def run_filmstrip(cfg: FilmstripConfig, out, progress: bool = True) -> list[dict]:
    from interp.models.loading import load_model

    if not Path(cfg.store).is_file():
        raise ValueError(f"no activation store at {cfg.store}")
    with ActivationStore(cfg.store) as store:
        videos = parse_index_spec(cfg.videos, store.n_videos, "video")
        missing = [v for v in videos if v not in store.completed_videos]
        if missing:
            raise ValueError(f"video {missing[0]} is not a complete video of the store")
        steps = [s for s in parse_index_spec(cfg.steps, store.layout.num_steps, "step") if s in store.steps]
        if not steps:
            raise ValueError(f"none of the steps {cfg.steps!r} is stored; stored steps: {store.steps}")
        adapter = load_model(cfg.model, torch_dtype=cfg.torch_dtype, device=cfg.device)
        made = []
        for v in videos:
            x0 = store.x0_hat(videos=[v], steps=steps)[0]  # (steps, *latent)
            dtype = next(adapter.transformer.parameters()).dtype
            x0s = {s: torch.from_numpy(np.asarray(x0[i], np.float32)).to(adapter.device, dtype) for i, s in
                   enumerate(steps)}  # fmt: skip
            final = torch.from_numpy(np.asarray(store.final(videos=[v])[0], np.float32)).to(adapter.device, dtype)
            folder = Path(out) / f"video{v:03d}"
            paths = write_step_videos(adapter.decode, x0s, {s: store.sigma(s) for s in steps}, final, folder,
                                      f"{store.layout.video_keys[v]}", cfg.max_frames)  # fmt: skip
            made.append({"video": v, "folder": folder, "paths": paths})
    return made


def save_step_videos(made: list[dict], cfg, out) -> Manifest:
    kind = cfg.experiment
    manifest = Manifest(kind, "x0_hat step videos", "filmstrips", cfg.to_dict())
    for item in made:
        name = item["folder"].name
        manifest.add(item["paths"]["filmstrip"], "figure", f"{name}: x0_hat per step (rows), frames (columns)")
        for key, path in item["paths"].items():
            if key != "filmstrip":
                manifest.add(path, "video", f"{name}: {key}")
    manifest.notes.append("Rows: denoising steps (x0_hat decoded); the last row is the sampled video.")
    manifest.headline.append(f"{len(made)} step-video sets in {out}")
    manifest.write(out)
    return manifest


def plan_filmstrip(cfg: FilmstripConfig, out: Path):
    """The chosen videos' x0_hat at the chosen stored steps, decoded one video at a time."""
    import math

    from activations.selection import parse_index_spec
    from interp.plans import FIGURES, FLOAT32, Plan
    from interp.reader_plans import decoder_bytes, store_layout

    if not Path(cfg.store).is_file():
        raise ValueError(f"no activation store at {cfg.store}")
    layout, _ = store_layout(Path(cfg.store))
    videos = parse_index_spec(cfg.videos, layout.n_videos, "video")
    steps = [s for s in parse_index_spec(cfg.steps, layout.num_steps, "step") if s in layout.steps]
    read = len(videos) * len(steps) * math.prod(layout.latent_shape) * FLOAT32
    memory = decoder_bytes(cfg.model, cfg.device, cfg.torch_dtype) + read // len(videos)
    return Plan("filmstrip", out, len(videos), layout.num_steps, len(steps), None, FIGURES * len(videos), memory,
                [f"decodes x0_hat with {cfg.model}"], read, Path(cfg.store))  # fmt: skip


EXPERIMENT = register(Experiment("filmstrip", FilmstripConfig, run_filmstrip, save_step_videos, run_writes=True,
                                 plan=plan_filmstrip))  # fmt: skip
