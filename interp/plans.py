"""A plan before compute: what a command will do and what it will cost, from the store layout and the model.

Every computing command prints its ``Plan`` first (``--dry-run``: only the plan) and is refused when the
free disk space under its output place or the available memory is smaller than the estimate. Estimates:

- disk: the store's datasets from ``activations.schema.data_shapes`` (exact, before HDF5 chunk overhead);
  figures and tables of other commands are a few MB.
- memory: model weights + what the command holds at once: tracing, one batch's slabs of one step (float32
  on the way to the writer) twice plus the writer queue's bound; a causal experiment's recorded run (every
  recorded site at every step, float32); probes, ``group`` slabs of every video (float32).
- a pipeline folder is planned before any weight is read: its layout from the configs alone (the models
  built on the meta device, ``interp.models.loading``), its weights from the safetensors headers.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from interp.validation import UsageError, nearest_existing

FLOAT32 = 4
FIGURES = 8 * 2**20  # figures and tables of a command that writes no store: a few MB


@dataclass
class Plan:
    command: str
    out: Path
    videos: int = 0
    denoising_steps: int = 0
    stored_steps: int | None = None
    sites: int | None = None
    disk_bytes: int = 0
    memory_bytes: int = 0
    details: list[str] = field(default_factory=list)
    read_bytes: int = 0  # commands that read a store: what they read of it
    source: Path | None = None
    prepared: object = None  # what planning built that the run goes on with (trace: the planned job)

    def lines(self) -> list[str]:
        parts = [count(self.videos, "video")] if self.videos or self.source is None else []
        if self.denoising_steps:
            parts.append(f"{self.denoising_steps} denoising steps each")
        if self.stored_steps is not None:
            parts.append(f"{count(self.stored_steps, 'step')} {'stored' if self.source is None else 'read'}")
        if self.sites is not None:
            parts.append(count(self.sites, "site"))
        details = list(self.details)
        if not parts and details:  # a plan of no videos (verify, report): its first detail heads it
            parts.append(details.pop(0))
        head = f"plan: {self.command}: " + ", ".join(parts)
        cost = f"writes ~{human(self.disk_bytes)} to {self.out}; memory ~{human(self.memory_bytes)} (estimate)"
        if self.source is not None:
            cost = f"reads ~{human(self.read_bytes)} of {self.source}; " + cost
        return [head, "  " + cost, *("  " + d for d in details)]


def count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def available_memory() -> int:
    """MemAvailable (Linux), else free physical pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_resources(plan: Plan) -> None:
    """Refuse a plan that clearly does not fit: more bytes than the disk has free, or more memory than is
    available (both with the numbers)."""
    free = shutil.disk_usage(nearest_existing(plan.out)).free
    if plan.disk_bytes > free:
        raise UsageError(
            f"{plan.command} would write ~{human(plan.disk_bytes)} but {nearest_existing(plan.out)} has "
            f"{human(free)} free; choose fewer videos, steps or layers, pooling, or another --out"
        )
    memory = available_memory()
    if plan.memory_bytes > memory:
        raise UsageError(
            f"{plan.command} needs ~{human(plan.memory_bytes)} of memory but {human(memory)} is available; "
            "choose fewer videos, steps or layers"
        )


def show(plan: Plan, echo=print) -> None:
    """Print the plan and refuse it if it does not fit."""
    for line in plan.lines():
        echo(line)
    check_resources(plan)


def dtype_bytes(torch_dtype: str | None) -> int:
    """Bytes per value of a compute dtype by name (float32 when None)."""
    return 2 if torch_dtype in ("bfloat16", "float16") else FLOAT32


