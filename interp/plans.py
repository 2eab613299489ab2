"""A plan before compute: what a command will do and what it will cost, from the store layout and the model.

Every computing command prints its ``Plan`` first (``--dry-run``: only the plan) and is refused when the
free disk space under its output place or the available memory is smaller than the estimate. Estimates:

- disk: the store's datasets from ``activations.schema.data_shapes`` (exact, before HDF5 chunk overhead);
  figures and tables of other commands are a few MB.
- memory: model weights + what the command holds at once: tracing, one batch's slabs of one step (float32
  on the way to the writer) twice plus the writer queue's bound; a causal experiment's recorded run (every
  recorded site at every step, float32); probes, ``group`` slabs of every video (float32).
"""

from __future__ import annotations

import contextvars
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from interp.validation import UsageError, nearest_existing

DRY_RUN: contextvars.ContextVar[bool] = contextvars.ContextVar("dry_run", default=False)
FLOAT32 = 4


class PlanOnly(Exception):  # noqa: N818 - not an error: --dry-run stops here, exit 0
    """Raised by ``show`` under ``--dry-run`` once the plan is printed."""


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

    def lines(self) -> list[str]:
        parts = [f"{self.videos} videos", f"{self.denoising_steps} denoising steps each"]
        if self.stored_steps is not None:
            parts.append(f"{self.stored_steps} steps stored")
        if self.sites is not None:
            parts.append(f"{self.sites} sites")
        head = f"plan: {self.command}: " + ", ".join(parts)
        cost = f"  writes ~{human(self.disk_bytes)} to {self.out}; memory ~{human(self.memory_bytes)} (estimate)"
        return [head, cost, *("  " + d for d in self.details)]


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
    """Print the plan, refuse it if it does not fit, and stop here under ``--dry-run``."""
    for line in plan.lines():
        echo(line)
    check_resources(plan)
    if DRY_RUN.get():
        raise PlanOnly


def model_bytes(adapter) -> int:
    return sum(p.numel() * p.element_size() for m in adapter.transformers().values() for p in m.parameters())


def store_plan(command: str, layout, out: Path, batch_size: int, pending: int | None = None) -> Plan:
    """The plan of tracing ``layout`` into ``out`` (``pending``: videos still to trace on a resume)."""
    import numpy as np

    from activations.schema import data_shapes
    from activations.writer import DEFAULT_QUEUE_BYTES

    videos = layout.n_videos if pending is None else pending
    item = np.dtype(layout.dtype).itemsize
    disk = sum(math.prod(shape) for shape in data_shapes(layout, videos).values()) * item
    per_step = sum(layout.n_tokens * layout.hidden[s] for s in layout.sites) * min(batch_size, max(videos, 1))
    # The model is loaded by now (already out of the available memory): only what tracing adds counts.
    memory = 2 * per_step * FLOAT32
    memory += min(DEFAULT_QUEUE_BYTES, per_step * len(layout.steps) * item)
    details = [f"token grid {'x'.join(map(str, layout.token_grid))}, {layout.n_tokens} tokens stored per site"]
    if pending is not None and pending != layout.n_videos:
        details.append(f"{layout.n_videos - pending} of {layout.n_videos} videos already in the store (resumed)")
    return Plan(command, Path(out), videos, layout.num_steps, len(layout.steps), len(layout.sites), disk, memory,
                details)  # fmt: skip


def trace_plan(job, out: Path) -> Plan:
    """The plan of ``interp trace``: a testbed or a pipeline trace job (its layout is already planned)."""
    from activations.reader import ActivationStore

    pending = None
    if Path(out).is_file():
        try:
            with ActivationStore(out) as store:
                pending = job.layout.n_videos - len(store.completed_videos)
        except ValueError:
            pending = None  # not a store of this layout: the writer says so when it opens it
    return store_plan("trace", job.layout, out, job.batch_size, pending)


CAUSAL = ("patch", "swap", "flow", "perturb", "layers")


def experiment_plan(kind: str, cfg, out: Path) -> Plan:
    """A registered experiment: causal ones hold recorded runs; sampling ones (ensemble, early selection,
    exploration) hold a batch of latents per step."""
    from interp.sources import load_testbed

    pipeline = getattr(cfg, "pipeline", None)
    if pipeline is not None:
        samples = pipeline.get("samples") or []
        return Plan(kind, Path(out), len(samples), pipeline.get("num_steps", 50),
                    details=["pipeline model: its weights and activations are not counted here"])  # fmt: skip
    if not all(hasattr(cfg, name) for name in ("num_steps", "frames", "n")) or not hasattr(cfg, "model") and \
            not hasattr(cfg, "models"):  # an experiment of a user's own: no fields to estimate from
        return Plan(kind, Path(out), getattr(cfg, "n", 0), 0, details=["no estimate: not a sampling experiment"])
    models = getattr(cfg, "models", None) or [cfg.model]
    adapter = load_testbed(models[0])
    num_steps = cfg.num_steps or adapter.defaults.num_steps
    sizes = getattr(cfg, "sizes", None) or [cfg.size]
    latent = max(math.prod(adapter.latent_shape(s, cfg.frames)) for s in sizes)
    if kind in CAUSAL:
        videos = cfg.n * (1 if kind == "perturb" else 2)
        layers = len(_layers(cfg, adapter)) if kind != "perturb" else 0
        tokens = math.prod(adapter.token_grid(adapter.latent_shape(cfg.size, cfg.frames)))
        per_video = num_steps * (layers * tokens * adapter.hidden_size() + 2 * latent) * FLOAT32
        memory = model_bytes(adapter) + videos * per_video
        return Plan(kind, Path(out), videos, num_steps, None, layers, 8 * 2**20, memory,
                    [f"recorded runs: {layers} layers x {num_steps} steps x {tokens} tokens per video"])  # fmt: skip
    variants = len(getattr(cfg, "seeds", [1])) * len(models)
    videos = cfg.n * len(sizes) * variants
    batch = min(getattr(cfg, "batch_size", cfg.n), cfg.n) * variants
    memory = model_bytes(adapter) * len(models) + videos * latent * FLOAT32 * 2 + batch * num_steps * latent * FLOAT32
    return Plan(kind, Path(out), videos, num_steps, disk_bytes=8 * 2**20, memory_bytes=memory,
                details=[f"{cfg.n} mazes x {len(sizes)} sizes x {variants} runs each"])


def _layers(cfg, adapter) -> list[int]:
    from activations.selection import parse_index_spec

    return parse_index_spec(getattr(cfg, "layers", "all"), adapter.num_blocks(), "layer")


def sampling_plan(command: str, videos: int, num_steps: int, adapter, out: Path, disk: int = 8 * 2**20) -> Plan:
    """Commands that sample and keep only videos and figures (generate, evaluate, ensemble)."""
    return Plan(command, Path(out), videos, num_steps, disk_bytes=disk, memory_bytes=model_bytes(adapter))


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
