"""One writer at a time per store: result tables and a trace's index rebuilds take the store's lock,
so none renames an older copy over a newer one (renames delayed here to widen every window); a
store that cannot take a table says so in one line and the probe keeps its table in the run folder."""

import json
import os
import threading
import time

import numpy as np
import pytest

from activations import ActivationStore, StoreError, StoreLayout, StoreWriter
from activations import results as results_module
from activations.results import list_tables, read_table, write_table

GRID, HIDDEN, N_VIDEOS = (1, 2, 2), 4, 8


def _layout() -> StoreLayout:
    return StoreLayout(
        model="synthetic", adapter="none", num_steps=1, steps=[0], timesteps=[1000.0], sigmas=[1.0, 0.0],
        sites=["blocks.0"], hidden={"blocks.0": HIDDEN}, token_grid=GRID,
        pooling=json.dumps({"kind": "none", "factor": 1, "count": 0, "seed": 0}), n_tokens=4,
        latent_shape=(4, *GRID), n_videos=N_VIDEOS, video_keys=[f"v{i}" for i in range(N_VIDEOS)], dtype="float32",
    )  # fmt: skip


def _write_videos(writer: StoreWriter, videos: list[int]) -> None:
    part = writer.begin_part(videos)
    part.write_site("blocks.0", 0, np.ones((len(videos), 4, HIDDEN), np.float32))
    part.write_x0_hat(0, np.zeros((len(videos), 4, *GRID), np.float32))
    part.write_x_t(0, np.zeros((len(videos), 4, *GRID), np.float32))
    part.finish(np.zeros((len(videos), 4, *GRID), np.float32), [{}] * len(videos))


@pytest.fixture
def slow_renames(monkeypatch):
    """Every table's rename waits: a copy taken before another writer's rename would land after it."""
    real = os.replace

    def slow(src, dst):
        time.sleep(0.3)
        real(src, dst)

    monkeypatch.setattr(results_module.os, "replace", slow)


def _table(n: int) -> dict:
    return {"value": np.arange(n, dtype=float)}


def test_concurrent_tables_are_all_kept(tmp_path, slow_renames):
    store = tmp_path / "s.h5"
    with StoreWriter(store, _layout()) as writer:
        _write_videos(writer, list(range(N_VIDEOS)))
    errors: list = []

    def write(name: str) -> None:
        try:
            write_table(store, "probes", name, _table(3), {"name": name})
        except Exception as err:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert list_tables(store, "probes") == ["t0", "t1", "t2", "t3"]  # every table survived
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_a_table_written_during_a_trace_waits_and_the_index_keeps_every_video(tmp_path, slow_renames):
    store = tmp_path / "s.h5"
    done: dict = {}
    with StoreWriter(store, _layout()) as writer:
        _write_videos(writer, [0, 1, 2, 3])

        def probe() -> None:
            tic = time.monotonic()
            write_table(store, "probes", "during", _table(2), {})
            done["waited"] = time.monotonic() - tic

        thread = threading.Thread(target=probe)
        thread.start()
        time.sleep(0.5)
        assert "waited" not in done  # the trace holds the store
        _write_videos(writer, [4, 5, 6, 7])  # its last index rebuild
    thread.join()
    assert done["waited"] >= 0.5
    with ActivationStore(store) as s:
        assert s.completed_videos == list(range(N_VIDEOS))  # no stale copy renamed over the index
    assert read_table(store, "probes", "during")[0]["value"].tolist() == [0.0, 1.0]


def test_a_busy_or_full_store_refuses_a_table_in_one_line_and_the_probe_keeps_it(tmp_path, monkeypatch):
    import errno

    import pandas as pd

    from probes.run import ProbeConfig
    from probes.tables import save_results

    store = tmp_path / "s.h5"
    with StoreWriter(store, _layout()) as writer:
        _write_videos(writer, list(range(N_VIDEOS)))
        with pytest.raises(StoreError, match="another process is writing") as busy:
            write_table(store, "probes", "x", _table(2), {}, wait=0.2)
        assert "\n" not in str(busy.value)
    before = store.read_bytes()

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(results_module.shutil, "copyfile", full)  # the disk fills while the copy is made
    with pytest.raises(StoreError, match="No space left") as refused:
        write_table(store, "probes", "x", _table(2), {})
    assert "\n" not in str(refused.value)
    table = pd.DataFrame({"target": ["a"], "value": [0.5]})
    paths = save_results(table, store, ProbeConfig(targets=["a"]), tmp_path / "out")
    assert paths["table"].read_text().startswith("target,value")  # the fits are not lost
    assert "not written into the store" in paths["store_problem"] and str(paths["table"]) in paths["store_problem"]
    assert store.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))  # the store as it was
    with ActivationStore(store) as s:
        assert s.completed_videos == list(range(N_VIDEOS))


def test_a_read_only_parts_folder_is_one_line(tmp_path, monkeypatch):
    import errno

    from activations import integrity

    store = tmp_path / "s.h5"
    with StoreWriter(store, _layout()) as writer:
        _write_videos(writer, list(range(N_VIDEOS)))
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(integrity.LOCK_NAME):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(integrity.os, "open", read_only)
    with pytest.raises(StoreError, match="is not writable") as refused:
        write_table(store, "probes", "x", _table(2), {})
    assert "\n" not in str(refused.value)
