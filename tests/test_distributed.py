"""Tracing on a local Ray instance: two workers give the single-process store byte for byte, a killed
worker loses nothing, and probes read the sharded store like any other."""

import h5py
import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="Ray is the optional extra '.[ray]' (installed with '.[dev]')")

from activations.reader import ActivationStore  # noqa: E402
from interp.experiments.distributed import run_trace_ray  # noqa: E402
from interp.experiments.trace import TraceConfig, run_trace  # noqa: E402

CFG = TraceConfig(n=6, batch_size=2, steps="0-19:3", layers="0-7:2", first_seed=40)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def single_store(tmp_path_factory, shipped_adapter):
    """The single-process trace with the workers' thread count: torch's CPU reductions depend on the
    number of threads (1 vs 2 threads differ by up to 2e-3 in fp16), the sharding does not."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_trace(CFG, tmp_path_factory.mktemp("single") / "t.h5", adapter=shipped_adapter, progress=False)
    finally:
        torch.set_num_threads(threads)


def _datasets(path) -> dict[str, bytes]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return {k: (v.tobytes() if isinstance(v, np.ndarray) and v.dtype != object else list(v)) for k, v in out.items()}


def _assert_same_store(a, b) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        assert da[name] == db[name], f"{name} differs"


def _parts(path) -> list[list[int]]:
    videos = []
    for part in sorted((path.parent / (path.name + ".parts")).glob("part_*.h5")):
        with h5py.File(part, "r") as f:
            videos.append([int(v) for v in f.attrs["video_indices"]])
    return videos


def test_two_workers_equal_the_single_process_trace_byte_for_byte(local_ray, single_store, tmp_path):
    summary = run_trace_ray(CFG, tmp_path / "t.h5", workers=2, threads_per_worker=1, progress=False)
    assert summary.videos_traced == 6 and not summary.failed_batches
    assert sum(w["videos"] for w in summary.per_worker.values()) == 6
    assert all(w["loads"] <= 1 for w in summary.per_worker.values())  # the model loads once per worker
    _assert_same_store(single_store, tmp_path / "t.h5")
    again = run_trace_ray(CFG, tmp_path / "t.h5", workers=2, progress=False)  # a rerun skips everything
    assert again.videos_traced == 0 and again.videos_skipped == 6


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(local_ray, single_store, tmp_path):
    store = tmp_path / "t.h5"
    summary = run_trace_ray(CFG, store, progress=False, max_retries=2, _fail_once=str(tmp_path / "died"))
    assert (tmp_path / "died").is_file()  # a worker did die mid-part
    assert summary.videos_traced == 6
    assert sorted(v for part in _parts(store) for v in part) == list(range(6))
    _assert_same_store(single_store, store)


def test_a_killed_worker_without_retries_then_a_rerun_completes_the_store(local_ray, single_store, tmp_path):
    store = tmp_path / "t.h5"
    with pytest.raises(RuntimeError, match="rerun to complete it"):
        run_trace_ray(CFG, store, progress=False, max_retries=0, _fail_once=str(tmp_path / "died"))
    with ActivationStore(store) as st:  # readable, listing exactly the finished videos
        assert st.n_videos == 6 and len(st.completed_videos) == 4
    summary = run_trace_ray(CFG, store, progress=False, max_retries=0)
    assert summary.videos_traced == 2 and summary.videos_skipped == 4
    assert sorted(v for part in _parts(store) for v in part) == list(range(6))
    assert not list((tmp_path / "t.h5.parts").glob("*.tmp"))
    _assert_same_store(single_store, store)


def test_probes_give_the_same_table_on_the_sharded_and_the_single_store(local_ray, single_store, tmp_path):
    from interp.tasks.maze_labels import MAZE
    from probes.run import ProbeConfig, run_probes

    sharded = tmp_path / "t.h5"
    run_trace_ray(CFG, sharded, workers=2, progress=False)
    cfg = ProbeConfig(targets=["on_path"], steps="0-19:6", layers="0-7:4")
    a = run_probes(single_store, cfg, progress=False, providers=[MAZE])
    b = run_probes(sharded, cfg, progress=False, providers=[MAZE])
    pd.testing.assert_frame_equal(a, b)
    # Consolidated into one file (no parts folder beside it): the same bytes, the same table.
    from activations.consolidate import consolidate_store

    one = consolidate_store(sharded, tmp_path / "elsewhere" / "one.h5")
    assert not (one.parent / "one.h5.parts").exists()
    _assert_same_store(sharded, one)
    pd.testing.assert_frame_equal(a, run_probes(one, cfg, progress=False, providers=[MAZE]))
