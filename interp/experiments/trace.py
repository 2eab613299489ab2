"""Tracing runs as data: a testbed on a task (``TraceConfig``) or a local pipeline folder over
VBVR-style samples (``PipelineTraceConfig``) -> a resumable activation store with a manifest.

A trace job (``TestbedTraceJob`` / ``PipelineTraceJob``) is what one process needs to trace any
batch of a config: the single-process loop and the Ray workers (``experiments.distributed``) both
trace through it, so the batches and the bytes are the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from activations.pooling import Pooling
from activations.schema import StoreLayout
from activations.selection import parse_index_spec
from activations.writer import DEFAULT_QUEUE_BYTES, StoreWriter
from interp.execution.capture import build_layout, trace_batch
from interp.execution.runner import BACKENDS
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest
from interp.models.base import SUB_MODULES
from interp.sources import PipelineInputs, default_dtype, load_testbed, maze_inputs
from interp.tasks import maze as maze_task

TASKS = ("maze",)


@dataclass
class TraceConfig(ExperimentConfig):
    experiment = "trace"
    model: str = "testbed"  # a shipped testbed by name, or a folder of testbed weights
    task: str = "maze"
    size: int = 4
    frames: int = 4
    n: int = 16
    first_seed: int = 0  # maze seeds first_seed .. first_seed + n - 1 (held-out: below 500000)
    steps: str = "all"
    layers: str = "all"
    subs: list[str] = field(default_factory=list)  # sub-modules besides block outputs: attn1, attn2, ffn
    pooling: str = "none"
    dtype: str = "float16"
    batch_size: int = 16
    num_steps: int | None = None
    shift: float | None = None
    backend: str = "nnsight"
    branch: str = "cond"
    # A folder of maze samples (``interp data maze``): their mazes, in name order, instead of seeds;
    # then ``n`` and ``size`` are the folder's.
    data: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


@dataclass
class PipelineTraceConfig(ExperimentConfig):
    experiment = "trace"
    model: str = ""
    data: str = ""
    samples: list[str] | None = None  # sample folder names; None: every sample
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
    true_cfg_scale: float | None = None  # HunyuanVideo's true CFG (None: off)
    torch_dtype: str | None = None  # None: float32 on CPU, bfloat16 elsewhere (recorded resolved)
    device: str = "cpu"
    backend: str = "nnsight"
    branch: str = "cond"

    def __post_init__(self):
        super().__post_init__()  # interp.validation: types and ranges
        self.torch_dtype = default_dtype(self.device, self.torch_dtype)

    def inputs(self) -> PipelineInputs:
        return PipelineInputs(
            model=self.model, data=self.data, samples=self.samples, height=self.height, width=self.width,
            num_frames=self.num_frames,
            num_steps=self.num_steps, device=self.device, torch_dtype=self.torch_dtype,
            guidance_scale=self.guidance_scale, negative_prompt=self.negative_prompt,
            max_sequence_length=self.max_sequence_length, true_cfg_scale=self.true_cfg_scale,
        )  # fmt: skip


def _check_capture(cfg) -> None:
    if cfg.backend not in BACKENDS:
        raise ValueError(f"unknown backend {cfg.backend!r}; choose from {BACKENDS}")
    bad_subs = [s for s in cfg.subs if s not in SUB_MODULES]
    if bad_subs:
        raise ValueError(f"unknown sub-module {bad_subs[0]!r}; choose from {SUB_MODULES}")


def batches(pending: list[int], batch_size: int) -> list[list[int]]:
    """Contiguous runs of pending videos, at most ``batch_size`` long (the same runs in every process)."""
    runs: list[list[int]] = []
    for v in pending:
        if runs and v == runs[-1][-1] + 1 and len(runs[-1]) < batch_size:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs


@dataclass
class TracePlan:
    config: TraceConfig
    steps: list[int]
    sites: list[str]
    pooling: Pooling
    layout: StoreLayout
    num_steps: int
    shift: float
    samples: list | None = None  # (name, maze, prompt) per video when the mazes come from ``data``


def plan_trace(cfg: TraceConfig, adapter) -> TracePlan:
    """Check every choice against the model before any compute; raise ValueError with the reason."""
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; known tasks: {', '.join(TASKS)}")
    if cfg.n < 1 or cfg.batch_size < 1:
        raise ValueError("n and batch_size must be at least 1")
    _check_capture(cfg)
    num_steps = cfg.num_steps or adapter.defaults.num_steps
    shift = adapter.defaults.shift if cfg.shift is None else cfg.shift
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    steps = parse_index_spec(cfg.steps, num_steps, "step")
    layers = parse_index_spec(cfg.layers, adapter.num_blocks(), "layer")
    pooling = Pooling.parse(cfg.pooling)
    maze_task.encode(maze_task.generate_maze(cfg.size, cfg.first_seed), cfg.frames)  # validates size, frames
    sites = adapter.site_names(layers, tuple(cfg.subs))
    keys = [f"{cfg.task}{cfg.size}-f{cfg.frames}-seed{s}" for s in range(cfg.first_seed, cfg.first_seed + cfg.n)]
    samples = None
    if cfg.data is not None:
        from interp.tasks.maze_data import read_maze_samples

        samples = read_maze_samples(cfg.data)
        sizes = sorted({maze.size for _, maze, _ in samples})
        if sizes != [cfg.size] or len(samples) != cfg.n:
            found = f"{len(samples)} mazes of size {', '.join(map(str, sizes))}"
            raise ValueError(f"--data {cfg.data}: {found}; the config says {cfg.n} of size {cfg.size}")
        keys = [name for name, _, _ in samples]
    layout = build_layout(
        adapter, model=cfg.model, latent_shape=adapter.latent_shape(cfg.size, cfg.frames), num_steps=num_steps,
        shift=shift, steps=steps, sites=sites, pooling=pooling, video_keys=keys, dtype=cfg.dtype, branch=cfg.branch,
        # ``data`` only where given: a store traced before the field existed still resumes
        extra={"trace_config": {k: v for k, v in asdict(cfg).items() if k != "data" or v is not None}},
    )  # fmt: skip
    pooling.check(layout.token_grid)
    return TracePlan(cfg, steps, sites, pooling, layout, num_steps, shift, samples)


class TestbedTraceJob:
    """What one process needs to trace any batch of a ``TraceConfig``: the model and the plan."""

    __test__ = False

    def __init__(self, cfg: TraceConfig, adapter=None):
        self.cfg = cfg
        self.adapter = adapter or load_testbed(cfg.model)
        self.plan = plan_trace(cfg, self.adapter)
        self.layout = self.plan.layout
        self.batch_size = cfg.batch_size

    def trace_part(self, writer: StoreWriter, videos: list[int]) -> None:
        """Trace a contiguous run of videos into one part of ``writer``'s store."""
        cfg, adapter, plan = self.cfg, self.adapter, self.plan
        if plan.samples is not None:  # mazes read from sample folders
            mazes = [plan.samples[v][1] for v in videos]
        else:
            mazes = [maze_task.generate_maze(cfg.size, cfg.first_seed + v) for v in videos]
        part = writer.begin_part(videos)
        noise, conditioning = maze_inputs(adapter, mazes, cfg.frames)
        result = trace_batch(adapter, part, plan.layout, noise, conditioning, plan.shift, cfg.backend)
        metas = []
        for v, maze, rgb in zip(videos, mazes, adapter.decode(result.latents)):
            metas.append({
                "task": cfg.task, "size": cfg.size, "frames": cfg.frames, "maze_seed": maze.seed,
                "noise_seed": maze.seed,
                "prompt": f"Solve the {cfg.size}x{cfg.size} maze: walk from the green start to the red goal.",
                "verdict": asdict(maze_task.verify(rgb, maze)),
            })  # fmt: skip
            if plan.samples is not None:
                metas[-1].update(sample=plan.samples[v][0], prompt=plan.samples[v][2])
        part.finish(result.latents, metas)


