"""`interp trace --model PIPELINE_FOLDER --data DIR` on tiny Wan pipelines saved to disk."""

import numpy as np
import pytest
from tiny_pipelines import BUILDERS, build_tiny_wan, write_samples

from activations import ActivationStore


@pytest.mark.parametrize("image_to_video", [False, True])
def test_trace_a_local_wan_pipeline_over_vbvr_samples(tmp_path, run_cli, image_to_video):
    model = build_tiny_wan(tmp_path / "wan", image_to_video)
    data = write_samples(tmp_path / "data", n=2)
    out = tmp_path / "store.h5"
    code, _, err = run_cli(
        "trace",
        "--model",
        model,
        "--data",
        data,
        "--height",
        32,
        "--width",
        32,
        "--num-frames",
        5,
        "--num-steps",
        3,
        "--seed",
        0,
        "--seed",
        1,
        "--out",
        out,
    )
    assert code == 0, err
    with ActivationStore(out) as store:
        assert store.layout.adapter == "wan2.1" and store.sites == ["blocks.0", "blocks.1"]
        assert store.completed_videos == [0, 1, 2, 3]
        assert store.layout.token_grid == (2, 2, 2)  # 5 frames -> 2 latent frames; 32 px -> 4 latent -> 2 tokens
        assert [store.meta(v)["sample"] for v in range(4)] == ["sample_000"] * 2 + ["sample_001"] * 2
        assert store.meta(1)["seed"] == 1 and store.meta(2)["prompt"] == "walk from green start to red goal"
        acts = store.activations("blocks.1")
        assert acts.shape == (4, 3, 8, 16) and np.isfinite(acts).all()
        assert not np.allclose(acts[0], acts[1])  # another seed, another trajectory
        assert np.isfinite(store.x_t()).all()
        # Image-to-video keeps its (mask + first-frame latent) conditioning for the probes' control.
        assert store.has_condition == image_to_video
        if image_to_video:
            cond = store.condition()
            assert cond.shape[0] == 4 and cond.shape[2:] == store.layout.latent_shape[1:]
            assert np.isfinite(cond).all() and np.array_equal(cond[0], cond[1])  # same sample, other seed


def test_pipeline_errors_are_clear(tmp_path, run_cli):
    model = build_tiny_wan(tmp_path / "wan")
    write_samples(tmp_path / "data", n=1)
    sized = ["--height", 32, "--width", 32, "--num-frames", 5]
    for extra, message in [
        ([], "needs --data"),
        (["--data", tmp_path / "nope"], "no such folder"),
        (["--data", tmp_path / "wan"], "no sample folders"),
        (["--data", tmp_path / "data", "--layers", 5, *sized], "layer 5 is out of range"),
        (["--data", tmp_path / "data", "--height", 30, "--width", 32, "--num-frames", 5], "multiples of 16"),
        (["--data", tmp_path / "data", "--height", 32, "--width", 32, "--num-frames", 6], "multiple of 4"),
    ]:
        code, _, err = run_cli("trace", "--model", model, *extra, "--out", tmp_path / "never.h5")
        last = err.strip().splitlines()[-1]  # progress bars of pipeline loading may come before it
        assert code == 2 and last.startswith("interp: error:") and message in last and "Traceback" not in err, err
    assert not list(tmp_path.glob("never*"))


@pytest.mark.parametrize("family, grid", [("cogvideox", (3, 2, 2)), ("ltx", (3, 8, 8)), ("hunyuanvideo", (3, 4, 4))])
def test_trace_cogvideox_ltx_hunyuan_pipeline_folders(tmp_path, run_cli, family, grid):
    model = BUILDERS[family](tmp_path / family)
    data = write_samples(tmp_path / "data", n=1)
    out = tmp_path / "store.h5"
    code, _, err = run_cli(
        "trace",
        "--model",
        model,
        "--data",
        data,
        "--height",
        32,
        "--width",
        32,
        "--num-frames",
        9,
        "--num-steps",
        3,
        "--max-sequence-length",
        16,
        "--out",
        out,
    )
    assert code == 0, err
    with ActivationStore(out) as store:
        assert store.layout.adapter == family and store.layout.token_grid == grid
        assert store.completed_videos == [0] and np.isfinite(store.activations("blocks.1")).all()


