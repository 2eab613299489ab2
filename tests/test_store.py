import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from activations import ActivationStore, Pooling, StoreError, parse_index_spec
from interp.execution.loop import StepHook, initial_noise, sample
from interp.experiments.trace import TraceConfig, plan_trace, run_trace
from interp.models import testbed
from interp.tasks import maze as M

ROOT = Path(__file__).resolve().parents[1]
TINY = {"num_layers": 3, "ffn_dim": 64, "num_attention_heads": 2, "attention_head_dim": 16}


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    model = testbed.build_transformer(TINY).eval()
    folder = tmp_path / "tiny_weights"
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "sampling.json").write_text(json.dumps({"num_steps": 6}))
    return str(folder), testbed.TestbedAdapter.load(folder)


def _hook_reference(adapter, seeds, num_steps, frames=4, size=4):
    """Block outputs per step recorded with plain torch forward hooks, and x0_hat per step."""
    recorded: dict[tuple[int, int], torch.Tensor] = {}
    x0: dict[int, torch.Tensor] = {}
    x_t: dict[int, torch.Tensor] = {}
    step = {"i": -1}

    def on_step(state):
        x0[state.step] = state.x0_hat.clone()
        x_t[state.step] = state.latents.clone()

    class StepCounter(StepHook):
        def before_model(self, state):
            step["i"] = state.step

        def after_step(self, state):
            on_step(state)

    handles = [
        block.register_forward_hook(lambda m, i, o, k=k: recorded.__setitem__((step["i"], k), o.detach().clone()))
        for k, block in enumerate(adapter.transformer.blocks)
    ]
    mazes = [M.generate_maze(size, s) for s in seeds]
    noise = initial_noise(seeds, adapter.latent_shape(size, frames))
    try:
        out = sample(adapter, noise, adapter.conditioning(mazes, frames), num_steps, hooks=[StepCounter()])
    finally:
        for h in handles:
            h.remove()
    return recorded, x0, out.latents, x_t


@pytest.mark.parametrize("backend", ["nnsight", "hooks"])
def test_stored_activations_equal_torch_hook_outputs_exactly(tmp_path, tiny, backend):
    model_dir, adapter = tiny
    cfg = TraceConfig(model=model_dir, n=3, batch_size=3, dtype="float32", backend=backend)
    store_path = run_trace(cfg, tmp_path / "t.h5", progress=False)
    recorded, x0, final, x_t = _hook_reference(adapter, [0, 1, 2], 6)
    with ActivationStore(store_path) as store:
        assert store.sites == ["blocks.0", "blocks.1", "blocks.2"] and store.steps == list(range(6))
        for (step, layer), ref in recorded.items():
            got = store.activations(f"blocks.{layer}", steps=[step])[:, 0]
            assert np.array_equal(got, ref.numpy()), (step, layer)
        for step, ref in x0.items():
            assert np.array_equal(store.x0_hat(steps=[step])[:, 0], ref.numpy())
        for step, ref in x_t.items():
            assert np.array_equal(store.x_t(steps=[step])[:, 0], ref.numpy())
        assert np.array_equal(store.final(), final.numpy())
        mazes = [M.generate_maze(4, s) for s in (0, 1, 2)]
        assert np.array_equal(store.condition(), adapter.conditioning(mazes, 4).numpy())
        meta = store.meta(1)
        assert meta["maze_seed"] == 1 and "solved" in meta["verdict"]


def test_selection_and_pooling_keep_the_right_tokens(tmp_path, tiny):
    model_dir, adapter = tiny
    full = run_trace(TraceConfig(model=model_dir, n=2, dtype="float32"), tmp_path / "full.h5", progress=False)
    with ActivationStore(full) as store:
        ref = store.activations("blocks.1", steps=[0, 4])  # (2, 2, 64, hidden)
        assert store.activations("blocks.1", videos=[1], steps=[4], frames=[2]).shape == (1, 1, 16, 32)
        np.testing.assert_array_equal(store.activations("blocks.1", steps=[4], frames=[2])[:, 0], ref[:, 1, 32:48])
        np.testing.assert_array_equal(
            store.activations("blocks.1", videos=[1, 0])[0], store.activations("blocks.1", videos=[1])[0]
        )
    grid = (4, 4, 4)
    x = ref.reshape(2, 2, 4, 4, 4, -1)
    cases = {
        "frame": x.mean(axis=(3, 4)).reshape(2, 2, 4, -1),
        "spatial:2": x.reshape(2, 2, 4, 2, 2, 2, 2, -1).mean(axis=(4, 6)).reshape(2, 2, 16, -1),
        "random:10:3": ref[:, :, Pooling.parse("random:10:3").token_index(grid)],
    }
    for spec, expected in cases.items():
        cfg = TraceConfig(model=model_dir, n=2, dtype="float32", pooling=spec, steps="0,4", layers="1")
        path = run_trace(cfg, tmp_path / f"{spec.replace(':', '_')}.h5", progress=False)
        with ActivationStore(path) as store:
            assert store.sites == ["blocks.1"] and store.steps == [0, 4]
            np.testing.assert_allclose(store.activations("blocks.1"), expected, rtol=1e-5, atol=1e-5)
            if spec.startswith("random"):
                with h5py.File(path) as f:
                    assert np.array_equal(f["token_index"][()], Pooling.parse(spec).token_index(grid))
        # Selection by frame uses the stored token positions.
    with ActivationStore(tmp_path / "random_10_3.h5") as store:
        frames = store.token_positions[:, 0]
        got = store.activations("blocks.1", frames=[0])
        assert got.shape[2] == int((frames == 0).sum())


