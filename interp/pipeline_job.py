"""Tracing a real model: a local diffusers pipeline folder over a folder of samples.

Samples are laid out as VBVR-Bench does: one folder per sample holding ``prompt.txt`` and
``first_frame.png`` (read for image-to-video pipelines). Nothing is fetched from a hub.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from activations.pooling import Pooling
from activations.selection import parse_index_spec
from activations.writer import StoreWriter
from interp.models.base import VideoDiTAdapter
from interp.sampling import initial_noise
from interp.tracing import SiteCapture, build_layout, trace_batch

CLI_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")


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
    guidance_scale: float = 5.0
    negative_prompt: str = ""
    max_sequence_length: int = 512
    torch_dtype: str = "bfloat16"
    device: str = "cpu"
    backend: str = "nnsight"
    branch: str = "cond"


def load_pipeline_adapter(cfg: PipelineTraceConfig) -> VideoDiTAdapter:
    from diffusers import DiffusionPipeline

    from interp.models.wan import WanAdapter

    folder = Path(cfg.model)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"--model {folder}: not a diffusers pipeline folder (no model_index.json)")
    kind = json.loads((folder / "model_index.json").read_text()).get("_class_name")
    if kind not in CLI_PIPELINES:
        raise ValueError(
            f"--model {folder}: {kind} is not wired to the command line yet (supported: {', '.join(CLI_PIPELINES)}); "
            "the Python adapters in interp.models cover CogVideoX, LTX-Video and HunyuanVideo"
        )
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=getattr(torch, cfg.torch_dtype), local_files_only=True)
    pipe = pipe.to(cfg.device)
    return WanAdapter.from_pipeline(pipe, guidance_scale=cfg.guidance_scale)


def _latent_shape(adapter, cfg: PipelineTraceConfig) -> tuple[int, int, int, int]:
    pipe = adapter.pipeline
    t_scale, s_scale = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
    if (cfg.num_frames - 1) % t_scale:
        raise ValueError(f"num_frames - 1 must be a multiple of {t_scale}, got {cfg.num_frames}")
    if cfg.height % (s_scale * 2) or cfg.width % (s_scale * 2):
        raise ValueError(f"height and width must be multiples of {s_scale * 2}")
    return (pipe.vae.config.z_dim, (cfg.num_frames - 1) // t_scale + 1, cfg.height // s_scale, cfg.width // s_scale)


def _conditioning(adapter, cfg: PipelineTraceConfig, samples: list[Sample], noise: torch.Tensor):
    from PIL import Image

    pipe = adapter.pipeline
    cond = adapter.encode([s.prompt for s in samples], cfg.negative_prompt, cfg.max_sequence_length)
    if type(pipe).__name__ == "WanImageToVideoPipeline":
        missing = [s.name for s in samples if s.first_frame is None]
        if missing:
            raise ValueError(f"image-to-video needs first_frame.png; missing in {missing}")
        images = [Image.open(s.first_frame).convert("RGB") for s in samples]
        if getattr(pipe, "image_encoder", None) is not None:
            cond.image_embeds = pipe.encode_image(images, noise.device)
        processed = pipe.video_processor.preprocess(images, height=cfg.height, width=cfg.width).to(noise.device)
        _, cond.condition = pipe.prepare_latents(
            processed,
            noise.shape[0],
            noise.shape[1],
            cfg.height,
            cfg.width,
            cfg.num_frames,
            torch.float32,
            noise.device,
            None,
            noise.clone(),
        )
    return cond


def run_pipeline_trace(cfg: PipelineTraceConfig, out: str | Path, progress: bool = True) -> Path:
    """One video per (sample, seed) into a resumable store; checks everything before any compute."""
    samples = read_samples(cfg.data)
    if not cfg.seeds:
        raise ValueError("need at least one seed")
    adapter = load_pipeline_adapter(cfg)
    latent_shape = _latent_shape(adapter, cfg)
    steps = parse_index_spec(cfg.steps, cfg.num_steps, "step")
    layers = parse_index_spec(cfg.layers, adapter.num_blocks(next(iter(adapter.transformers()))), "layer")
    sites = adapter.site_names(layers, tuple(cfg.subs))
    SiteCapture(adapter, sites)  # validates sub-module names
    jobs = [(s, seed) for s in samples for seed in cfg.seeds]
    layout = build_layout(
        adapter,
        model=str(cfg.model),
        latent_shape=latent_shape,
        num_steps=cfg.num_steps,
        shift=None,
        steps=steps,
        sites=sites,
        pooling=Pooling.parse(cfg.pooling),
        video_keys=[f"{s.name}-seed{seed}" for s, seed in jobs],
        dtype=cfg.dtype,
        branch=cfg.branch,
        extra={"pipeline_trace_config": asdict(cfg)},
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    capture = SiteCapture(adapter, sites, cfg.backend)
    device = next(adapter.transformer.parameters()).device
    with StoreWriter(out, layout) as writer:
        pending = writer.pending()
        for v in tqdm(pending, disable=not progress, desc="tracing videos"):
            sample, seed = jobs[v]
            noise = initial_noise([seed], latent_shape, device, torch.float32)
            with torch.no_grad():
                conditioning = _conditioning(adapter, cfg, [sample], noise)
            part = writer.begin_part([v])
            result = trace_batch(adapter, capture, part, layout, noise, conditioning, None)
            meta = {"sample": sample.name, "prompt": sample.prompt, "seed": seed, "model": str(cfg.model)}
            part.finish(result.latents, [meta])
    out.with_name(out.name + ".config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return out