def folder_weight_bytes(folder: str | Path, torch_dtype: str | None = None, parts: tuple[str, ...] = ()) -> int:
    """The weights of a diffusers pipeline folder (or of its ``parts`` subfolders) once loaded in
    ``torch_dtype`` (float32 when None), from the safetensors headers: nothing is loaded."""
    from safetensors import SafetensorError, safe_open

    itemsize = dtype_bytes(torch_dtype)
    roots = [Path(folder, p) for p in parts] if parts else [Path(folder)]
    total = 0
    for root in roots:
        files = sorted(root.rglob("*.safetensors"))
        plain = {f.parent for f in files if "." not in f.name.removesuffix(".safetensors")}
        for file in files:
            if file.parent in plain and "." in file.name.removesuffix(".safetensors"):
                continue  # a variant (e.g. model.fp16.safetensors) beside the full weights: loaded one or the other
            try:
                with safe_open(str(file), "pt") as f:
                    total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()) * itemsize
            except (SafetensorError, OSError) as err:  # not a safetensors file (e.g. a Git LFS pointer)
                raise UsageError(f"{file} is not a readable safetensors file ({err})") from None
    return total


def model_weight_bytes(model: str | Path, torch_dtype: str | None = None) -> int:
    """The weights of any model by name or folder (``registry.resolve``) in ``torch_dtype``: nothing loaded."""
    from interp.models.registry import resolve

    return folder_weight_bytes(resolve(model)[1], torch_dtype)


def sampling_plan(
    command: str, model: str, torch_dtype: str, videos: int, num_steps: int, out: Path, videos_bytes: int = 0,
    what: str = "activations and decoded videos not counted",
) -> Plan:  # fmt: skip
    """A sampling command (``torch_dtype`` as resolved by ``sources.default_dtype``): the model's weights
    from its folder, before any loading; ``videos_bytes``: the decoded videos it writes (``what``)."""
    return Plan(command, Path(out), videos, num_steps, disk_bytes=FIGURES * max(videos, 1) + videos_bytes,
                memory_bytes=model_weight_bytes(model, torch_dtype),
                details=[f"{what}; weights counted from their safetensors headers"])  # fmt: skip


def store_plan(
    command: str, layout, out: Path, batch_size: int, pending: int | None = None, queue_bytes: int | None = None,
    writers: int = 1, device: str = "cpu",
) -> Plan:  # fmt: skip
    """The plan of tracing ``layout`` into ``out`` (``pending``: videos still to trace on a resume), by
    ``writers`` processes (Ray workers on one machine at most) each with a queue of ``queue_bytes``. Host
    memory: on the CPU one step's block outputs of the batch (float32, every token) and their stored copies
    before the cast, plus the queue; beside a device only the queue (its pinned buffers stay within it)."""
    import numpy as np

    from activations.schema import data_shapes
    from activations.writer import DEFAULT_QUEUE_BYTES

    videos = layout.n_videos if pending is None else pending
    item = np.dtype(layout.dtype).itemsize
    disk = sum(math.prod(shape) for shape in data_shapes(layout, videos).values()) * item
    batch, width = min(batch_size, max(videos, 1)), step_width(layout)
    per_step, outputs = layout.n_tokens * width * batch, math.prod(layout.token_grid) * width * batch
    # Only what tracing adds: a testbed is loaded by now; a pipeline's weights are added by trace_plan.
    queued = min(queue_bytes or DEFAULT_QUEUE_BYTES, per_step * len(layout.steps) * item)
    on_cpu = _device_type(device) == "cpu"
    memory = writers * (queued + (outputs + per_step) * FLOAT32 * on_cpu)
    details = [f"token grid {'x'.join(map(str, layout.token_grid))}, {layout.n_tokens} tokens stored per site"]
    if pending is not None and pending != layout.n_videos:
        details.append(f"{layout.n_videos - pending} of {layout.n_videos} videos already in the store (resumed)")
    return Plan(command, Path(out), videos, layout.num_steps, len(layout.steps), len(layout.sites), disk, memory,
                details)  # fmt: skip


def step_width(layout) -> int:
    """The summed width of the sites one step captures: a multi-expert model (Wan 2.2) runs one expert's."""
    from activations.axes import parse_site

    experts: dict = {}
    for site in layout.sites:
        expert = parse_site(site)[0]
        experts[expert] = experts.get(expert, 0) + layout.hidden[site]
    return max(experts.values(), default=0)