def test_sub_module_sites_and_xarray_view(tmp_path, tiny):
    model_dir, _ = tiny
    cfg = TraceConfig(model=model_dir, n=1, layers="0", subs=["attn1", "ffn"], steps="2")
    with ActivationStore(run_trace(cfg, tmp_path / "s.h5", progress=False)) as store:
        assert store.sites == ["blocks.0.attn1", "blocks.0.ffn", "blocks.0"]
        da = store.to_xarray("blocks.0.ffn")
        assert da.dims == ("video", "step", "token", "hidden") and list(da.step.values) == [2]
        assert da.sel(token=da.frame == 3).shape == (1, 1, 16, 32)


def test_impossible_specs_are_refused_before_any_compute(tmp_path, tiny):
    model_dir, adapter = tiny
    for kwargs, message in [
        ({"layers": "99"}, "layer 99 is out of range"),
        ({"steps": "6"}, "step 6 is out of range"),
        ({"steps": "3-1"}, "steps must be a number of steps from 1 to 1000, or a step selection"),
        ({"pooling": "spatial:0"}, "pooling must be 'none', 'frame', 'spatial:K'"),
        ({"size": 1}, "size"),
        ({"subs": ["mlp"]}, "subs must be a list, each one of 'attn1', 'attn2', 'ffn'"),
        ({"backend": "pyvene"}, "backend must be one of 'nnsight', 'hooks'"),
        ({"pooling": "spatial:9"}, "pooling spatial:9 is larger than the 4x4 token grid"),
    ]:
        with pytest.raises(ValueError, match=message):  # the config itself (interp.validation) or its plan
            run_trace(TraceConfig(model=model_dir, n=2, **kwargs), tmp_path / "never.h5", adapter=adapter,
                      progress=False)  # fmt: skip
    assert not list(tmp_path.glob("never*"))
    assert parse_index_spec("0-39:4", 40, "layer")[-1] == 36


def test_foreign_corrupt_and_other_version_files_get_one_clear_error(tmp_path, tiny):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(StoreError, match="not a readable HDF5 file"):
        ActivationStore(junk)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreError, match="not a video-dit-interp activation store"):
        ActivationStore(foreign)
    model_dir, _ = tiny
    path = run_trace(TraceConfig(model=model_dir, n=1, steps="0", layers="0"), tmp_path / "v.h5", progress=False)
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(StoreError, match="schema version 99"):
        ActivationStore(path)
    with pytest.raises(StoreError, match="schema version 99"):  # and the writer will not resume it either
        run_trace(TraceConfig(model=model_dir, n=1, steps="0", layers="0"), path, progress=False)
    truncated = tmp_path / "trunc.h5"
    truncated.write_bytes(Path(path).read_bytes()[:200])
    with pytest.raises(StoreError):
        ActivationStore(truncated)
    with pytest.raises(FileNotFoundError):
        ActivationStore(tmp_path / "missing.h5")


def test_resuming_with_other_settings_is_refused(tmp_path, tiny):
    model_dir, _ = tiny
    run_trace(TraceConfig(model=model_dir, n=2, steps="0", layers="0"), tmp_path / "r.h5", progress=False)
    with pytest.raises(StoreError, match="other settings"):
        run_trace(TraceConfig(model=model_dir, n=2, steps="0", layers="1"), tmp_path / "r.h5", progress=False)


def test_a_store_resumes_from_another_checkout_of_the_shipped_testbed(tmp_path, monkeypatch):
    """The folder the weights were read from (``_name_or_path`` of the model config) is not a setting: a store of
    ``--model testbed`` begun in one checkout resumes in another (the same name, the same weights elsewhere);
    weights of another config under that name are refused."""
    import json
    import shutil

    from activations import ActivationStore
    from interp.models import registry

    cfg = TraceConfig(n=2, steps="0", layers="0", num_steps=4)
    run_trace(cfg, tmp_path / "m.h5", progress=False)
    entry, folder = registry.resolve("testbed")
    checkout = Path(shutil.copytree(folder, tmp_path / "other_checkout"))
    monkeypatch.setitem(registry._NAMED, "testbed", (entry, checkout))
    run_trace(cfg, tmp_path / "m.h5", progress=False)  # opens, checks, finds every video done
    with ActivationStore(tmp_path / "m.h5") as store:
        assert store.completed_videos == [0, 1]
    config = json.loads((checkout / "config.json").read_text())
    (checkout / "config.json").write_text(json.dumps({**config, "eps": 1e-5}))
    with pytest.raises(StoreError, match="model_config differ"):
        run_trace(cfg, tmp_path / "m.h5", progress=False)


KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from interp.experiments.trace import TraceConfig, run_trace
run_trace(TraceConfig.from_json(open(sys.argv[1]).read()), sys.argv[2], progress=False)
"""


def test_kill_9_then_resume_loses_no_completed_video(tmp_path, tiny):
    model_dir, _ = tiny
    cfg = TraceConfig(model=model_dir, n=10, batch_size=1, num_steps=12, dtype="float32")
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    store_path = tmp_path / "k.h5"
    parts = tmp_path / "k.h5.parts"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "cfg.json"), str(store_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )

    def listed_complete() -> int:
        try:
            with h5py.File(store_path, "r") as f:
                return int(f["videos/complete"][()].sum())
        except (OSError, KeyError):
            return 0

    deadline = time.time() + 120
    while time.time() < deadline and listed_complete() < 3:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with ActivationStore(store_path) as store:
        done = store.completed_videos
        assert 3 <= len(done) < 10, done
        assert done == list(range(len(done)))  # finished in order, nothing half-written counted
        for v in done:
            assert np.isfinite(store.activations("blocks.0", videos=[v])).all()
        with pytest.raises(KeyError, match="not complete"):
            store.activations("blocks.0", videos=[9])
    # Parts renamed just before the kill (index not yet rewritten) are picked up, not recomputed.
    on_disk = len(list(parts.glob("part_*.h5")))
    assert on_disk >= len(done)
    run_trace(cfg, store_path, progress=False)  # resume
    reference = run_trace(cfg, tmp_path / "ref.h5", progress=False)
    with ActivationStore(store_path) as resumed, ActivationStore(reference) as ref:
        assert resumed.completed_videos == list(range(10))
        assert len(list(parts.glob("part_*.h5"))) == 10 and not list(parts.glob("*.tmp"))
        for site in ref.sites:
            assert np.array_equal(resumed.activations(site), ref.activations(site))
        assert [resumed.meta(v) for v in range(10)] == [ref.meta(v) for v in range(10)]


def test_plan_reports_layout(tiny):
    _, adapter = tiny
    plan = plan_trace(TraceConfig(n=3, steps="0-5:2", layers="0,2", pooling="frame"), adapter)
    assert plan.steps == [0, 2, 4] and plan.sites == ["blocks.0", "blocks.2"] and plan.layout.n_tokens == 4
    assert len(plan.layout.sigmas) == 7 and plan.layout.sigmas[-1] == 0


@pytest.mark.parametrize("chunks", [(5, 1, 7, 4), (2, 1, 3, 4), (3, 1, 7, 4), (1, 1, 2, 4), (5, 1, 7, 2)])
def test_direct_chunk_writes_equal_plain_h5py_writes(tmp_path, chunks):
    from activations.slabs import SlabWriter

    rng = np.random.default_rng(0)
    data = [rng.standard_normal((5, 7, 4)).astype(np.float16) for _ in range(3)]
    with h5py.File(tmp_path / "a.h5", "w") as f:
        direct = f.create_dataset("d", shape=(5, 3, 7, 4), dtype="float16", chunks=chunks, fillvalue=np.nan)
        plain = f.create_dataset("p", shape=(5, 3, 7, 4), dtype="float16", chunks=chunks, fillvalue=np.nan)
        for pos in (2, 0):  # out of order, and step 1 never written: it must read as the fill value
            SlabWriter(direct).write(pos, data[pos])
            plain[:, pos] = data[pos]
    with h5py.File(tmp_path / "a.h5", "r") as f:
        np.testing.assert_array_equal(f["d"][()], f["p"][()])
        assert np.isnan(f["d"][:, 1]).all()


def test_result_tables_live_in_the_main_file_and_survive_a_resume(tmp_path, tiny):
    from activations.results import list_tables, read_table, write_table

    model_dir, _ = tiny
    cfg = TraceConfig(model=model_dir, n=4, batch_size=2, num_steps=2)
    path = run_trace(TraceConfig(**{**cfg.__dict__, "n": 4}), tmp_path / "t.h5", progress=False)
    # Drop the second part as if the run had stopped after the first one, then add a table.
    for part in sorted((tmp_path / "t.h5.parts").glob("part_*.h5"))[1:]:
        part.unlink()
    write_table(path, "probes", "run1", {"layer": np.arange(3), "target": np.array(["a", "b", "c"])}, {"x": 1})
    run_trace(cfg, path, progress=False)  # resumes: rebuilds the index twice
    assert list_tables(path, "probes") == ["run1"]
    columns, config = read_table(path, "probes", "run1")
    assert list(columns["target"]) == ["a", "b", "c"] and config == {"x": 1}
    with ActivationStore(path) as store:
        assert store.completed_videos == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="plain name"):
        write_table(path, "probes", "a/b", {"x": np.arange(2)}, {})
