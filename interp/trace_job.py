"""A tracing run as data: ``TraceConfig`` -> a resumable activation store of the testbed on a task."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from activations.pooling import Pooling
from activations.schema import StoreLayout
from activations.selection import parse_index_spec
from activations.writer import StoreWriter
from interp.models.base import SUB_MODULES
from interp.models.testbed import TestbedAdapter
from interp.sampling import initial_noise
from interp.tasks import maze as maze_task
from interp.tracing import BACKENDS, SiteCapture, build_layout, trace_batch

TASKS = ("maze",)


@dataclass
class TraceConfig:
    model: str = "testbed"  # "testbed" (shipped weights) or a folder of testbed weights
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TraceConfig:
        return cls(**json.loads(text))


def load_adapter(model: str) -> TestbedAdapter:
    if model == "testbed":
        return TestbedAdapter.load()
    if not Path(model).is_dir():
        raise ValueError(f"model {model!r}: not 'testbed' and not a folder of testbed weights")
    return TestbedAdapter.load(model)


@dataclass
class TracePlan:
    config: TraceConfig
    steps: list[int]
    sites: list[str]
    pooling: Pooling
    layout: StoreLayout
    num_steps: int
    shift: float


def plan_trace(cfg: TraceConfig, adapter: TestbedAdapter) -> TracePlan:
    """Check every choice against the model before any compute; raise ValueError with the reason."""
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; known tasks: {', '.join(TASKS)}")
    if cfg.n < 1 or cfg.batch_size < 1:
        raise ValueError("n and batch_size must be at least 1")
    if cfg.backend not in BACKENDS:
        raise ValueError(f"unknown backend {cfg.backend!r}; choose from {BACKENDS}")
    bad_subs = [s for s in cfg.subs if s not in SUB_MODULES]
    if bad_subs:
        raise ValueError(f"unknown sub-module {bad_subs[0]!r}; choose from {SUB_MODULES}")
    num_steps = cfg.num_steps or adapter.defaults.num_steps
    shift = adapter.defaults.shift if cfg.shift is None else cfg.shift
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    steps = parse_index_spec(cfg.steps, num_steps, "step")
    layers = parse_index_spec(cfg.layers, adapter.num_blocks(), "layer")
    pooling = Pooling.parse(cfg.pooling)
    maze_task.encode(maze_task.generate_maze(cfg.size, cfg.first_seed), cfg.frames)  # validates size, frames
    sites = adapter.site_names(layers, tuple(cfg.subs))
    layout = build_layout(
        adapter,
        model=cfg.model,
        latent_shape=adapter.latent_shape(cfg.size, cfg.frames),
        num_steps=num_steps,
        shift=shift,
        steps=steps,
        sites=sites,
        pooling=pooling,
        video_keys=[
            f"{cfg.task}{cfg.size}-f{cfg.frames}-seed{s}" for s in range(cfg.first_seed, cfg.first_seed + cfg.n)
        ],
        dtype=cfg.dtype,
        branch=cfg.branch,
        extra={"trace_config": asdict(cfg)},
    )
    return TracePlan(cfg, steps, sites, pooling, layout, num_steps, shift)


def batches(pending: list[int], batch_size: int) -> list[list[int]]:
    """Contiguous runs of pending videos, at most ``batch_size`` long (the same runs in every process)."""
    runs: list[list[int]] = []
    for v in pending:
        if runs and v == runs[-1][-1] + 1 and len(runs[-1]) < batch_size:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs


class TestbedTraceJob:
    """What one process needs to trace any batch of a ``TraceConfig``: the model, the plan, the capture.
    The single-process loop and the Ray workers (``interp.distributed``) both trace through it."""

    def __init__(self, cfg: TraceConfig, adapter: TestbedAdapter | None = None):
        self.cfg = cfg
        self.adapter = adapter or load_adapter(cfg.model)
        self.plan = plan_trace(cfg, self.adapter)
        self.capture = SiteCapture(self.adapter, self.plan.sites, cfg.backend)
        self.layout = self.plan.layout
        self.batch_size = cfg.batch_size

    def trace_part(self, writer: StoreWriter, videos: list[int]) -> None:
        """Trace a contiguous run of videos into one part of ``writer``'s store."""
        cfg, adapter, plan = self.cfg, self.adapter, self.plan
        mazes = [maze_task.generate_maze(cfg.size, cfg.first_seed + v) for v in videos]
        part = writer.begin_part(videos)
        noise = initial_noise([m.seed for m in mazes], plan.layout.latent_shape, adapter.device, adapter.dtype)
        conditioning = adapter.conditioning(mazes, cfg.frames)
        result = trace_batch(adapter, self.capture, part, plan.layout, noise, conditioning, plan.shift)
        videos_rgb = adapter.decode(result.latents)
        metas = []
        for maze, rgb in zip(mazes, videos_rgb):
            verdict = maze_task.verify(rgb, maze)
            metas.append(
                {
                    "task": cfg.task,
                    "size": cfg.size,
                    "frames": cfg.frames,
                    "maze_seed": maze.seed,
                    "noise_seed": maze.seed,
                    "prompt": f"Solve the {cfg.size}x{cfg.size} maze: walk from the green start to the red goal.",
                    "verdict": asdict(verdict),
                }
            )
        part.finish(result.latents, metas)


def run_trace(cfg: TraceConfig, out: str | Path, adapter: TestbedAdapter | None = None, progress: bool = True) -> Path:
    """Trace ``cfg.n`` videos into the store at ``out``, skipping videos a previous run finished."""
    job = TestbedTraceJob(cfg, adapter)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with StoreWriter(out, job.layout) as writer:
        pending = writer.pending()
        bar = tqdm(total=cfg.n, initial=cfg.n - len(pending), disable=not progress, desc="tracing videos")
        for videos in batches(pending, job.batch_size):
            job.trace_part(writer, videos)
            bar.update(len(videos))
        bar.close()
    (out.with_name(out.name + ".config.json")).write_text(cfg.to_json())
    return out
