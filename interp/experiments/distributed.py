"""Tracing on Ray: many workers fill one logical store.

The store is already a main file of HDF5 virtual datasets over part files (``activations.writer``),
so shards are parts: each Ray task traces one batch of videos (the same contiguous batches as the
single-process loop, so the assignment is deterministic and the bytes are the same) and writes its
own part file, with a shard writer that never touches the main file. The driver creates the store
first and rebuilds the index (the manifest) from the parts at the end, so the reader, the probes
and the report open it exactly like a single-process store.

- A rerun skips every batch whose part is on disk.
- A worker that dies loses only its unfinished part (written to ``*.tmp``, renamed when complete);
  Ray retries the task (``max_retries``), and if retries run out the driver still rebuilds the
  index from what finished, so a rerun completes the store.
- Each worker process loads the model once (cached per process; Ray reuses worker processes).
- One GPU per task where the cluster has GPUs, CPU otherwise.

Ray is an optional extra (``pip install .[ray]``); nothing else imports this module.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from activations.schema import part_path
from activations.writer import DEFAULT_QUEUE_BYTES, StoreWriter

# One job per process: the model stays loaded between tasks of the same trace.
_JOB_CACHE: dict[str, object] = {}


def claim_marker(path: str, text: str) -> bool:
    """Create ``path`` if no one has (tests' kill hook): atomic, so of two workers starting
    together exactly one claims it, where exists-then-write let both die."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def _make_job(cfg_json: str):
    """The trace job of a config, loaded once per process."""
    if cfg_json not in _JOB_CACHE:
        _JOB_CACHE.clear()  # another trace's model would only hold memory
        from interp.experiments.trace import TraceConfig, make_job

        _JOB_CACHE[cfg_json] = make_job(TraceConfig.from_json(cfg_json))
    return _JOB_CACHE[cfg_json]


def trace_shard(
    cfg_json: str, out: str, videos: list[int], threads: int, fail_once: str | None,
    queue_bytes: int = DEFAULT_QUEUE_BYTES,
) -> dict:  # fmt: skip
    """A worker's task: trace ``videos`` into their own part of the store at ``out``. The writer thread runs
    beside a GPU only: on the CPU a worker holds just the cores it asked Ray for, all busy with torch.

    ``fail_once`` (tests only): a marker path; the first process to get here with no marker writes
    it and dies after starting the part, as a killed worker would.
    """
    import torch

    torch.set_num_threads(threads)
    tic = time.time()
    loaded = cfg_json not in _JOB_CACHE
    job = _make_job(cfg_json)
    background = torch.device(job.adapter.device).type != "cpu"
    with StoreWriter(out, job.layout, index=False, max_queue_bytes=queue_bytes, background=background) as writer:
        if part_path(writer.parts, videos).exists():  # a retry after the part was published
            return {"videos": [], "seconds": 0.0, "worker": _worker_name(), "loaded_model": loaded}
        if fail_once is not None and claim_marker(fail_once, str(videos)):
            writer.begin_part(videos)
            time.sleep(0.5)  # the part's .tmp file is on disk
            os._exit(1)
        job.trace_part(writer, videos)
    return {"videos": videos, "seconds": time.time() - tic, "worker": _worker_name(), "loaded_model": loaded}


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class RaySummary:
    """What a Ray trace did: per worker, the videos, busy seconds and model loads; and the whole job."""

    store: Path
    videos_traced: int
    videos_skipped: int
    seconds: float
    per_worker: dict[str, dict] = field(default_factory=dict)
    failed_batches: list[list[int]] = field(default_factory=list)

    @property
    def videos_per_second(self) -> float:
        return self.videos_traced / self.seconds if self.seconds > 0 else float("nan")

    def table(self) -> str:
        lines = [f"{'worker':<28} {'videos':>6} {'busy s':>7} {'videos/s':>9} {'model loads':>11}"]
        for name, w in sorted(self.per_worker.items()):
            rate = w["videos"] / w["seconds"] if w["seconds"] > 0 else float("nan")
            lines.append(f"{name:<28} {w['videos']:>6} {w['seconds']:>7.1f} {rate:>9.2f} {w['loads']:>11}")
        lines.append(
            f"{'all':<28} {self.videos_traced:>6} {self.seconds:>7.1f} {self.videos_per_second:>9.2f}"
            f" (skipped {self.videos_skipped} already complete)"
        )
        return "\n".join(lines)


def run_trace_ray(
    cfg,
    out: str | Path,
    address: str | None = None,
    workers: int = 2,
    threads_per_worker: int = 1,
    max_retries: int = 3,
    progress: bool = True,
    sha256: bool = False,
    queue_bytes: int = DEFAULT_QUEUE_BYTES,
    _fail_once: str | None = None,
) -> RaySummary:
    """Trace ``cfg`` (a ``TraceConfig``) on Ray into the store at ``out``.

    ``address``: an existing cluster ("auto", "ray://host:port", ...); None starts a local Ray
    instance with ``workers`` CPUs. Every check (config, model, store settings) runs before any
    task is sent: the layout is planned in this process from the model's skeleton (a pipeline's
    weights are never read here). ``queue_bytes``: each worker's writer queue bound (as ``run_trace``).
    """
    try:
        import ray
    except ImportError as err:
        raise ValueError("tracing on Ray needs the optional extra: pip install '.[ray]'") from err
    from tqdm.auto import tqdm

    from interp.experiments.trace import batches, write_trace_files

    if workers < 1 or threads_per_worker < 1 or max_retries < 0 or queue_bytes < 1:
        raise ValueError("workers, threads_per_worker and queue_bytes must be >= 1, max_retries >= 0")
    from interp.experiments.trace import make_job

    cfg_json = cfg.to_json()
    planned = make_job(cfg, skeleton=True)
    layout, batch_size = planned.layout, planned.batch_size
    del planned  # the workers load the model
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            ray.init(num_cpus=workers * threads_per_worker, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        resources = {"num_cpus": threads_per_worker, "num_gpus": 1 if gpus else 0}
        with StoreWriter(out, layout) as writer:  # creates or checks the store; clears stale .tmp parts
            pending = writer.pending()
        todo = batches(pending, batch_size)
        task = ray.remote(trace_shard).options(max_retries=max_retries, **resources)
        tic = time.time()
        futures = {
            task.remote(cfg_json, str(out), videos, threads_per_worker, _fail_once, queue_bytes): videos
            for videos in todo
        }
        summary = RaySummary(out, 0, layout.n_videos - len(pending), 0.0)
        bar = tqdm(total=len(pending), disable=not progress, desc=f"tracing on Ray ({workers} workers)")
        remaining = list(futures)
        first_error: BaseException | None = None
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            try:
                result = ray.get(done[0])
            except Exception as err:  # retries exhausted: the rest still finishes, the index is rebuilt
                summary.failed_batches.append(futures[done[0]])
                first_error = first_error or err
                continue
            w = summary.per_worker.setdefault(result["worker"], {"videos": 0, "seconds": 0.0, "loads": 0})
            w["videos"] += len(result["videos"])
            w["seconds"] += result["seconds"]
            w["loads"] += int(result["loaded_model"])
            summary.videos_traced += len(result["videos"])
            bar.update(len(futures[done[0]]))
            bar.set_postfix({k.split(":")[-1]: v["videos"] for k, v in summary.per_worker.items()})
        bar.close()
        summary.seconds = time.time() - tic
    finally:
        if started_here:
            ray.shutdown()
    with StoreWriter(out, layout, sha256=sha256):  # the index rebuilt from every part (hashing them if asked)
        pass
    write_trace_files(cfg, out)
    if first_error is not None:
        raise RuntimeError(
            f"{len(summary.failed_batches)} batch(es) failed after {max_retries} retries "
            f"(videos {summary.failed_batches}); the store lists what finished, rerun to complete it"
        ) from first_error
    return summary
