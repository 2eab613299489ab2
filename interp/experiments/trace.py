"""Tracing runs as data: any model over its samples (``TraceConfig``: a source plus what to capture) ->
a resumable activation store with a manifest.

A ``TraceJob`` is what one process needs to trace any batch of a config: the single-process loop and the
Ray workers (``experiments.distributed``) both trace through it, so the batches and the bytes are the same.
The testbed and a pipeline differ only in their source (``interp.sources.SourceConfig``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from activations.axes import parse_site
from activations.pooling import Pooling
from activations.schema import StoreLayout
from activations.selection import parse_index_spec
from activations.writer import DEFAULT_QUEUE_BYTES, StoreWriter
from interp.execution.capture import build_layout, trace_batch
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest
from interp.sources import SourceConfig, Video
from interp.videos import NOISINGS


@dataclass
class TraceConfig(SourceConfig, ExperimentConfig):
    """A source (model, data, samples or seeds; ``interp.sources.SourceConfig``) and what to store of it."""

    experiment = "trace"
    steps: str = "all"
    layers: str = "all"
    subs: list[str] = field(default_factory=list)  # sub-modules besides block outputs: attn1, attn2, ffn
    pooling: str = "none"
    dtype: str = "float16"
    batch_size: int | None = None  # videos per forward and part; None: the family's (testbed 16, pipelines 1)
    backend: str = "nnsight"
    branch: str = "cond"
    attention: bool = False  # also the frame-attention statistics of each chosen layer's self-attention
    cross_attention: bool = False  # and of its cross-attention (attn2), per key group (text; Wan I2V: image)
    video_noisings = NOISINGS  # a store of a given video: each step's x_s its noising, or its inversion

    cli_help = {
        **SourceConfig.cli_help,
        "steps": "Denoising steps to store: 'all', '0-9,19', '0-19:2'.",
        "layers": "Blocks to store: 'all', '0-7:2', '3'.",
        "subs": "Also store block sub-modules: attn1, attn2, ffn (repeatable).",
        "pooling": "'none', 'frame', 'spatial:K', 'random:K[:SEED]'.",
        "dtype": "Storage dtype: float16 or float32.",
        "batch_size": "Videos per batch and part; default: testbed 16, pipelines 1.",
        "backend": "Capture backend: nnsight or hooks.",
        "branch": "The guidance branch stored: cond or uncond.",
        "attention": "Also store frame-attention statistics per head.",
        "cross_attention": "Also store cross-attention statistics.",
    }
    cli_flags = {**SourceConfig.cli_flags, "subs": ("--sub",)}

    def __post_init__(self):
        ExperimentConfig.__post_init__(self)  # interp.validation: types and ranges
        SourceConfig.__post_init__(self)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


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
    shift: float | None
    videos: list[Video]
    batch_size: int


def plan_trace(cfg: TraceConfig, adapter) -> TracePlan:
    """Check every choice against the model before any compute; raise ValueError with the reason. The
    samples are read here, once (a maze sample's first frame is checked against its maze). The config's
    own fields (task, backend, sub-modules, ranges) were checked when it was made (``interp.validation``)."""
    num_steps, shift = cfg.num_steps_of(adapter), cfg.shift_of(adapter)
    steps = parse_index_spec(cfg.steps, num_steps, "step")
    layers = parse_index_spec(cfg.layers, adapter.num_blocks(next(iter(adapter.transformers()))), "layer")
    pooling = Pooling.parse(cfg.pooling)
    sites = adapter.site_names(layers, tuple(cfg.subs))
    for site in sites:
        adapter.site_path(site)  # validates site names before any compute
    videos = cfg.videos(adapter)  # a given video's file checked there; read when its batch is traced
    # ``data`` only where given: a testbed store traced before the field existed still resumes
    batch_size = cfg.batch_of(adapter, cfg.batch_size)
    generated = ("n", "size", "first_seed") if cfg.data is not None else ()  # the folder decides these
    recorded = {k: v for k, v in asdict(cfg).items() if (k != "data" or v is not None) and k not in generated}
    recorded["batch_size"] = batch_size
    recorded["max_sequence_length"] = cfg.max_sequence_length_of(adapter)  # what the run uses, resolved
    if recorded["max_sequence_length"] is None:
        del recorded["max_sequence_length"]  # a task model has no prompt
    attention = attention_sites(cfg, adapter, layers)
    layout = build_layout(
        adapter, model=str(cfg.model), latent_shape=cfg.latent_shape(adapter, videos), num_steps=num_steps,
        shift=shift, steps=steps, sites=sites, pooling=pooling, video_keys=[v.key for v in videos], dtype=cfg.dtype,
        branch=cfg.branch, extra={"trace_config": recorded}, attention_sites=attention,
    )  # fmt: skip
    pooling.check(layout.token_grid)
    return TracePlan(cfg, steps, sites, pooling, layout, num_steps, shift, videos, batch_size)


def attention_sites(cfg: TraceConfig, adapter, layers: list[int]) -> list[str]:
    """The chosen layers' attention modules whose statistics the store keeps: self-attention with
    ``--attention``, cross-attention with ``--cross-attention`` (refused where the model has none to read)."""
    subs = ("attn1",) * cfg.attention + ("attn2",) * cfg.cross_attention
    if not subs:
        return []
    if cfg.cross_attention and not any(adapter.attention_context(s) for s in adapter.site_names(layers, ("attn2",))):
        raise ValueError(f"--cross-attention: {cfg.model} has no cross-attention to read (its text and image, if "
                         "any, are in the self-attention's keys or in the latent)")  # fmt: skip
    return [s for s in adapter.site_names(layers, subs)
            if parse_site(s)[2] == "attn1" or (parse_site(s)[2] == "attn2" and adapter.attention_context(s))]


class TraceJob:
    """What one process needs to trace any batch of a ``TraceConfig``: the model and the plan.
    ``skeleton``: a pipeline laid out from its folder's configs alone (a plan's job: it cannot trace)."""

    def __init__(self, cfg: TraceConfig, adapter=None, skeleton: bool = False):
        self.cfg = cfg
        self.adapter = adapter or cfg.load(skeleton)
        self.skeleton = self.adapter.is_skeleton
        self.plan = plan_trace(cfg, self.adapter)
        self.layout = self.plan.layout
        self.batch_size = self.plan.batch_size

    def loaded(self) -> TraceJob:
        """The job that can trace: a skeleton's plan (its samples and layout, laid out from the model's
        configs exactly as from the loaded model) with the weights loaded; the skeleton is dropped."""
        if not self.skeleton:
            return self
        job = object.__new__(TraceJob)
        job.cfg, job.adapter, job.skeleton = self.cfg, self.cfg.load(), False
        job.plan, job.layout, job.batch_size = self.plan, self.layout, self.batch_size
        self.adapter = None  # nothing keeps the skeleton beside the loaded model
        return job

    def trace_part(self, writer: StoreWriter, videos: list[int]) -> None:
        """Trace a contiguous run of videos into one part of ``writer``'s store."""
        cfg, adapter, plan = self.cfg, self.adapter, self.plan
        chosen = [plan.videos[v] for v in videos]
        noise, conditioning = cfg.inputs(adapter, chosen, drawn=True)  # a given video's x_s are set by its hook
        hooks, read = [], [{} for _ in chosen]
        if cfg.video_file is not None:  # a real video: the store's x_s are its noising or its inversion
            from interp.videos import video_hook

            hook, read = video_hook(cfg, adapter, chosen, noise, conditioning, plan.num_steps, plan.shift)
            hooks.append(hook)
        part = writer.begin_part(videos)
        result = trace_batch(adapter, part, plan.layout, noise, conditioning, plan.shift, cfg.backend, hooks)
        metas = cfg.metas(adapter, chosen, result.latents)
        part.finish(result.latents, [{**meta, **extra} for meta, extra in zip(metas, read)])


