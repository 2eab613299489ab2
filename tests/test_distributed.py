"""Tracing on a local Ray instance: two workers give the single-process store byte for byte, a killed
worker loses nothing, and probes read the sharded store like any other."""

import json

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


def _assert_same_store(a, b, only_in_b: frozenset[str] = frozenset()) -> None:
    da, db = _datasets(a), _datasets(b)
    db = {k: v for k, v in db.items() if k not in only_in_b}
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
    # a queue bound below one slab: every copy waits for the disk (back-pressure), the bytes are the same
    summary = run_trace_ray(CFG, tmp_path / "t.h5", workers=2, threads_per_worker=1, progress=False, queue_bytes=4096)
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
    from activations.nonfinite import nonfinite_totals

    assert np.array_equal(nonfinite_totals(one), nonfinite_totals(sharded))  # the parts' counts, summed
    _assert_same_store(sharded, one, only_in_b=frozenset({"nonfinite"}))
    pd.testing.assert_frame_equal(a, run_probes(one, cfg, progress=False, providers=[MAZE]))


# -- causal sweeps and ensembles on Ray: the same units as one process, as Ray tasks ---------------
SWEEP_STEPS = 6  # tiny runs: the equality, not the science, is under test


@pytest.fixture
def one_thread():
    """Equal thread counts in the driver, the single-process run and the workers: bit equality."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _on_ray(**options):
    from interp.experiments.executors import RayExecutor

    return RayExecutor(workers=2, threads_per_worker=1, **options)


def _same_grid(a, b) -> None:
    np.testing.assert_array_equal(a.per_pair, b.per_pair)  # NaN where a pair is answered alike, on both
    np.testing.assert_array_equal(a.grid.values, b.grid.values)
    assert a.extra == b.extra
    assert (a.videos is None) == (b.videos is None)
    for name in a.videos or {}:
        np.testing.assert_array_equal(a.videos[name], b.videos[name])


def test_patch_and_swap_on_ray_equal_the_single_process_sweep(local_ray, shipped_adapter, one_thread):
    from interp.experiments.patch import PatchConfig, run_patch
    from interp.experiments.swap import SwapConfig, run_swap

    patch = PatchConfig(n=2, num_steps=SWEEP_STEPS, steps="0-5:2", layers="0,4", span="onward")
    ray_executor = _on_ray()
    _same_grid(run_patch(patch, shipped_adapter, False), run_patch(patch, shipped_adapter, False, ray_executor))
    assert sum(w["units"] for w in ray_executor.per_worker.values()) == 3  # one task per start step
    assert all(w["prepared"] <= 1 for w in ray_executor.per_worker.values())  # runs recorded once per worker
    swap = SwapConfig(n=2, num_steps=SWEEP_STEPS, steps="0,3", layers="0,4")
    _same_grid(run_swap(swap, shipped_adapter, False), run_swap(swap, shipped_adapter, False, _on_ray()))


def test_perturb_flow_and_ensemble_on_ray_equal_the_single_process_run(local_ray, shipped_adapter, one_thread):
    from interp.experiments.ensemble import EnsembleConfig, run_ensemble
    from interp.experiments.flow import FlowConfig, run_flow
    from interp.experiments.perturb import PerturbConfig, run_perturb

    perturb = PerturbConfig(n=2, num_steps=SWEEP_STEPS, steps="0,3", frames_to_noise="1,3")
    a, b = run_perturb(perturb, shipped_adapter, False), run_perturb(perturb, shipped_adapter, False, _on_ray())
    assert (a.baseline, a.at_step, a.at_frame) == (b.baseline, b.at_step, b.at_frame)
    assert sorted(a.at_step) == [0, 3] and sorted(a.at_frame) == [1, 3]
    for name in a.videos:
        np.testing.assert_array_equal(a.videos[name], b.videos[name])
    flow = FlowConfig(n=2, num_steps=SWEEP_STEPS, inject_steps="1,3", layers="0,4", strength=0.5)
    a, b = run_flow(flow, shipped_adapter, False), run_flow(flow, shipped_adapter, False, _on_ray())
    np.testing.assert_array_equal(a.cka.values, b.cka.values)
    np.testing.assert_array_equal(a.x0_hat_cka, b.x0_hat_cka)
    assert np.isfinite(a.cka.values[:, 3:]).all() and a.sensitivity == b.sensitivity
    ensemble = EnsembleConfig(sizes=[4, 5], n=3, ensemble_sizes=[1, 2], ks=[1], merges=["mean"], temperatures=[0.8],
                              num_steps=SWEEP_STEPS)  # fmt: skip
    rows = run_ensemble(ensemble, shipped_adapter, False)
    assert rows == run_ensemble(ensemble, shipped_adapter, False, executor=_on_ray())
    assert len(rows) == 2 * 5  # per size: single seed, best of 2, the ensemble, shrunk noise, temperature


def test_a_killed_sweep_worker_is_retried_and_the_result_still_equals(local_ray, shipped_adapter, one_thread, tmp_path):
    from interp.experiments.patch import PatchConfig, run_patch

    # Rows of a step in batches of one (to fit a device), scored by the continuous latent metric.
    cfg = PatchConfig(n=2, num_steps=SWEEP_STEPS, steps="0-5:2", layers="0,4", span="onward", metric="latent",
                      max_batch=1)  # fmt: skip
    single = run_patch(cfg, shipped_adapter, False)
    retried = run_patch(cfg, shipped_adapter, False, _on_ray(max_retries=2, _fail_once=str(tmp_path / "died")))
    assert (tmp_path / "died").is_file()  # a worker did die holding a start step
    _same_grid(single, retried)
    one_batch = run_patch(PatchConfig(**{**vars(cfg), "max_batch": None}), shipped_adapter, False)
    np.testing.assert_allclose(single.per_pair, one_batch.per_pair, rtol=0, atol=1e-6)  # CPU kernels vary by batch


def test_the_patch_command_with_ray_writes_the_single_process_result(local_ray, run_cli, one_thread, tmp_path):
    import json

    from interp.cli_options import UsageError, ray_executor
    from interp.experiments.patch import PatchConfig, run_patch

    cfg = PatchConfig(n=2, num_steps=SWEEP_STEPS, steps="0,3", layers="0")
    args = ["-n", "2", "--num-steps", str(SWEEP_STEPS), "--steps", "0,3", "--layers", "0", "--threads", "1"]
    code, _, err = run_cli("patch", *args, "--ray", "--workers", "2", "--threads-per-worker", "1", "--out", tmp_path)
    assert code == 0, err
    single = json.loads(json.dumps({"config": cfg.to_dict(), **run_patch(cfg, progress=False).record()}))
    assert json.loads((tmp_path / "result.json").read_text()) == single and len(single["values"]) == 2
    with pytest.raises(UsageError, match="--workers"):  # before anything runs
        ray_executor({"ray": True, "ray_address": None, "workers": 0, "threads_per_worker": 1})


def test_frame_attention_on_ray_equals_the_single_process_run(local_ray, shipped_adapter, one_thread, tmp_path):
    """Issue 30, item 7: the attention statistics traced by Ray workers are the single process's byte for
    byte, and the knockout sweep's units on Ray score as in one process."""
    from interp.experiments.knockout import KnockoutConfig, run_knockout

    cfg = TraceConfig(n=4, batch_size=2, steps="0,9", layers="0,5", first_seed=60, attention=True)
    single = run_trace(cfg, tmp_path / "a.h5", adapter=shipped_adapter, progress=False)
    summary = run_trace_ray(cfg, tmp_path / "b.h5", workers=2, threads_per_worker=1, progress=False)
    assert summary.videos_traced == 4 and not summary.failed_batches
    _assert_same_store(single, tmp_path / "b.h5")
    with h5py.File(next((tmp_path / "b.h5.parts").glob("part_*.h5")), "r") as f:  # the statistics are in parts
        assert "attention" in f
    knock = KnockoutConfig(n=2, num_steps=SWEEP_STEPS, steps="0,3", layers="0,4", span="onward")
    a, b = run_knockout(knock, shipped_adapter, False), run_knockout(knock, shipped_adapter, False, _on_ray())
    assert a.rows == b.rows and len(a.rows) == 2 * 2


