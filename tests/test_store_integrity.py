"""No damaged store is read as data: moved, renamed and ``%`` stores read their parts; missing,
truncated or overwritten parts are refused on open or found by ``interp verify``; ``--repair`` and a
rerun recompute exactly what was lost; one writer at a time; a full disk leaves the old index."""

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from tiny_pipelines import save_tiny_testbed

from activations import ActivationStore, StoreError, StoreLayout, StoreWriter
from activations.consolidate import consolidate_store
from activations.integrity import file_sha256
from interp.experiments.trace import TraceConfig, run_trace

ROOT = Path(__file__).resolve().parents[1]
TINY = {"num_layers": 2, "ffn_dim": 32, "num_attention_heads": 2, "attention_head_dim": 8}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(config, store) of an untouched 6-video store in 3 parts, traced once for the module."""
    root = tmp_path_factory.mktemp("integrity")
    folder = save_tiny_testbed(root / "tiny_weights", TINY, num_steps=2)
    cfg = TraceConfig(model=str(folder), n=6, batch_size=2, dtype="float32")
    return cfg, run_trace(cfg, root / "ref" / "ref.h5", progress=False)


def _copy(store: Path, to: Path) -> Path:
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(store, to)
    shutil.copytree(store.with_name(store.name + ".parts"), to.with_name(to.name + ".parts"))
    return to


def _parts(store: Path) -> list[Path]:
    return sorted(store.with_name(store.name + ".parts").glob("part_*.h5"))


def _contents(path: Path) -> dict:
    with ActivationStore(path) as s:
        out = {site: s.activations(site) for site in s.sites}
        out.update(x0_hat=s.x0_hat(), x_t=s.x_t(), final=s.final(), condition=s.condition())
        out["meta"] = [s.meta(v) for v in s.completed_videos]
        out["videos"] = s.completed_videos
    return out


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert np.isfinite(a[key]).all() and np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_a_store_moved_or_renamed_with_its_parts_folder_reads_equal_values(reference, tmp_path):
    _, ref = reference
    expected = _contents(ref)
    moved = _copy(ref, tmp_path / "a" / "ref.h5")
    (tmp_path / "b").mkdir()
    shutil.move(moved, tmp_path / "b" / "ref.h5")
    shutil.move(moved.with_name("ref.h5.parts"), tmp_path / "b" / "ref.h5.parts")
    _assert_equal(_contents(tmp_path / "b" / "ref.h5"), expected)
    with h5py.File(tmp_path / "b" / "ref.h5", "r") as f:  # plain h5py too: the source names are relative
        assert np.array_equal(f["x0_hat"][()], expected["x0_hat"])
    renamed = tmp_path / "c" / "renamed.h5"
    renamed.parent.mkdir()
    shutil.move(tmp_path / "b" / "ref.h5", renamed)
    shutil.move(tmp_path / "b" / "ref.h5.parts", renamed.with_name("renamed.h5.parts"))
    _assert_equal(_contents(renamed), expected)
    one = consolidate_store(renamed, tmp_path / "one.h5")  # copies the parts, not NaN
    _assert_equal(_contents(one), expected)
    with h5py.File(renamed, "a") as f:  # a store written before /parts: its mappings list the parts
        del f["parts"]
    _assert_equal(_contents(renamed), expected)


def test_a_percent_sign_in_the_store_path_reads_the_right_data(reference, tmp_path):
    cfg, ref = reference
    path = run_trace(cfg, tmp_path / "100%" / "a%%b%d.h5", progress=False)
    expected = _contents(ref)
    _assert_equal(_contents(path), expected)
    with h5py.File(path, "r") as f:  # HDF5 reads the escaped source names back as the real ones
        assert np.array_equal(f["sites/blocks.1"][()], expected["blocks.1"])


def test_missing_parts_are_refused_and_repair_plus_rerun_recomputes_exactly_them(
    reference, tmp_path, run_cli, monkeypatch
):
    cfg, ref = reference
    store = _copy(ref, tmp_path / "s.h5")
    kept = {p.name: p.stat().st_mtime_ns for p in _parts(store)}
    lost = _parts(store)[1]
    lost.unlink()
    with pytest.raises(StoreError, match=rf"{lost.name} \(videos 2-3\): is missing.*interp verify"):
        ActivationStore(store)
    code, out, _ = run_cli("verify", store)
    assert code == 1
    assert f"damaged: {lost.name} (videos 2-3): is missing" in out and "1 problem (" in out
    code, out, err = run_cli("energy", store, "--out", tmp_path / "energy")
    assert code == 2 and err.count("\n") == 1 and lost.name in err  # one line, no traceback
    code, out, _ = run_cli("verify", store, "--repair")
    assert code == 0 and "recompute videos 2-3" in out
    with ActivationStore(store) as s:
        assert s.completed_videos == [0, 1, 4, 5]
    began = []
    original = StoreWriter.begin_part
    monkeypatch.setattr(StoreWriter, "begin_part", lambda self, v: began.append(list(v)) or original(self, v))
    run_trace(cfg, store, progress=False)
    assert began == [[2, 3]]
    assert {p.name: p.stat().st_mtime_ns for p in _parts(store) if p.name != lost.name} == {
        k: v for k, v in kept.items() if k != lost.name
    }  # the others untouched
    _assert_equal(_contents(store), _contents(ref))
    code, out, _ = run_cli("verify", store, "--checksums")
    assert code == 0 and "ok: 3 parts, 6/6 videos" in out


def test_a_deleted_parts_folder_is_refused_and_verify_lists_every_part(reference, tmp_path, run_cli):
    _, ref = reference
    store = _copy(ref, tmp_path / "s.h5")
    shutil.rmtree(tmp_path / "s.h5.parts")
    with pytest.raises(StoreError, match=r"part_0000000_0002.h5 \(videos 0-1\): is missing \(and 2 more"):
        ActivationStore(store)
    code, out, _ = run_cli("verify", store)
    assert code == 1 and out.count("is missing") == 3 and "damaged videos: 0-5" in out


def test_garbage_in_a_part_is_found_by_its_chunk_checksums_and_moved_aside(reference, tmp_path, run_cli):
    _, ref = reference
    store = _copy(ref, tmp_path / "s.h5")
    with h5py.File(store, "r") as f:  # no SHA-256 by default: the chunks' Fletcher-32 guard the data
        assert list(f["parts/sha256"].asstr()[()]) == ["", "", ""]
    part = _parts(store)[2]
    size = part.stat().st_size
    with h5py.File(part, "r") as f:
        chunk = f["sites/blocks.1"].id.get_chunk_info(0)
    with open(part, "r+b") as f:  # garbage inside one chunk of the data, size unchanged
        f.seek(chunk.byte_offset + 8)
        f.write(np.random.default_rng(0).bytes(min(64, chunk.size - 8)))
    assert part.stat().st_size == size
    code, out, _ = run_cli("verify", store)  # structure only: it opens, shapes and flags agree
    assert code == 0
    code, out, _ = run_cli("verify", store, "--checksums")
    assert code == 1 and f"damaged: {part.name} (videos 4-5): sites/blocks.1 has a chunk that fails" in out
    code, out, _ = run_cli("verify", store, "--checksums", "--repair")
    assert code == 0 and f"damaged/{part.name}" in out
    assert (part.parent / "damaged" / part.name).is_file() and not part.exists()
    with ActivationStore(store) as s:
        assert s.completed_videos == [0, 1, 2, 3]


def test_a_recorded_sha256_finds_bytes_no_chunk_checksum_covers(reference, tmp_path, run_cli):
    cfg, _ = reference
    store = run_trace(cfg, tmp_path / "s.h5", progress=False, sha256=True)
    with h5py.File(store, "r") as f:
        assert list(f["parts/sha256"].asstr()[()]) == [file_sha256(p) for p in _parts(store)]
    part = _parts(store)[1]
    with h5py.File(part, "r") as f:  # a small unchunked dataset: no Fletcher-32 of its own
        assert not f["nonfinite"].fletcher32
        offset = f["nonfinite"].id.get_offset()
    with open(part, "r+b") as f:
        f.seek(offset)
        f.write(b"\x01")
    code, out, _ = run_cli("verify", store)  # structure only
    assert code == 0
    code, out, _ = run_cli("verify", store, "--checksums")
    assert code == 1 and f"damaged: {part.name} (videos 2-3): differs from the SHA-256" in out


def test_a_truncated_part_or_a_damaged_index_is_refused_with_one_line(reference, tmp_path, run_cli):
    _, ref = reference
    store = _copy(ref, tmp_path / "s.h5")
    part = _parts(store)[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 3])
    with pytest.raises(StoreError, match=rf"{part.name} \(videos 0-1\): is \d+ bytes, \d+ when written"):
        ActivationStore(store)
    code, _, err = run_cli("chain", store, "--out", tmp_path / "chain")
    assert code == 2 and err.startswith("interp: error:") and err.count("\n") == 1
    index = _copy(ref, tmp_path / "i.h5")
    with h5py.File(index, "a") as f:
        del f["videos/complete"]
    with pytest.raises(StoreError, match="damaged: index: has no videos/complete"):
        ActivationStore(index)
    code, out, _ = run_cli("verify", index, "--repair")
    assert code == 0
    _assert_equal(_contents(index), _contents(ref))
    with pytest.raises(StoreError, match="is a directory, not a store file"):
        ActivationStore(tmp_path)
    code, _, err = run_cli("verify", tmp_path)
    assert code == 2 and err == f"interp: error: {tmp_path} is a directory, not a store file\n"
    code, _, err = run_cli("verify", ".")
    assert code == 2 and err == "interp: error: . is a directory, not a store file\n"


HOLDER = """
import sys, time
from pathlib import Path
from activations import ActivationStore, StoreWriter
with ActivationStore(sys.argv[1]) as s:
    layout = s.layout
