"""Frame-attention statistics in the store (issue 30, item 2): `trace --attention` keeps them per (video,
step, head) beside the activations, readable with plain h5py and as a labelled xarray Dataset, counted by
the plan, equal to the statistics of the run itself (the guidance branch the store keeps), and the
activations are those of a trace without them."""

import h5py
import numpy as np
import torch
from tiny_pipelines import BUILDERS, write_samples

from activations import ActivationStore
from interp.execution.attention_kernel import TokenLayout
from interp.execution.attention_stats import FrameAttentionRecorder
from interp.execution.loop import StepHook, sample
from interp.experiments.trace import TraceConfig, make_job, run_trace
from interp.sources import load_testbed


class PerStep(StepHook):
    """The recorder's records of every step, kept apart."""

    def __init__(self, recorder):
        self.recorder, self.steps = recorder, []

    def before_model(self, state):
        self.recorder.records.clear()

    def after_step(self, state):
        self.steps.append({k: list(v) for k, v in self.recorder.records.items()})


def test_the_testbed_store_keeps_the_runs_own_frame_attention(tmp_path):
    cfg = TraceConfig(n=2, steps="0,5", layers="0,3", num_steps=6, dtype="float32", attention=True)
    path = run_trace(cfg, tmp_path / "a.h5", progress=False)
    plain = run_trace(TraceConfig(**{**cfg.__dict__, "attention": False}), tmp_path / "p.h5", progress=False)
    with ActivationStore(path) as store, ActivationStore(plain) as other:
        assert store.attention_sites == ["blocks.0.attn1", "blocks.3.attn1"]
        for site in store.sites:  # the run is the one without statistics
            assert np.array_equal(store.activations(site), other.activations(site))
        ds = store.attention("blocks.3.attn1")
        assert ds["mass"].dims == ("video", "step", "head", "query_frame", "key_frame")
        assert ds["mass"].shape == (2, 2, 4, 4, 4) and list(ds.step.values) == [0, 5]
        np.testing.assert_allclose(ds["mass"].sum("key_frame") + ds["text"], 1.0, atol=1e-5)
        one_head = store.attention("blocks.3.attn1", videos=[1], steps=[5], heads=[2])
        assert one_head["entropy"].shape == (1, 1, 1, 4)
    with h5py.File(path) as f:  # plain h5py, no toolkit
        assert f["attention/blocks.0.attn1/mass"].shape == (2, 2, 4, 4, 4)
    model = load_testbed("testbed")
    from interp.api import maze_inputs

    noise, cond, _ = maze_inputs(model, n=2)
    layout = TokenLayout(model.token_grid(tuple(noise.shape[1:])))
    recorder = FrameAttentionRecorder({"blocks.3.attn1": (model.site_module("blocks.3.attn1"), layout)})
    per_step = PerStep(recorder)
    with recorder:
        sample(model, noise, cond, 6, hooks=[per_step])
    with ActivationStore(path) as store:
        stored = store.attention("blocks.3.attn1")
        for i, step in enumerate((0, 5)):
            expected = per_step.steps[step]["blocks.3.attn1"][0]  # the testbed: one call per step
            np.testing.assert_allclose(stored["mass"].values[:, i], expected.mass.numpy(), atol=1e-6)
            np.testing.assert_allclose(stored["entropy"].values[:, i], expected.entropy.numpy(), atol=1e-5)