@pytest.mark.parametrize("family", ["wan", "cogvideox", "ltx", "hunyuanvideo"])
def test_adapter_decode_matches_the_pipeline_output(tmp_path, family):
    """Same noise, same prompt: the adapter's sampled-and-decoded video equals the pipeline's."""
    import torch
    from diffusers import DiffusionPipeline

    from interp.execution.loop import sample
    from interp.models.base import PipelineSpec
    from interp.models.loading import load_pipeline_adapter

    folder = BUILDERS[family](tmp_path / family)
    frames = 5 if family == "wan" else 9
    adapter = load_pipeline_adapter(folder, PipelineSpec(height=32, width=32, num_frames=frames), "float32")
    shape = adapter.pipeline_latent_shape(32, 32, frames)
    noise = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond = adapter.pipeline_conditioning(["solve the maze"], [None], noise, "", 32, 32, frames, 16)
        latents = sample(adapter, noise.clone(), cond, num_steps=3, scheduler=adapter.make_scheduler()).latents
        mine = adapter.decode(latents)
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    theirs = pipe(
        prompt="solve the maze",
        negative_prompt="",
        latents=noise.clone(),
        num_inference_steps=3,
        height=32,
        width=32,
        num_frames=frames,
        max_sequence_length=16,
        output_type="np",
    ).frames
    assert mine.shape == (1, frames, 32, 32, 3)
    np.testing.assert_allclose(mine / 255.0, np.asarray(theirs), atol=1.5 / 255)


SKELETON_CASES = [
    ("wan", {}), ("wan", {"image_to_video": True}), ("wan", {"two_experts": True, "unipc": True}), ("cogvideox", {}),
    ("ltx", {}), ("hunyuanvideo", {}), ("ti2v", {}), ("ti2v", {"image_to_video": False}), ("cogvideox-i2v", {}),
    ("cogvideox-i2v", {"v15": True}), ("ltx-i2v", {}),
]  # fmt: skip


def test_a_skeleton_lays_out_every_family_as_the_loaded_pipeline(tmp_path):
    """The plan's job (models from the folder's configs on the meta device) gives the very layout, field by
    field, that the loaded pipeline gives: the plan's bytes are the trace's."""
    from dataclasses import asdict

    from tiny_pipelines_i2v import build_tiny_cogvideox_i2v, build_tiny_ltx_i2v, build_tiny_wan_ti2v

    from interp.experiments.trace import TraceConfig, make_job

    builders = {**BUILDERS, "ti2v": build_tiny_wan_ti2v, "cogvideox-i2v": build_tiny_cogvideox_i2v,
                "ltx-i2v": build_tiny_ltx_i2v}  # fmt: skip
    data = write_samples(tmp_path / "data", n=2)
    for i, (family, options) in enumerate(SKELETON_CASES):
        model = builders[family](tmp_path / f"{family}-{i}", **options)
        cfg = TraceConfig(model=str(model), data=str(data), height=32, width=32, num_frames=9, num_steps=3,
                                  seeds=[0, 1], max_sequence_length=16, layers="0,1", pooling="frame")  # fmt: skip
        skeleton = make_job(cfg, skeleton=True)
        assert next(skeleton.adapter.transformer.parameters()).is_meta  # nothing was loaded
        assert asdict(skeleton.layout) == asdict(make_job(cfg).layout), (family, options)


def test_a_pipeline_trace_is_planned_without_loading_it(tmp_path, run_cli, monkeypatch, wan22):
    """`trace --dry-run` on a pipeline reads configs and safetensors headers only, and counts the weights
    once per process that loads them."""
    from diffusers import DiffusionPipeline

    from interp.experiments.trace import TraceConfig, make_job
    from interp.plans import folder_weight_bytes, human, store_plan, trace_plan

    def refuse(*args, **kwargs):
        raise AssertionError("the plan loaded the pipeline")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", refuse)
    model, data = wan22
    sized = ["--height", 32, "--width", 32, "--num-frames", 9, "--num-steps", 4, "--max-sequence-length", 16]
    for extra in ([], ["--ray", "--workers", 2]):
        code, out, err = run_cli("trace", "--model", model, "--data", data, *sized, *extra, "--dry-run",
                                 "--out", tmp_path / "t.h5")  # fmt: skip
        assert code == 0 and "plan: trace: 2 videos, 4 denoising steps each" in out, err
        assert f"weights ~{human(folder_weight_bytes(model))} counted, from their safetensors headers" in out
    assert not list(tmp_path.glob("t.h5*"))
    cfg = TraceConfig(model=str(model), data=str(data), height=32, width=32, num_frames=9, num_steps=4,
                              max_sequence_length=16)  # fmt: skip
    job = make_job(cfg, skeleton=True)
    lay = job.layout
    one_expert = sum(lay.hidden[s] for s in lay.sites if s.startswith("high."))  # one expert runs a step
    assert 0 < one_expert < sum(lay.hidden.values())
    queued = min(2**31, lay.n_tokens * one_expert * len(lay.steps) * 2)  # every step's stored fp16 copies
    for writers in (1, 2):
        tracing = store_plan("trace", lay, tmp_path / "t.h5", 1, writers=writers).memory_bytes
        assert tracing == writers * (2 * lay.n_tokens * one_expert * 4 + queued)
        total = trace_plan(job, tmp_path / "t.h5", writers=writers).memory_bytes
        assert total == tracing + writers * folder_weight_bytes(model) > tracing
    remote = trace_plan(job, tmp_path / "t.h5", writers=2, cluster="ray://head:10001")  # workers elsewhere
    assert remote.memory_bytes == 0 and any("on each worker of ray://head:10001" in d for d in remote.details)