with StoreWriter(sys.argv[1], layout) as w:
    w.begin_part([0])
    tmp = Path(sys.argv[1] + ".parts") / "part_0000000_0001.h5.tmp"
    while not tmp.exists():
        time.sleep(0.01)
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_is_refused_while_another_process_holds_the_store(reference, tmp_path):
    _, ref = reference
    store = tmp_path / "s.h5"
    with ActivationStore(ref) as s:
        layout = StoreLayout.from_json(s.layout.to_json())
    StoreWriter(store, layout).close()  # an empty store of the same layout
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        tmp = tmp_path / "s.h5.parts" / "part_0000000_0001.h5.tmp"
        with pytest.raises(StoreError, match="another process is writing"):
            StoreWriter(store, layout)
        with pytest.raises(StoreError, match="another process is writing"):
            StoreWriter(store, layout, index=False)  # shard writers wait for the store's writer too
        assert tmp.exists()  # nothing of the first writer's was deleted
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    StoreWriter(store, layout).close()  # released when its holder is gone
    a, b = StoreWriter(store, layout, index=False), StoreWriter(store, layout, index=False)
    with pytest.raises(StoreError, match="another process is writing"):
        StoreWriter(store, layout)  # shard writers share the lock with each other only
    a.close()
    b.close()


def _layout(n_videos: int) -> StoreLayout:
    return StoreLayout(
        model="synthetic", adapter="none", num_steps=2, steps=[0, 1], timesteps=[1000.0, 500.0],
        sigmas=[1.0, 0.5, 0.0], sites=["site"], hidden={"site": 8}, token_grid=(1, 2, 2),
        pooling=json.dumps({"kind": "none", "factor": 1, "count": 0, "seed": 0}), n_tokens=4,
        latent_shape=(2, 1, 2, 2), n_videos=n_videos, video_keys=[f"v{i}" for i in range(n_videos)],
        dtype="float32",
    )  # fmt: skip


