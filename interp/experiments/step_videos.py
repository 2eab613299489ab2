"""x0_hat step videos for any adapter: the study's main qualitative tool.

- ``PipelineGenerateConfig`` / ``run_pipeline_generate``: sample each (sample, seed) of a pipeline
  folder, keep x0_hat of the chosen steps (latents, on the CPU), then decode them one at a time
  through the pipeline's VAE: per (sample, seed) a folder with ``step_SS.gif``, ``video.gif`` and
  ``filmstrip.png`` (rows steps, columns frames).
- ``FilmstripConfig`` / ``run_filmstrip``: the same from a store's saved x0_hat, decoded with the
  model that made it (a pipeline folder, or the testbed's renderer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from activations.reader import ActivationStore
from activations.selection import parse_index_spec
from interp.execution.loop import KeepX0, sample
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest
from interp.report.step_videos import write_step_videos
from interp.sources import PipelineInputs, default_dtype


@dataclass
class PipelineGenerateConfig(ExperimentConfig):
    experiment = "generate"
    model: str = ""
    data: str = ""
    samples: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: str = "all"  # the steps whose x0_hat is decoded
    height: int = 480
    width: int = 832
    num_frames: int = 81
    num_steps: int = 50
    device: str = "cpu"
    torch_dtype: str | None = None
    max_frames: int = 8  # columns of the filmstrip (evenly spaced frames); every frame is in the GIFs
    guidance_scale: float | None = None  # None: the family's default
    negative_prompt: str | None = ""  # None: no classifier-free guidance
    max_sequence_length: int = 226
    true_cfg_scale: float | None = None  # HunyuanVideo's true CFG (None: off)

    def __post_init__(self):
        super().__post_init__()  # interp.validation: types and ranges
        self.torch_dtype = default_dtype(self.device, self.torch_dtype)

    def inputs(self) -> PipelineInputs:
        return PipelineInputs(self.model, self.data, self.samples, self.height, self.width, self.num_frames,
                              num_steps=self.num_steps, device=self.device, torch_dtype=self.torch_dtype,
                              guidance_scale=self.guidance_scale, negative_prompt=self.negative_prompt,
                              max_sequence_length=self.max_sequence_length,
                              true_cfg_scale=self.true_cfg_scale)  # fmt: skip


def run_pipeline_generate(cfg: PipelineGenerateConfig, out, progress: bool = True) -> list[dict]:
    inputs = cfg.inputs()
    if not cfg.seeds:
        raise ValueError("need at least one seed")
    steps = parse_index_spec(cfg.steps, cfg.num_steps, "step")
    adapter, samples = inputs.load()
    inputs.latent_shape(adapter)  # validates the video size before any compute
    made = []
    for item in samples:
        for seed in cfg.seeds:
            noise = inputs.noise(adapter, [seed])
            cond = inputs.conditioning(adapter, [item], noise)
            keep = KeepX0(steps)
            final = sample(adapter, noise, cond, cfg.num_steps, hooks=[keep]).latents
            folder = Path(out) / f"{item.name}-seed{seed}"
            x0s = {s: torch.from_numpy(x[0]).to(adapter.device, final.dtype) for s, x in keep.x0.items()}
            paths = write_step_videos(adapter.decode, x0s, keep.sigmas, final[0], folder, f"{item.name}, seed {seed}",
                                      cfg.max_frames)  # fmt: skip
            made.append({"sample": item.name, "seed": seed, "folder": folder, "paths": paths})
    return made


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

    def __post_init__(self):
        super().__post_init__()  # interp.validation: types and ranges
        self.torch_dtype = default_dtype(self.device, self.torch_dtype)


def run_filmstrip(cfg: FilmstripConfig, out, progress: bool = True) -> list[dict]:
    from interp.models.registry import load_model

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


EXPERIMENT = register(Experiment("filmstrip", FilmstripConfig, run_filmstrip, save_step_videos, run_writes=True,
                                 cli=False))  # fmt: skip