def test_a_guided_pipeline_keeps_its_conditional_rows_and_the_plan_counts_them(tmp_path):
    model = BUILDERS["cogvideox"](tmp_path / "cog")  # both guidance halves in one call: [uncond; cond]
    data = write_samples(tmp_path / "data", n=1)
    common = dict(model=str(model), data=str(data), height=32, width=32, num_frames=9, num_steps=2, layers="0",
                  max_sequence_length=16, guidance_scale=6.0, dtype="float32")  # fmt: skip
    with_stats = make_job(TraceConfig(**common, attention=True), skeleton=True)
    without = make_job(TraceConfig(**common), skeleton=True)
    from interp.plans import store_plan, trace_plan

    extra = store_plan("t", with_stats.layout, tmp_path / "x.h5", 1).disk_bytes - store_plan(
        "t", without.layout, tmp_path / "x.h5", 1).disk_bytes
    heads, frames = with_stats.layout.extra["attention"]["heads"]["blocks.0.attn1"], 3
    assert extra == 2 * heads * frames * (frames + 2) * 4  # 2 steps x (mass, text, entropy), float32
    assert any("frame-attention statistics of 1 attention sites" in d for d in trace_plan(with_stats, tmp_path /
                                                                                           "x.h5").details)
    path = run_trace(TraceConfig(**common, attention=True), tmp_path / "c.h5", progress=False)
    job = make_job(TraceConfig(**common))
    adapter = job.adapter
    noise, cond = TraceConfig(**common).inputs(adapter, job.plan.videos)
    layout = TokenLayout(adapter.token_grid(tuple(noise.shape[1:])), adapter.attention_text)
    recorder = FrameAttentionRecorder({"blocks.0.attn1": (adapter.site_module("blocks.0.attn1"), layout)})
    per_step = PerStep(recorder)
    with recorder:
        sample(adapter, noise, cond, 2, hooks=[per_step])
    rows = adapter.forward_calls(noise, torch.tensor(1.0), cond)[0].branches["cond"]
    with ActivationStore(path) as store:
        stored = store.attention("blocks.0.attn1")
        for step in (0, 1):
            expected = per_step.steps[step]["blocks.0.attn1"][0]
            np.testing.assert_allclose(stored["mass"].values[:, step], expected.mass[rows].numpy(), atol=1e-6)
            np.testing.assert_allclose(stored["text"].values[:, step], expected.text[rows].numpy(), atol=1e-6)
            assert not np.allclose(expected.mass[rows].numpy(), expected.mass[0:1].numpy())  # the branches differ


def test_attention_maps_read_a_store_into_figures_and_locality(tmp_path, run_cli):
    import json

    code, _, err = run_cli("trace", "-n", 2, "--layers", "0,7", "--steps", "0,10,19", "--attention",
                           "--out", tmp_path / "t.h5")  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli("attention", "--store", tmp_path / "t.h5", "--out", tmp_path / "maps")
    assert code == 0, err
    assert "attention across frames (2 videos, 2 layers): own-frame share" in out
    for name in ("frame_maps.png", "locality.png", "attention.json", "run.json"):
        assert (tmp_path / "maps" / name).stat().st_size > 0
    record = json.loads((tmp_path / "maps" / "attention.json").read_text())
    loc = {k: np.array(v, dtype=float) for k, v in record["locality"].items()}
    assert loc["same frame"].shape == (2, 3)
    total = loc["same frame"] + loc["adjacent frames"] + loc["distant frames"] + loc["text"]
    np.testing.assert_allclose(total, 1.0, atol=2e-3)  # every query frame's attention, all of it (fp16 store)
    with ActivationStore(tmp_path / "t.h5") as store:
        mass = store.attention("blocks.7.attn1")["mass"].values.astype(float)
    np.testing.assert_allclose(np.array(record["mass"], float)[1], mass.mean(axis=(0, 2)), atol=1e-6)
    code, _, err = run_cli("trace", "-n", 1, "--layers", "0", "--steps", "0", "--out", tmp_path / "plain.h5")
    assert code == 0, err
    code, _, err = run_cli("attention", "--store", tmp_path / "plain.h5", "--out", tmp_path / "x")
    assert code == 2 and "keeps no frame-attention statistics: trace it with --attention" in err


