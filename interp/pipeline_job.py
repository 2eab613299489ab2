"""Tracing a real model: a local diffusers pipeline folder over a folder of samples.

Samples are laid out as VBVR-Bench does: one folder per sample holding ``prompt.txt`` and
``first_frame.png`` (read for image-to-video pipelines). Nothing is fetched from a hub.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from activations.pooling import Pooling
from activations.selection import parse_index_spec
from activations.writer import StoreWriter
from interp.models.base import VideoDiTAdapter
from interp.sampling import initial_noise
from interp.tracing import SiteCapture, build_layout, trace_batch

CLI_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline", "CogVideoXPipeline", "LTXPipeline", "HunyuanVideoPipeline")


@dataclass
class Sample:
    name: str
    prompt: str
    first_frame: Path | None


def read_samples(folder: str | Path) -> list[Sample]:
    """Every sub-folder with a prompt.txt, sorted by name; a clear error when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--data {folder}: no such folder")
    samples = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        prompt = sub / "prompt.txt"
        if prompt.is_file():
            frame = sub / "first_frame.png"
            samples.append(Sample(sub.name, prompt.read_text().strip(), frame if frame.is_file() else None))
    if not samples:
        raise ValueError(f"--data {folder}: no sample folders with a prompt.txt")
    return samples


@dataclass
class PipelineTraceConfig:
    model: str
    data: str
    height: int = 480
    width: int = 832
    num_frames: int = 81
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: str = "all"
    layers: str = "all"
    subs: list[str] = field(default_factory=list)
    pooling: str = "none"
    dtype: str = "float16"
    num_steps: int = 50
    guidance_scale: float | None = None  # None: the family's default
    negative_prompt: str | None = ""  # None: no classifier-free guidance
    max_sequence_length: int = 226
    torch_dtype: str = "bfloat16"
    device: str = "cpu"
    backend: str = "nnsight"
    branch: str = "cond"


def load_pipeline_adapter(cfg: PipelineTraceConfig) -> VideoDiTAdapter:
    """The adapter of a local pipeline folder, chosen by the pipeline class in its model_index.json."""
    from diffusers import DiffusionPipeline

    from interp.models.cogvideox import CogVideoXAdapter
    from interp.models.hunyuan import HunyuanVideoAdapter
    from interp.models.ltx import LTXAdapter
    from interp.models.wan import WanAdapter

    folder = Path(cfg.model)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"--model {folder}: not a diffusers pipeline folder (no model_index.json)")
    kind = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    if kind not in CLI_PIPELINES:
        raise ValueError(f"--model {folder}: {kind} has no adapter yet (supported: {', '.join(CLI_PIPELINES)})")
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=getattr(torch, cfg.torch_dtype), local_files_only=True)
    pipe = pipe.to(cfg.device)
    scale = {} if cfg.guidance_scale is None else {"guidance_scale": cfg.guidance_scale}
    if kind.startswith("Wan"):
        return WanAdapter.from_pipeline(pipe, **scale)
    if kind == "CogVideoXPipeline":
        return CogVideoXAdapter.from_pipeline(pipe, **scale)
    if kind == "HunyuanVideoPipeline":
        return HunyuanVideoAdapter.from_pipeline(pipe, **scale)
    return LTXAdapter.from_pipeline(pipe, cfg.height, cfg.width, cfg.num_frames, **scale)


class PipelineTraceJob:
    """What one process needs to trace any video of a ``PipelineTraceConfig`` (one video per part):
    the single-process loop and the Ray workers (``interp.distributed``) both trace through it."""

    batch_size = 1

    def __init__(self, cfg: PipelineTraceConfig):
        self.cfg = cfg
        self.samples = read_samples(cfg.data)
        if not cfg.seeds:
            raise ValueError("need at least one seed")
        adapter = load_pipeline_adapter(cfg)
        self.adapter = adapter
        self.latent_shape = adapter.pipeline_latent_shape(cfg.height, cfg.width, cfg.num_frames)
        steps = parse_index_spec(cfg.steps, cfg.num_steps, "step")
        layers = parse_index_spec(cfg.layers, adapter.num_blocks(next(iter(adapter.transformers()))), "layer")
        sites = adapter.site_names(layers, tuple(cfg.subs))
        self.capture = SiteCapture(adapter, sites, cfg.backend)  # validates site names and the backend
        self.jobs = [(s, seed) for s in self.samples for seed in cfg.seeds]
        self.layout = build_layout(
            adapter,
            model=str(cfg.model),
            latent_shape=self.latent_shape,
            num_steps=cfg.num_steps,
            shift=None,
            steps=steps,
            sites=sites,
            pooling=Pooling.parse(cfg.pooling),
            video_keys=[f"{s.name}-seed{seed}" for s, seed in self.jobs],
            dtype=cfg.dtype,
            branch=cfg.branch,
            extra={"pipeline_trace_config": asdict(cfg)},
        )

    def trace_part(self, writer: StoreWriter, videos: list[int]) -> None:
        cfg, adapter = self.cfg, self.adapter
        for v in videos:
            sample, seed = self.jobs[v]
            device = adapter.transformer.device
            noise = initial_noise([seed], self.latent_shape, device, torch.float32)
            image = Image.open(sample.first_frame).convert("RGB") if sample.first_frame else None
            with torch.no_grad():
                conditioning = adapter.pipeline_conditioning(
                    [sample.prompt], [image], noise, cfg.negative_prompt, cfg.height, cfg.width, cfg.num_frames,
                    cfg.max_sequence_length,
                )  # fmt: skip
            part = writer.begin_part([v])
            result = trace_batch(adapter, self.capture, part, self.layout, noise, conditioning, None)
            meta = {"sample": sample.name, "prompt": sample.prompt, "seed": seed, "model": str(cfg.model)}
            part.finish(result.latents, [meta])


def run_pipeline_trace(cfg: PipelineTraceConfig, out: str | Path, progress: bool = True) -> Path:
    """One video per (sample, seed) into a resumable store; checks everything before any compute."""
    job = PipelineTraceJob(cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with StoreWriter(out, job.layout) as writer:
        for v in tqdm(writer.pending(), disable=not progress, desc="tracing videos"):
            job.trace_part(writer, [v])
    out.with_name(out.name + ".config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return out