def test_the_plan_of_a_wan_14b_trace_at_full_size_needs_no_weights(tmp_path, run_cli, monkeypatch):
    """A folder of Wan 2.1 14B configs only (no weights): the plan of tracing all 40 blocks at 50 steps of one
    480x832, 81-frame video is counted exactly (32,760 tokens x 5,120 per site and step, ~625 GB) in a
    moment, and host memory beside a device is the writer queue's bound."""
    import json
    import shutil

    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    folder = tmp_path / "wan14b"
    with torch.device("meta"):
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6,
        )  # fmt: skip
        vae = AutoencoderKLWan()
    transformer.save_config(folder / "transformer")
    vae.save_config(folder / "vae")
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0).save_config(
        folder / "scheduler"
    )
    index = {
        "_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"], "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "AutoTokenizer"],
    }  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps(index))
    data = write_samples(tmp_path / "data", n=1)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2**50))
    code, out, err = run_cli("trace", "--model", folder, "--data", data, "--device", "cuda", "--queue-mb", 512,
                             "--dry-run", "--out", tmp_path / "t.h5")  # fmt: skip
    assert code == 0, err
    latent = 16 * 21 * 60 * 104  # (z, frames, h, w) of 81 frames at 480x832
    expected = 40 * 50 * 32760 * 5120 * 2 + 2 * 50 * latent * 2 + latent * 2  # sites, x0_hat and x_t, the final
    assert "plan: trace: 1 video, 50 denoising steps each, 50 steps stored, 40 sites" in out
    assert f"writes ~{expected / 2**30:.1f} GB" in out and "memory ~512.0 MB" in out, out
    assert "32760 tokens stored per site" in out and f"block outputs ~{32760 * 5120 * 40 * 2 / 2**30:.1f} GB" in out


def test_the_planned_job_traces_with_its_samples_read_once(tmp_path, monkeypatch):
    """`interp trace` plans from the skeleton, then loads the weights for that very plan: the samples are read
    once, the skeleton is not kept beside the loaded model, and the store equals one traced without a plan."""
    import interp.sources
    from interp.experiments.trace import TraceConfig, make_job, run_trace

    model = build_tiny_wan(tmp_path / "wan", True)
    data = write_samples(tmp_path / "data", n=2)
    cfg = TraceConfig(model=str(model), data=str(data), height=32, width=32, num_frames=5, num_steps=2,
                      layers="0", dtype="float32")  # fmt: skip
    reads = []
    real = interp.sources.read_samples
    monkeypatch.setattr(interp.sources, "read_samples", lambda folder: reads.append(folder) or real(folder))
    planned = make_job(cfg, skeleton=True)
    job = planned.loaded()
    assert planned.adapter is None and not job.skeleton and job.plan is planned.plan
    assert not next(job.adapter.transformer.parameters()).is_meta
    run_trace(cfg, tmp_path / "a.h5", job=job, progress=False)
    assert len(reads) == 1
    run_trace(cfg, tmp_path / "b.h5", progress=False)
    with ActivationStore(tmp_path / "a.h5") as a, ActivationStore(tmp_path / "b.h5") as b:
        assert np.array_equal(a.activations(a.sites[0]), b.activations(b.sites[0]))
        assert np.array_equal(a.final(), b.final()) and a.meta(1) == b.meta(1)


def test_a_commands_plan_and_run_read_the_samples_once(tmp_path, monkeypatch):
    """Every generated command plans, then runs, on one config: the sample folders are read by the plan and
    the run goes on with what it read (here `perturb` on a pipeline: its plan from the skeleton)."""
    import interp.sources
    from interp.experiments.perturb import PerturbConfig, run_perturb
    from interp.plans import experiment_plan

    model = build_tiny_wan(tmp_path / "wan", True)
    data = write_samples(tmp_path / "data", n=2)
    cfg = PerturbConfig(model=str(model), data=str(data), samples=["sample_001"], height=32, width=32,
                        num_frames=5, num_steps=2, steps="1", frames_to_noise="1")  # fmt: skip
    reads = []
    real = interp.sources.read_samples
    monkeypatch.setattr(interp.sources, "read_samples", lambda folder: reads.append(folder) or real(folder))
    assert experiment_plan("perturb", cfg, tmp_path / "out").videos == 1
    result = run_perturb(cfg, progress=False)
    assert len(reads) == 1 and result.at_step  # read by the plan, not again by the run
