"""Where a causal experiment's units of work run: in this process (the default) or as Ray tasks.

Every causal experiment computes its rows from runs it records once (clean / corrupted / base
runs): a ``Sweep`` names how to record them (``prepare(cfg, adapter) -> context``) and how to
compute one unit from them (``run_unit(context, unit) -> result``). A unit is a start step for
patch, swap, perturb and flow (all rows that resume at that step, one batch), a variant of one maze
size for the ensemble. ``LocalExecutor`` runs the units on the experiment's own context; the
``RayExecutor`` sends each unit as one task carrying only the experiment's kind, its config JSON
and the unit, and each worker process records the context itself, once (cached per process, as the
trace's job is: Ray reuses worker processes). So the single-process path is the same code, and
with equal torch thread counts the results are equal bit for bit.

Ray is an optional extra: it is imported only when a ``RayExecutor`` runs.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from interp.experiments.distributed import claim_marker


@dataclass(frozen=True)
class Sweep:
    """An experiment's units of work. ``kind`` is its module under ``interp.experiments`` (where the
    worker finds this object as ``SWEEP``); ``config`` rebuilds the config from JSON there."""

    kind: str
    config: type
    prepare: Callable[[Any, Any], Any]  # (config, adapter or None) -> context: the recorded runs
    run_unit: Callable[[Any, Any], Any]  # (context, unit) -> that unit's result


class LocalExecutor:
    """Runs every unit in this process, in order, on the experiment's own context."""

    def map(self, sweep: Sweep, cfg, context, units: Sequence, progress: bool = True, desc: str = "") -> list:
        return [sweep.run_unit(context, unit) for unit in tqdm(units, disable=not progress, desc=desc, leave=False)]


def executor_or_local(executor) -> LocalExecutor | RayExecutor:
    return LocalExecutor() if executor is None else executor


# One context per worker process: the recorded runs stay in memory between units of the same sweep.
_CONTEXTS: dict[tuple[str, str], Any] = {}


def _sweep_of(kind: str) -> Sweep:
    return importlib.import_module(f"interp.experiments.{kind}").SWEEP


def run_units_task(kind: str, cfg_json: str, units: list, threads: int, fail_once: str | None) -> dict:
    """A worker's task: the results of ``units`` of the sweep ``kind`` with config ``cfg_json``.

    ``fail_once`` (tests only): a marker path; the first task to get here with no marker writes it
    and dies, as a killed worker would.
    """
    import torch

    torch.set_num_threads(threads)
    if fail_once is not None and claim_marker(fail_once, repr(units)):
        os._exit(1)
    tic = time.time()
    key = (kind, cfg_json)
    loaded = key not in _CONTEXTS
    if loaded:
        _CONTEXTS.clear()  # another sweep's runs would only hold memory
        sweep = _sweep_of(kind)
        _CONTEXTS[key] = sweep.prepare(sweep.config.from_json(cfg_json), None)
    sweep, context = _sweep_of(kind), _CONTEXTS[key]
    results = [sweep.run_unit(context, unit) for unit in units]
    worker = f"{socket.gethostname()}:{os.getpid()}"
    return {"results": results, "worker": worker, "seconds": time.time() - tic, "prepared": loaded}


@dataclass
class RayExecutor:
    """Runs each unit as a Ray task (one GPU per task where the cluster has GPUs, else
    ``threads_per_worker`` CPUs); a task whose worker dies is retried ``max_retries`` times.

    ``address``: an existing cluster ("auto", "ray://host:port"); None starts a local instance of
    ``workers`` x ``threads_per_worker`` CPUs (unless Ray is already initialised in this process).
    ``per_worker`` says, after a run, how many units, busy seconds and context recordings each
    worker had.
    """

    address: str | None = None
    workers: int = 2
    threads_per_worker: int = 1
    max_retries: int = 3
    _fail_once: str | None = None
    per_worker: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.threads_per_worker < 1 or self.max_retries < 0:
            raise ValueError("workers and threads_per_worker must be >= 1, max_retries >= 0")

    def trace(self, cfg, out, queue_bytes: int, sha256: bool = False):
        """A trace config's store at ``out``, its batches as Ray tasks (``distributed.run_trace_ray``)."""
        from interp.experiments.distributed import run_trace_ray

        return run_trace_ray(cfg, out, self.address, self.workers, self.threads_per_worker, self.max_retries,
                             sha256=sha256, queue_bytes=queue_bytes, _fail_once=self._fail_once)  # fmt: skip

    def map(self, sweep: Sweep, cfg, context, units: Sequence, progress: bool = True, desc: str = "") -> list:
        try:
            import ray
        except ImportError as err:
            raise ValueError("running on Ray needs the optional extra: pip install '.[ray]'") from err
        started_here = not ray.is_initialized()
        if started_here:
            if self.address is None:
                cpus = self.workers * self.threads_per_worker
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
        try:
            gpus = ray.cluster_resources().get("GPU", 0)
            task = ray.remote(run_units_task).options(
                max_retries=self.max_retries, num_cpus=self.threads_per_worker, num_gpus=1 if gpus else 0
            )
            cfg_json = cfg.to_json()
            futures = {
                task.remote(sweep.kind, cfg_json, [unit], self.threads_per_worker, self._fail_once): i
                for i, unit in enumerate(units)
            }
            results: list = [None] * len(units)
            remaining = list(futures)
            with tqdm(total=len(units), disable=not progress, desc=f"{desc} (Ray)", leave=False) as bar:
                while remaining:
                    done, remaining = ray.wait(remaining, num_returns=1)
                    try:
                        out = ray.get(done[0])
                    except Exception as err:  # retries exhausted: nothing of a partial sweep is kept
                        raise RuntimeError(
                            f"{sweep.kind}: unit {units[futures[done[0]]]!r} failed after {self.max_retries} "
                            f"retries ({type(err).__name__}); rerun the command"
                        ) from err
                    results[futures[done[0]]] = out["results"][0]
                    w = self.per_worker.setdefault(out["worker"], {"units": 0, "seconds": 0.0, "prepared": 0})
                    w["units"] += 1
                    w["seconds"] += out["seconds"]
                    w["prepared"] += int(out["prepared"])
                    bar.update(1)
        finally:
            if started_here:
                ray.shutdown()
        return results