def _device_type(device) -> str:
    import torch

    return torch.device(device).type


def trace_plan(job, out: Path, queue_bytes: int | None = None, writers: int = 1, cluster: str | None = None) -> Plan:
    """The plan of ``interp trace``: a testbed or a pipeline trace job (its layout is already planned). A
    pipeline's job is a skeleton (``make_job(skeleton=True)``: laid out from the folder's configs, nothing
    loaded), so its weights are added from the safetensors headers, once per process that loads them here;
    on a Ray ``cluster`` (an address) the workers load them on their own machines: a detail, not checked."""
    from activations.reader import ActivationStore

    pending = None
    if Path(out).is_file():
        try:
            with ActivationStore(out) as store:
                pending = job.layout.n_videos - len(store.completed_videos)
        except ValueError:
            pending = None  # not a store of this layout: the writer says so when it opens it
    device, lay = getattr(job.cfg, "device", "cpu"), job.layout
    plan = store_plan("trace", lay, out, job.batch_size, pending, queue_bytes, 0 if cluster else writers, device)
    if _device_type(device) != "cpu":
        outputs = math.prod(lay.token_grid) * step_width(lay) * job.batch_size * dtype_bytes(job.cfg.torch_dtype)
        plan.details.append(f"device memory: one step's block outputs ~{human(outputs)} beside the weights")
    plan.details.extend(joint_stream_note(job.adapter, lay.sites))
    spec = lay.extra.get("attention")
    if spec:  # the statistics' working memory: one chunk of queries x every key, float32
        from interp.execution.attention_stats import DEFAULT_CHUNK_BYTES

        tokens = math.prod(lay.token_grid)
        work = min(DEFAULT_CHUNK_BYTES, job.batch_size * max(spec["heads"].values()) * tokens * tokens * FLOAT32)
        plan.memory_bytes += work * (_device_type(device) == "cpu")
        plan.details.append(f"frame-attention statistics of {len(spec['sites'])} attention sites: working memory "
                            f"~{human(work)} (one chunk of queries x every key)")  # fmt: skip
    if getattr(job, "skeleton", False):
        from interp.sources import default_dtype

        cfg = job.cfg
        weights = model_weight_bytes(cfg.model, default_dtype(cfg.device, cfg.torch_dtype))
        plan.memory_bytes += 0 if cluster else writers * weights
        where = f"on each worker of {cluster}" if cluster else "counted"
        plan.details.append(f"model weights ~{human(weights)} {where}, from their safetensors headers (nothing "
                            "loaded to plan)")  # fmt: skip
    return plan


CAUSAL = ("patch", "swap", "flow", "perturb", "layers", "knockout")


def joint_stream_note(adapter, sites) -> list[str]:
    """A plan line naming the sites whose output carries text rows beside the video tokens: only
    their video rows are read, stored, patched and counted in a region (``VideoDiTAdapter.text_rows``)."""
    joint = [s for s in sites if adapter.text_rows(s) is not None]
    if not joint:
        return []
    shown = ", ".join(joint[:4]) + (f" and {len(joint) - 4} more" if len(joint) > 4 else "")
    return [f"joint text+video stream at {shown}: only their video rows are read, stored and patched "
            "(their text rows flow on as the model computes them)"]  # fmt: skip


def experiment_plan(kind: str, cfg, out: Path, **options) -> Plan:
    """A registered experiment: its own plan where it declares one (``Experiment.plan``), else one over a
    source (``source_plan``: causal ones hold recorded runs); an experiment of a user's own with no source:
    no estimate."""
    from interp.experiments.base import experiments
    from interp.sources import SourceConfig

    own = getattr(experiments().get(kind), "plan", None)
    if own is not None:  # the experiment declares its plan beside its run
        return own(cfg, Path(out), **options)
    if isinstance(cfg, SourceConfig):
        return source_plan(kind, cfg, out)
    return Plan(kind, Path(out), getattr(cfg, "n", 0), 0, details=["no estimate: not a sampling experiment"])


