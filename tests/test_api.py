"""The Python API a notebook user lives in: open, run with a cache, intervene, probe from arrays."""

from functools import partial

import numpy as np
import pytest
import torch

from interp.api import (
    Intervention,
    add_direction,
    block,
    copy_from,
    frame_tokens,
    maze_inputs,
    mean,
    open_model,
    run,
    zero,
)  # fmt: skip
from probes.arrays import Probe, fit_probe, fit_probe_on_store
from probes.run import ProbeConfig, read_results, run_probes

STEPS = 5  # the mechanics need few steps (the testbed still solves these mazes at 5, checked below)


@pytest.fixture(scope="module")
def testbed():
    model = open_model("testbed")
    noise, cond, mazes = maze_inputs(model, n=2)
    return model, noise, cond, mazes, run(model, noise, cond, sites=[block(4)], num_steps=STEPS)


def test_run_caches_named_sites_and_reproduces_itself_when_patched_from_itself(testbed):
    model, noise, cond, mazes, clean = testbed
    go = partial(run, model, noise, cond, num_steps=STEPS)
    assert clean.solved(mazes) == [True, True]
    acts = clean.activations(block(4))
    assert acts.shape == (STEPS, 2, 64, 128) and clean.steps(block(4)) == list(range(STEPS))
    again = go(interventions=[copy_from(clean, block(4))])
    assert torch.equal(again.final, clean.final)
    unchanged = go(interventions=[add_direction(block(4), np.zeros(128), 5.0)])
    assert torch.equal(unchanged.final, clean.final)
    with pytest.raises(ValueError, match="was not recorded"):
        clean.activations(block(2))


def test_interventions_replace_only_their_tokens_and_steps(testbed):
    model, noise, cond, mazes, clean = testbed
    go = partial(run, model, noise, cond, num_steps=STEPS)
    first = frame_tokens(model, noise, [0])
    assert first == list(range(16))  # 4x4 maze: one token per cell, frame-major
    out = go(sites=[block(4)], interventions=[zero(block(4), steps=[3], tokens=first)])
    acts = out.activations(block(4))
    assert torch.all(acts[3, :, :16] == 0) and torch.all(acts[3, :, 16:].abs().sum(-1) > 0)
    assert torch.equal(acts[:3], clean.activations(block(4))[:3])  # before the intervention: the clean run
    assert go(interventions=[zero(block(4))]).solved(mazes) == [False, False]
    twice = go(interventions=[Intervention(block(4), lambda v, step: 2 * v, steps=[STEPS - 1])])
    assert not torch.equal(twice.final, clean.final)
    ref = go(sites=[block(4)], interventions=[mean(block(4), reference=clean, steps=[0])])
    assert torch.allclose(ref.activations(block(4))[0, 0], clean.activations(block(4))[0].mean(0), atol=1e-6)


def test_a_probe_from_arrays_saves_its_weights_and_gives_a_direction(tmp_path):
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(12)
    direction /= np.linalg.norm(direction)
    y = rng.integers(0, 2, (16, 20))
    x = rng.standard_normal((16, 20, 12)) + 3 * (2 * y[..., None] - 1) * direction + 4.0  # offset: raw space
    probe = fit_probe(x, y)
    assert probe.score > 0.95 and probe.interval[0] <= probe.score <= probe.interval[1]
    assert probe.direction() @ direction > 0.9
    assert (probe.predict(x) == y).mean() > 0.95  # weights and bias work on unstandardised features
    back = Probe.load(probe.save(tmp_path / "p.safetensors"))
    assert np.array_equal(back.weights, probe.weights) and back.score == probe.score
    with pytest.raises(ValueError, match="must match"):
        fit_probe(x, y[:, :5])


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from test_probes import _synthetic_store

    path = tmp_path_factory.mktemp("s") / "s.h5"
    return path, _synthetic_store(path, n_videos=20)


def test_run_probes_writes_the_store_and_takes_label_arrays(small_store):
    from activations import ActivationStore

    store_path, labels = small_store
    with ActivationStore(store_path) as store:
        blocks = store.to_xarray("blocks", videos=[0, 1], steps=[1])
        assert blocks.dims == ("layer", "video", "step", "token", "hidden") and list(blocks.layer) == list(range(6))
        assert np.array_equal(blocks.sel(layer=4).values, store.activations(block(4), videos=[0, 1], steps=[1]))
    cfg = ProbeConfig(targets=[], layers="1,4", steps="1", folds=2, name="api")
    table = run_probes(store_path, cfg, progress=False, labels={"planted": labels})
    back = read_results(store_path, "api")  # no save_results needed
    assert list(back["target"]) == ["planted", "planted"] and np.allclose(back["value"], table["value"])
    assert (back["value_lo"] <= back["value"]).all() and (back["value"] <= back["value_hi"]).all()
    assert back["value"].iloc[1] > 0.9 > back["value"].iloc[0]  # planted from layer 3 on
    probe = fit_probe_on_store(store_path, block(4), 1, labels, folds=2)  # the same split and fit as the table's
    assert probe.weights.shape == (1, 16) and abs(probe.score - back["value"].iloc[1]) < 0.02


def test_inputs_are_the_commands_inputs_for_any_model(testbed, tmp_path):
    """`inputs` is the one source the commands use: on the testbed it equals `maze_inputs`; on a pipeline it
    reads sample folders into rows a run takes, one noise draw per seed; bad fields are one clear error."""
    from tiny_pipelines import build_tiny_wan, write_samples

    from interp.api import inputs
    from interp.validation import UsageError

    model, noise, cond, mazes, _ = testbed
    same_noise, same_cond, videos = inputs(model, n=2)
    assert torch.equal(same_noise, noise) and torch.equal(same_cond, cond)
    assert [v.sample.truth.seed for v in videos] == [m.seed for m in mazes]
    wan = open_model(build_tiny_wan(tmp_path / "wan", image_to_video=True))
    data = write_samples(tmp_path / "data", n=2)
    w_noise, w_cond, w_videos = inputs(wan, data=str(data), seeds=[3, 4], height=32, width=32, num_frames=5)
    assert [v.key for v in w_videos] == ["sample_000-seed3", "sample_000-seed4", "sample_001-seed3", "sample_001-seed4"]
    assert w_noise.shape[0] == 4 and torch.equal(w_noise[0], w_noise[2])  # a row's noise is its seed's alone
    one_noise, one_cond, _ = inputs(wan, data=str(data), samples=["sample_000"], seeds=[3], height=32, width=32,
                                    num_frames=5)  # fmt: skip
    assert torch.equal(one_noise[0], w_noise[0])
    out = run(wan, one_noise, one_cond, num_steps=2)
    assert torch.isfinite(out.final).all()
    with pytest.raises(UsageError, match="seeds must be"):
        inputs(wan, data=str(data), seeds=[-1])