def test_saes_on_ray_equal_the_single_process_saes(local_ray, single_store, tmp_path, one_thread):
    """`interp sae train --ray`: one Ray task per SAE (per slab, or per layer when step-shared) writes the same
    SAELens files and the same quality rows as one process."""
    from interp.experiments.sae import SAEConfig, run_sae

    for shared in (False, True):
        cfg = SAEConfig(store=str(single_store), steps="0,9", layers="0,4", training_tokens=4096, batch_size=256,
                        buffer_tokens=1024, k=8, splice=False, shared=shared)  # fmt: skip
        executor = _on_ray()
        here = run_sae(cfg, tmp_path / f"here{shared}", progress=False)
        there = run_sae(cfg, tmp_path / f"ray{shared}", progress=False, executor=executor)
        assert here.rows == there.rows and len(here.rows) == 4
        assert sum(w["units"] for w in executor.per_worker.values()) == (2 if shared else 4)  # a task per SAE
        for row in here.rows:
            a, b = (tmp_path / f"{w}{shared}" / row["path"] for w in ("here", "ray"))
            assert (a / "sae_weights.safetensors").read_bytes() == (b / "sae_weights.safetensors").read_bytes()
            assert json.loads((a / "cfg.json").read_text()) == json.loads((b / "cfg.json").read_text())