def test_both_experts_and_the_cross_attention_are_kept_per_key_group(tmp_path, run_cli):
    """Wan 2.2 (two experts): each step's statistics are the expert's that ran (NaN for the other). Wan 2.1
    I2V: ``--cross-attention`` keeps, per key group (the image's CLIP tokens, then the text), the entropy and
    output norm of the conditional call, equal to the run's own; the figures read them; a model with no
    cross-attention to read is refused before any run."""
    from tiny_pipelines import build_tiny_wan

    data = str(write_samples(tmp_path / "data", n=1))
    common = dict(data=data, height=32, width=32, num_frames=9, num_steps=4, layers="0", dtype="float32")
    two = build_tiny_wan(tmp_path / "w22", two_experts=True)
    path = run_trace(TraceConfig(model=str(two), **common, attention=True, cross_attention=True), tmp_path / "a.h5",
                     progress=False)  # fmt: skip
    with ActivationStore(path) as store:
        assert store.attention_sites == ["high.blocks.0.attn1", "high.blocks.0.attn2", "low.blocks.0.attn1",
                                         "low.blocks.0.attn2"]  # fmt: skip
        adapter = make_job(TraceConfig(model=str(two), **common), skeleton=True).adapter
        ran = [adapter.expert_at(torch.tensor(t)) for t in store.layout.timesteps[:4]]
        assert set(ran) == {"high", "low"}
        for expert in ("high", "low"):
            mass = store.attention(f"{expert}.blocks.0.attn1")["mass"].values
            text = store.attention(f"{expert}.blocks.0.attn2")
            assert text["norm"].dims == ("video", "step", "head", "keys", "query_frame")
            assert list(text["keys"].values) == ["text"]
            for step, who in enumerate(ran):
                assert np.isfinite(mass[:, step]).all() == (who == expert) and np.isnan(mass[:, step]).all() == (
                    who != expert)  # fmt: skip
                assert np.isfinite(text["entropy"].values[:, step]).all() == (who == expert)
            np.testing.assert_allclose(np.nansum(mass, -1)[:, [s for s, w in enumerate(ran) if w == expert]], 1.0,
                                       atol=1e-5)  # fmt: skip

    i2v = build_tiny_wan(tmp_path / "i2v", image_to_video=True, image_encoder=True)
    cfg = TraceConfig(model=str(i2v), **common, cross_attention=True)
    path = run_trace(cfg, tmp_path / "i.h5", progress=False)
    job = make_job(cfg)
    adapter = job.adapter
    noise, cond = cfg.inputs(adapter, job.plan.videos)
    layout = TokenLayout(adapter.token_grid(tuple(noise.shape[1:])), None, ("image", "text"))
    recorder = FrameAttentionRecorder({"blocks.0.attn2": (adapter.site_module("blocks.0.attn2"), layout)})
    per_step = PerStep(recorder)
    with recorder:
        sample(adapter, noise, cond, 4, hooks=[per_step])
    with ActivationStore(path) as store:
        assert store.attention_sites == ["blocks.0.attn2"]
        stored = store.attention("blocks.0.attn2")
        assert list(stored["keys"].values) == ["image", "text"]
        for step in range(4):
            cond_call = per_step.steps[step]["blocks.0.attn2"][0]  # Wan: the conditional call first
            np.testing.assert_allclose(stored["norm"].values[:, step], cond_call.norm.numpy(), rtol=1e-5)
            np.testing.assert_allclose(stored["entropy"].values[:, step], cond_call.entropy.numpy(), rtol=1e-5)
    code, out, err = run_cli("attention", "--store", path, "--out", tmp_path / "maps")
    assert code == 0, err
    import json

    share = np.array(json.loads((tmp_path / "maps" / "attention.json").read_text())["context"]["blocks.0.attn2"]
                     ["share"], float)  # fmt: skip
    assert share.shape == (4, 2, 3) and np.allclose(share.sum(1), 1.0) and (share > 0).all()
    code, _, err = run_cli("trace", "-n", 1, "--cross-attention", "--out", tmp_path / "t.h5")
    assert code == 2 and "has no cross-attention to read" in err and len(err.strip().splitlines()) == 1