class PipelineTraceJob:
    """What one process needs to trace any video of a ``PipelineTraceConfig`` (one video per part)."""

    batch_size = 1

    def __init__(self, cfg: PipelineTraceConfig, skeleton: bool = False):
        self.cfg = cfg
        self.skeleton = skeleton  # a plan's job: models from the configs alone (it lays out; it cannot trace)
        self.inputs = cfg.inputs()
        if not cfg.seeds:
            raise ValueError("need at least one seed")
        _check_capture(cfg)
        self.adapter, self.samples = self.inputs.load(skeleton)
        adapter = self.adapter
        self.latent_shape = self.inputs.latent_shape(adapter)
        steps = parse_index_spec(cfg.steps, cfg.num_steps, "step")
        layers = parse_index_spec(cfg.layers, adapter.num_blocks(next(iter(adapter.transformers()))), "layer")
        sites = adapter.site_names(layers, tuple(cfg.subs))
        for site in sites:
            adapter.site_path(site)  # validates site names before any compute
        self.jobs = [(s, seed) for s in self.samples for seed in cfg.seeds]
        self.layout = build_layout(
            adapter, model=str(cfg.model), latent_shape=self.latent_shape, num_steps=cfg.num_steps, shift=None,
            steps=steps, sites=sites, pooling=Pooling.parse(cfg.pooling),
            video_keys=[f"{s.name}-seed{seed}" for s, seed in self.jobs], dtype=cfg.dtype, branch=cfg.branch,
            extra={"pipeline_trace_config": asdict(cfg)},
        )  # fmt: skip
        Pooling.parse(cfg.pooling).check(self.layout.token_grid)

    def trace_part(self, writer: StoreWriter, videos: list[int]) -> None:
        for v in videos:
            sample, seed = self.jobs[v]
            noise = self.inputs.noise(self.adapter, [seed])
            conditioning = self.inputs.conditioning(self.adapter, [sample], noise)
            part = writer.begin_part([v])
            result = trace_batch(self.adapter, part, self.layout, noise, conditioning, None, self.cfg.backend)
            meta = {"sample": sample.name, "prompt": sample.prompt, "seed": seed, "model": str(self.cfg.model)}
            part.finish(result.latents, [meta])