def _write_video(writer: StoreWriter, v: int) -> None:
    part = writer.begin_part([v])
    for step in (0, 1):
        part.write_site("site", step, np.full((1, 4, 8), v + step, np.float32))
        part.write_x0_hat(step, np.full((1, 2, 1, 2, 2), v, np.float32))
        part.write_x_t(step, np.full((1, 2, 1, 2, 2), -v, np.float32))
    part.finish(np.full((1, 2, 1, 2, 2), v, np.float32), [{"v": v}])


def test_a_full_disk_while_rebuilding_the_index_keeps_the_old_index(tmp_path, monkeypatch):
    from activations import index

    store, layout = tmp_path / "s.h5", _layout(2)
    calls, original = [], index._write_file

    def full_disk(tmp, image):
        calls.append(tmp)
        if len(calls) == 3:  # the rebuild after the second part
            tmp.write_bytes(image[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        original(tmp, image)

    monkeypatch.setattr(index, "_write_file", full_disk)
    with pytest.raises(StoreError, match=r"rebuilding the index .* No space left on device; the finished parts"):
        with StoreWriter(store, layout) as writer:
            _write_video(writer, 0)
            _write_video(writer, 1)
    assert not (tmp_path / "s.h5.tmp").exists()
    with ActivationStore(store) as s:
        assert s.completed_videos == [0] and s.x0_hat().max() == 0
    monkeypatch.undo()
    with StoreWriter(store, layout) as writer:  # a rerun picks the finished part up
        assert writer.pending() == []
    with ActivationStore(store) as s:
        assert s.completed_videos == [0, 1] and np.array_equal(s.activations("site")[1, 1], np.full((4, 8), 2))


def test_bytes_changed_inside_a_data_chunk_fail_its_checksum_on_every_read_path(reference, tmp_path, run_cli):
    """Each part dataset carries HDF5's per-chunk Fletcher-32 (written by the direct chunk writes
    themselves); a changed chunk is one error line pointing to verify, never values."""
    _, ref = reference
    store = _copy(ref, tmp_path / "s.h5")
    part = _parts(store)[1]
    with h5py.File(part, "r") as f:
        site = sorted(f["sites"])[0]
        ds = f[f"sites/{site}"]
        assert ds.fletcher32
        chunk = ds.id.get_chunk_info(0)
    with open(part, "r+b") as f:  # two data bytes of the first chunk, size unchanged
        f.seek(chunk.byte_offset + 8)
        f.write(b"\x12\x34")
    with ActivationStore(store) as s:
        s.activations(site, videos=[0, 1])  # another part: still reads
        with pytest.raises(StoreError, match="failed its checksum.*interp verify"):
            s.activations(site)
    code, _, err = run_cli("probe", store, "--target", "on_path", "--out", tmp_path / "p", "--max-tokens", "8")
    assert code == 2 and "failed its checksum" in err and "Traceback" not in err
    code, out, _ = run_cli("verify", store, "--checksums")
    assert code == 1 and f"damaged: {part.name}" in out


def test_the_direct_chunk_checksum_equals_hdf5s_own(tmp_path):
    from activations.slabs import fletcher32

    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((3, 40, 24)), np.zeros((2, 8, 16)), np.full((2, 8, 16), np.nan)]
    blocks.append(np.frombuffer(b"\xff\xff" * 256, dtype=np.float16).reshape(2, 8, 16))  # every sum 0 mod 65535
    for a in (np.ascontiguousarray(b, dtype=np.float16) for b in blocks):
        with h5py.File(tmp_path / "c.h5", "w") as f:
            ds = f.create_dataset("x", shape=a.shape, dtype=a.dtype, chunks=a.shape, fletcher32=True)
            ds[...] = a
            _, raw = ds.id.read_direct_chunk((0, 0, 0))
        assert raw == a.tobytes() + fletcher32(a.tobytes())


def test_an_index_beside_another_stores_parts_is_refused_by_every_reader(reference, tmp_path, run_cli):
    """Two stores of the same settings: the index of one beside the parts of the other serves nothing."""
    cfg, ref = reference
    other = run_trace(TraceConfig(**{**cfg.__dict__, "first_seed": 100}), tmp_path / "other" / "ref.h5",
                      progress=False)  # fmt: skip
    mixed = _copy(ref, tmp_path / "mixed" / "ref.h5")
    shutil.rmtree(mixed.with_name("ref.h5.parts"))
    shutil.copytree(other.with_name("ref.h5.parts"), mixed.with_name("ref.h5.parts"))
    with pytest.raises(StoreError, match="belongs to another store") as refused:
        ActivationStore(mixed)
    assert "\n" not in str(refused.value)
    code, out, err = run_cli("verify", mixed, "--checksums")
    assert code != 0 and "belongs to another store" in out + err
    code, _, err = run_cli("chain", mixed, "--out", tmp_path / "chain")
    assert code == 2 and "belongs to another store" in err and not (tmp_path / "chain" / "convergence.json").exists()
    with pytest.raises(StoreError, match="belongs to another store"):  # a resume does not adopt them either
        StoreWriter(mixed, ActivationStore(ref).layout)
    # A foreign part dropped beside a store's own: verify names it.
    stray = _copy(ref, tmp_path / "stray" / "ref.h5")
    foreign = _parts(other)[0]
    shutil.copyfile(foreign, stray.with_name("ref.h5.parts") / "part_0000099_0001.h5")
    code, out, err = run_cli("verify", stray)
    assert code != 0 and "part_0000099_0001.h5" in out + err and "belongs to another store" in out + err


def test_the_store_id_survives_a_rename_a_copy_and_consolidation(reference, tmp_path):
    _, ref = reference
    with h5py.File(ref, "r") as f:
        store_id = f.attrs["store_id"]
    assert isinstance(store_id, str) and len(store_id) == 32
    for part in _parts(ref):
        with h5py.File(part, "r") as f:
            assert f.attrs["store_id"] == store_id
    renamed = _copy(ref, tmp_path / "copy" / "renamed.h5")
    with ActivationStore(renamed) as s:  # opens: the id is in the files, not the names
        assert len(s.completed_videos) == 6
    with h5py.File(consolidate_store(renamed, tmp_path / "one.h5"), "r") as f:
        assert f.attrs["store_id"] == store_id
    legacy = _copy(ref, tmp_path / "legacy" / "ref.h5")  # written before ids: still opens, and resumes
    for path in (legacy, *_parts(legacy)):
        with h5py.File(path, "a") as f:
            del f.attrs["store_id"]
    with ActivationStore(legacy) as s:
        assert len(s.completed_videos) == 6


def test_verify_checks_dtypes_and_reads_back_non_finite_values(reference, tmp_path, run_cli):
    _, ref = reference
    one = consolidate_store(ref, tmp_path / "one.h5")
    code, out, _ = run_cli("verify", one, "--checksums")
    assert code == 0 and "ok" in out and "non-finite values read" not in out
    nan_acts = consolidate_store(ref, tmp_path / "nan_acts.h5")
    with h5py.File(nan_acts, "a") as f:
        f["sites/blocks.0"][0, 1, :3] = np.nan  # three tokens of video 0 at step 1
    code, out, _ = run_cli("verify", nan_acts, "--checksums")
    assert code == 0 and "non-finite values read at blocks.0 step 1: 48 nan, 0 inf" in out  # 3 tokens x 16 hidden
    nan_x0 = consolidate_store(ref, tmp_path / "nan_x0.h5")
    with h5py.File(nan_x0, "a") as f:
        f["x0_hat"][2] = np.nan  # all-NaN data for a video marked complete
    code, out, err = run_cli("verify", nan_x0, "--checksums")
    assert code != 0 and "data (videos 2): x0_hat holds NaN or Inf for videos listed complete" in out + err
    foreign = consolidate_store(ref, tmp_path / "int8.h5")
    with h5py.File(foreign, "a") as f:  # a foreign file: int8 data under a float32 layout
        shape = f["sites/blocks.1"].shape
        del f["sites/blocks.1"]
        f.create_dataset("sites/blocks.1", data=np.zeros(shape, np.int8))
    code, out, err = run_cli("verify", foreign)
    assert code != 0 and "sites/blocks.1 is int8, the layout says float32" in out + err


def test_verify_reads_an_expert_that_never_ran_as_a_note(tmp_path, run_cli):
    """Wan 2.2 traced at high-noise steps only: the low-noise expert's sites are NaN throughout."""
    sites = ["high.blocks.0", "low.blocks.0"]
    layout = StoreLayout(
        model="synthetic", adapter="none", num_steps=2, steps=[0, 1], timesteps=[1000.0, 500.0],
        sigmas=[1.0, 0.5, 0.0], sites=sites, hidden={s: 4 for s in sites}, token_grid=(1, 2, 2),
        pooling=json.dumps({"kind": "none", "factor": 1, "count": 0, "seed": 0}), n_tokens=4,
        latent_shape=(4, 1, 2, 2), n_videos=2, video_keys=["a", "b"], dtype="float32",
    )  # fmt: skip
    with StoreWriter(tmp_path / "s.h5", layout) as writer:
        part = writer.begin_part([0, 1])
        for step in (0, 1):
            part.write_site("high.blocks.0", step, np.ones((2, 4, 4), np.float32))  # low never runs
            part.write_x0_hat(step, np.zeros((2, 4, 1, 2, 2), np.float32))
            part.write_x_t(step, np.zeros((2, 4, 1, 2, 2), np.float32))
        part.finish(np.zeros((2, 4, 1, 2, 2), np.float32), [{}, {}])
    code, out, err = run_cli("verify", tmp_path / "s.h5", "--checksums")
    assert code == 0, out + err
    assert "1 expert sites never ran at the stored steps (first: low.blocks.0)" in out