def _layers(cfg, adapter) -> list[int]:
    from activations.selection import parse_index_spec

    first = next(iter(adapter.transformers()))  # the first expert's blocks (multi-expert grids are refused)
    return parse_index_spec(getattr(cfg, "layers", "all"), adapter.num_blocks(first), "layer")


def source_plan(kind: str, cfg, out: Path) -> Plan:
    """An experiment over a source (``interp.sources.SourceConfig``), laid out from the model's configs (a
    pipeline's skeleton: nothing loaded; its weights from the safetensors headers): its videos and steps; a
    causal one also holds its recorded runs (every recorded layer's output at every step, in the compute
    dtype, both guidance branches where the family runs them)."""
    from interp.sources import MazeSizes

    adapter = cfg.load(skeleton=True)
    groups = cfg.groups() if isinstance(cfg, MazeSizes) else [cfg]  # one source per maze size
    videos, num_steps = [v for source in groups for v in source.videos(adapter)], cfg.num_steps_of(adapter)
    weights = model_weight_bytes(cfg.model, cfg.torch_dtype)
    note = ["weights counted from their safetensors headers (nothing loaded to plan)"]
    if kind not in CAUSAL:
        return Plan(kind, Path(out), len(videos), num_steps, disk_bytes=FIGURES, memory_bytes=weights, details=note)
    runs = len(videos) * (2 if kind in ("patch", "swap", "layers") and cfg.data is None else 1)  # + the other mazes
    latent, expert = cfg.latent_shape(adapter, videos), next(iter(adapter.transformers()))  # one expert a step
    tokens, hidden = math.prod(adapter.token_grid(latent, expert)), adapter.hidden_size(expert)
    layers = len(_layers(cfg, adapter)) if kind not in ("perturb", "knockout") else 0  # these record no sites
    item = dtype_bytes(cfg.torch_dtype)
    branches = 1 if adapter.task or cfg.negative_prompt is None else 2  # every call is recorded
    per_video = num_steps * (branches * layers * tokens * hidden * item + 2 * math.prod(latent) * FLOAT32)
    sub = getattr(cfg, "sub", None)
    sites = adapter.site_names(_layers(cfg, adapter), (sub,)) if sub and kind not in ("perturb", "knockout") else []
    return Plan(kind, Path(out), runs, num_steps, None, layers, FIGURES, weights + runs * per_video,
                [f"recorded run per sample: {layers} layers x {num_steps} steps x {tokens} tokens x {branches} "
                 f"guidance branches in {cfg.torch_dtype}, and the latents of every step", *note,
                 *joint_stream_note(adapter, sites)])  # fmt: skip


def probe_plan(store_path: Path, cfg, out: Path) -> Plan:
    """``interp probe``: the slabs fitted and what the fast path holds at once."""
    from activations.reader import ActivationStore
    from activations.selection import parse_index_spec

    with ActivationStore(store_path) as store:
        lay = store.layout
        steps = parse_index_spec(cfg.steps, lay.num_steps, "step")
        bad = [s for s in steps if s not in lay.steps]
        if bad and cfg.steps not in ("all", "*"):
            raise UsageError(f"--steps: step {bad[0]} is not in the store {store_path} (stored: {lay.steps})")
        steps = [s for s in steps if s in lay.steps]
        layers = parse_index_spec(cfg.layers, len(store.layers), "layer")
        videos = len(store.completed_videos)
        hidden = max(lay.hidden.values())
    tokens = lay.n_tokens if cfg.max_tokens is None else min(lay.n_tokens, cfg.max_tokens)
    group = max(cfg.group, 1) if cfg.method == "fast" else 1  # scikit-learn fits one slab at a time
    memory = group * videos * tokens * hidden * FLOAT32 * 2
    targets = len(cfg.targets) + len(cfg.labels)
    return Plan("probe", Path(out), videos, lay.num_steps, len(steps), len(layers), 4 * 2**20, memory,
                [f"{targets} targets x {len(steps)} steps x {len(layers)} layers = {targets * len(steps) * len(layers)}"
                 " probes, each with 3 controls"])  # fmt: skip