def make_job(cfg, adapter=None, skeleton: bool = False):
    """The job of a config; ``skeleton``: a pipeline's from its folder's configs, for a plan (no weights)."""
    if isinstance(cfg, PipelineTraceConfig):
        return PipelineTraceJob(cfg, skeleton)
    return TestbedTraceJob(cfg, adapter)


def run_trace(
    cfg,
    out: str | Path,
    adapter=None,
    progress: bool = True,
    job=None,
    queue_bytes: int = DEFAULT_QUEUE_BYTES,
    sha256: bool = False,
) -> Path:
    """Trace every video of ``cfg`` into the store at ``out``, skipping videos a previous run finished
    (``job``: one ``make_job`` already planned, e.g. for ``interp.plans``). ``queue_bytes``: host memory of
    copies waiting for the disk before sampling waits (not part of the config: it changes no stored byte)."""
    job = job or make_job(cfg, adapter)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    background = writer_in_background(job.adapter.device)
    with StoreWriter(out, job.layout, max_queue_bytes=queue_bytes, sha256=sha256, background=background) as writer:
        pending = writer.pending()
        total = job.layout.n_videos
        bar = tqdm(total=total, initial=total - len(pending), disable=not progress, desc="tracing videos")
        for videos in batches(pending, job.batch_size):
            job.trace_part(writer, videos)
            bar.update(len(videos))
        bar.close()
    write_trace_files(cfg, out)
    return out


def writer_in_background(device) -> bool:
    """Whether the store's writer thread has a core of its own: always beside a GPU; on the CPU only
    where torch's threads leave a core free (``StoreWriter(background=...)`` says why)."""
    if torch.device(device).type != "cpu":
        return True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return torch.get_num_threads() < cores


def write_trace_files(cfg, out: Path) -> Manifest:
    """The store's config (``STORE.config.json``) and manifest (``STORE.run.json``)."""
    config_path = out.with_name(out.name + ".config.json")
    config_path.write_text(json.dumps(asdict(cfg), indent=2, sort_keys=True))
    from activations.reader import ActivationStore

    with ActivationStore(out) as store:
        info = (
            f"{len(store.completed_videos)}/{store.n_videos} videos, {len(store.steps)} steps, {len(store.sites)} sites"
        )
    manifest = Manifest("trace", f"activation store {out.name}", "stores", {"experiment": "trace", **asdict(cfg)})
    manifest.add(out, "store", info)
    manifest.add(config_path, "config", "the trace's config")
    manifest.headline.append(f"{out.name}: {info}")
    manifest.write(out.parent, out.name)
    return manifest


def demo(ctx) -> None:
    """The study: a store of every block at every step (held-out mazes of the largest trained size)."""
    n = ctx.options["n_trace"]
    ctx.stage(f"activation store of {n} {ctx.size}x{ctx.size} mazes (every block, every step) and token-energy maps")
    cfg = TraceConfig(model=ctx.model, n=n, size=ctx.size, frames=ctx.frames)
    ctx.store = run_trace(cfg, ctx.out / "trace.h5", adapter=ctx.adapter, progress=False)


def _save(path, cfg, out):  # the store is written as it runs; the manifest with it
    return Manifest.read(Path(path).with_name(Path(path).name + ".run.json"))


EXPERIMENT = register(
    Experiment("trace", TraceConfig, run_trace, _save, run_writes=True, demo=demo, demo_order=30, cli=False,
                                 alternatives=(PipelineTraceConfig,))
)
