"""Scheduler state is part of a trajectory: a run resumed at any step, with no patch, reproduces the
run it was cut from, on a multistep solver (UniPC, as released Wan pipelines sample) as on Euler;
and the adapter's run equals diffusers' own ``pipe(...)``."""

import numpy as np
import pytest
import torch

from interp.execution.loop import sample
from interp.execution.patching import Patch, record_run, run_patched
from interp.models.base import PipelineSpec
from interp.models.loading import load_pipeline_adapter

NUM_STEPS = 8


@pytest.fixture(scope="module")
def wan22_unipc(tmp_path_factory):
    from tiny_pipelines import build_tiny_wan, write_samples

    root = tmp_path_factory.mktemp("unipc")
    folder = build_tiny_wan(root / "wan", image_to_video=True, two_experts=True, unipc=True)
    data = write_samples(root / "data", n=2)
    adapter = load_pipeline_adapter(folder, PipelineSpec(32, 32, 5), "float32")
    from PIL import Image

    images = [Image.open(data / f"sample_{i:03d}" / "first_frame.png").convert("RGB") for i in range(2)]
    shape = adapter.pipeline_latent_shape(32, 32, 5)
    noise = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0)).expand(2, *shape).contiguous()
    with torch.no_grad():
        conds = [adapter.pipeline_conditioning(["solve the maze"], [im], noise[i : i + 1], "", 32, 32, 5, 16)
                 for i, im in enumerate(images)]  # fmt: skip
    from interp.execution.patching import stack_conditioning

    return folder, adapter, noise, stack_conditioning(conds), images


def test_the_recorded_run_equals_the_pipeline_call(wan22_unipc):
    folder, adapter, noise, cond, images = wan22_unipc
    from diffusers import DiffusionPipeline

    assert type(adapter.make_scheduler()).__name__ == "UniPCMultistepScheduler"
    run = record_run(adapter, noise, cond, NUM_STEPS, ["high.blocks.0", "low.blocks.1"])
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    theirs = pipe(
        image=images[0], prompt="solve the maze", negative_prompt="", latents=noise[:1].clone(), height=32, width=32,
        num_frames=5, num_inference_steps=NUM_STEPS, max_sequence_length=16, output_type="latent",
    ).frames  # fmt: skip
    torch.testing.assert_close(run.final[:1], theirs.float(), rtol=0, atol=1e-5)


def test_resuming_at_every_step_reproduces_the_uninterrupted_run(wan22_unipc):
    _, adapter, noise, cond, _ = wan22_unipc
    sites = ["high.blocks.0", "low.blocks.0"]
    run = record_run(adapter, noise, cond, NUM_STEPS, sites)
    scale = float(run.final.abs().max())
    for s in range(NUM_STEPS):
        resumed = run_patched(adapter, run, cond, run, [[], []], [0, 1], [0, 1], NUM_STEPS, start_step=s)
        torch.testing.assert_close(resumed, run.final, rtol=0, atol=1e-5 * scale)
        if 2 <= s < NUM_STEPS - 1:  # without its history a multistep solver does not reproduce the run
            # (the last step is first order: no history)
            fresh = sample(adapter, run.latents[s].clone(), cond, NUM_STEPS, start_step=s).latents
            assert float((fresh - run.final).abs().max()) > 1e-4 * scale
    # Rows may re-order the base's elements: the solver's history follows its rows.
    swapped = run_patched(adapter, run, cond, run, [[], []], [1, 0], [1, 0], NUM_STEPS, start_step=4)
    torch.testing.assert_close(swapped, run.final.flip(0), rtol=0, atol=1e-5 * scale)


def test_self_patching_changes_nothing_and_patching_everything_reproduces_the_source(wan22_unipc):
    _, adapter, noise, cond, _ = wan22_unipc
    sites = [s for s in adapter.site_names([0, 1])]
    run = record_run(adapter, noise, cond, NUM_STEPS, sites)
    scale = float(run.final.abs().max())
    scheduler = adapter.make_scheduler()
    adapter.set_timesteps(scheduler, NUM_STEPS)
    expert_at = {s: adapter.expert_at(t) for s, t in enumerate(scheduler.timesteps)}
    assert set(expert_at.values()) == {"high", "low"}
    own = [[Patch(s, site) for s in range(NUM_STEPS) for site in sites if site.startswith(expert_at[s])]]
    same = run_patched(adapter, run, cond, run, own * 2, [0, 1], [0, 1], NUM_STEPS)
    torch.testing.assert_close(same, run.final, rtol=0, atol=1e-5 * scale)
    # Element 1 (another first frame, the same noise) with element 0's last block output at every
    # step: element 0's run (the last block's output is all the output projection reads).
    every = [[Patch(s, site) for s in range(NUM_STEPS) for site in sites if site.startswith(expert_at[s])
              and site.endswith(".1")]]  # fmt: skip
    crossed = run_patched(adapter, run, cond, run, every, [1], [0], NUM_STEPS)
    assert np.isfinite(crossed.numpy()).all()
    torch.testing.assert_close(crossed[0], run.final[0], rtol=0, atol=1e-4 * scale)


def test_tracing_and_patching_refuse_a_transformer_with_a_block_cache(tiny_adapter):
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    from interp.execution.loop import initial_noise
    from interp.tasks import maze as M

    mazes = [M.generate_maze(4, 0)]
    noise, cond = initial_noise([0], tiny_adapter.latent_shape(4, 4)), tiny_adapter.conditioning(mazes, 4)
    plain = record_run(tiny_adapter, noise, cond, 3, ["blocks.0"])  # no cache: fine
    tiny_adapter.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    with pytest.raises(ValueError, match="block cache is active.*FirstBlockCacheConfig"):
        record_run(tiny_adapter, noise, cond, 3, ["blocks.0"])
    tiny_adapter.transformer.disable_cache()
    apply_first_block_cache(tiny_adapter.transformer, FirstBlockCacheConfig(threshold=0.05))  # hooks only
    with pytest.raises(ValueError, match="block cache is active"):
        run_patched(tiny_adapter, plain, cond, plain, [[Patch(1, "blocks.0")]])