def make_job(cfg: TraceConfig, adapter=None, skeleton: bool = False) -> TraceJob:
    """The job of a config; ``skeleton``: a pipeline's from its folder's configs, for a plan (no weights)."""
    return TraceJob(cfg, adapter, skeleton)


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
    job = (job or make_job(cfg, adapter)).loaded()
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
    ctx.stage(f"activation store of {n} {ctx.size}x{ctx.size} mazes (every block, every step, frame attention) and "
              "token-energy maps")
    cfg = TraceConfig(model=ctx.model, n=n, size=ctx.size, num_frames=ctx.frames, attention=True)
    ctx.store = run_trace(cfg, ctx.out / "trace.h5", adapter=ctx.adapter, progress=False)


def _save(path, cfg, out):  # the store is written as it runs; the manifest with it
    return Manifest.read(Path(path).with_name(Path(path).name + ".run.json"))


# The command's options beyond the config: how the store is written (no stored byte depends on them).
OPTIONS = {
    "queue_mb": (int, 2048, "MiB of host copies waiting for the disk; then sampling waits."),
    "sha256": (bool, False, "Also record each part's SHA-256 (verify --checksums).", ("--sha256",)),
}


def _queue_bytes(queue_mb: int) -> int:
    if queue_mb < 1:
        raise ValueError(f"--queue-mb must be at least 1, got {queue_mb}")
    return queue_mb << 20


def plan_trace_command(cfg: TraceConfig, out: Path, queue_mb: int = 2048, sha256: bool = False, executor=None):
    """Every check first (a pipeline's from its folder's configs: nothing loaded); the planned job is what the
    run loads its weights into (``Plan.prepared``). ``executor``: Ray's (its workers each write a part)."""
    from interp.plans import trace_plan

    job = make_job(cfg, skeleton=True)
    workers, cluster = (executor.workers, executor.address) if executor is not None else (1, None)
    plan = trace_plan(job, out, _queue_bytes(queue_mb), workers, cluster)
    plan.prepared = job
    return plan


def trace_command(cfg: TraceConfig, out: str | Path, queue_mb: int = 2048, sha256: bool = False, executor=None,
                  prepared: TraceJob | None = None) -> Path:  # fmt: skip
    """``interp trace``: the store at ``out``, in this process (the planned job, loaded) or by an executor that
    traces stores itself (Ray: ``executors.RayExecutor.trace``)."""
    if getattr(executor, "trace", None) is not None:
        print(executor.trace(cfg, out, _queue_bytes(queue_mb), sha256).table())
        return Path(out)
    job = None if prepared is None else prepared.loaded()
    return run_trace(cfg, out, job=job, queue_bytes=_queue_bytes(queue_mb), sha256=sha256)


EXPERIMENT = register(
    Experiment("trace", TraceConfig, trace_command, _save, run_writes=True, demo=demo, demo_order=30,
               plan=plan_trace_command, options=OPTIONS, out_file=True)
)
