"""Wan 2.2 TI2V, CogVideoX image-to-video and LTX-Video image-to-video adapters against diffusers'
own pipelines, on tiny random pipelines saved to disk (``tiny_pipelines_i2v``): same noise, same
prompt, same steps, the adapter's sampled latents equal the pipeline's and so do the decoded videos."""

import copy

import numpy as np
import pytest
import torch
from tiny_pipelines_i2v import (
    build_tiny_cogvideox_i2v,
    build_tiny_ltx_i2v,
    build_tiny_wan_ti2v,
    first_frame,
)

from activations import ActivationStore
from interp.execution.loop import StepHook, sample
from interp.models.base import PipelineSpec
from interp.models.cogvideox import CogVideoXI2VAdapter
from interp.models.loading import load_pipeline_adapter
from interp.models.ltx import LTXI2VAdapter
from interp.models.wan import HoldCleanTokens, WanTI2VAdapter

PROMPT = "solve the maze"
# variant: (builder, its options, video size, frames, adapter class, adapter name, clean latent frames)
VARIANTS = {
    "wan2.2-ti2v-i2v": (build_tiny_wan_ti2v, {}, 64, 5, WanTI2VAdapter, "wan2.2-ti2v", [0]),
    "wan2.2-ti2v-t2v": (build_tiny_wan_ti2v, {"image_to_video": False}, 64, 5, WanTI2VAdapter, "wan2.2-ti2v", []),
    "cogvideox-i2v": (build_tiny_cogvideox_i2v, {}, 32, 9, CogVideoXI2VAdapter, "cogvideox-i2v", []),
    "cogvideox1.5-i2v": (build_tiny_cogvideox_i2v, {"v15": True}, 32, 9, CogVideoXI2VAdapter, "cogvideox-i2v", []),
    "ltx-i2v": (build_tiny_ltx_i2v, {}, 32, 9, LTXI2VAdapter, "ltx-i2v", [0]),
}


def _load(tmp_path, variant):
    build, options, size, frames, *_ = VARIANTS[variant]
    folder = build(tmp_path / variant, **options)
    adapter = load_pipeline_adapter(folder, PipelineSpec(height=size, width=size, num_frames=frames), "float32")
    return folder, adapter, size, frames


def _sample(adapter, size, frames, image, num_steps=3, seed=0, hooks=()):
    shape = adapter.pipeline_latent_shape(size, size, frames)
    noise = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        cond = adapter.pipeline_conditioning([PROMPT], [image], noise, "", size, size, frames, 16)
        result = sample(adapter, noise.clone(), cond, num_steps, scheduler=adapter.make_scheduler(), hooks=hooks)
    return noise, cond, result


def _pipeline(folder, variant, image, noise, output_type, num_steps=3, **extra):
    from diffusers import DiffusionPipeline

    _, options, size, frames, *_ = VARIANTS[variant]
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    if options.get("image_to_video", True):
        extra["image"] = image
    out = pipe(
        prompt=PROMPT, negative_prompt="", latents=noise, num_inference_steps=num_steps, height=size, width=size,
        num_frames=frames, max_sequence_length=16, output_type=output_type, **extra,
    )  # fmt: skip
    return out.frames


def _pipeline_noise(adapter, noise, cond):
    """What the pipeline is given as ``latents=``: the noise, except where the adapter holds the
    image latent clean and the pipeline takes the passed latents as they are (LTX)."""
    if not isinstance(adapter, LTXI2VAdapter):
        return noise.clone()
    mixed = noise.clone()
    mixed[:, : adapter.clean_tokens] = cond.image_latents
    return mixed


def _image_generator(adapter):
    """CogVideoX samples the image latent from the VAE posterior with the call's generator."""
    if not isinstance(adapter, CogVideoXI2VAdapter):
        return {}
    return {"generator": torch.Generator().manual_seed(adapter.image_latent_seed)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_adapter_samples_and_decodes_as_the_pipeline(tmp_path, variant):
    *_, adapter_class, name, clean = VARIANTS[variant]
    folder, adapter, size, frames = _load(tmp_path, variant)
    assert type(adapter) is adapter_class and adapter.name == name
    shape = adapter.pipeline_latent_shape(size, size, frames)
    assert adapter.clean_latent_frames(shape) == clean
    image = first_frame(size)
    noise, cond, result = _sample(adapter, size, frames, image)
    with torch.no_grad():
        mine = adapter.decode(result.latents)
    given = _pipeline_noise(adapter, noise, cond)
    extra = _image_generator(adapter)
    theirs = _pipeline(folder, variant, image, given.clone(), "latent", **copy.deepcopy(extra))
    torch.testing.assert_close(result.latents, theirs, atol=1e-5, rtol=1e-5)
    video = np.asarray(_pipeline(folder, variant, image, given.clone(), "np", **copy.deepcopy(extra)))
    assert mine.shape == video.shape == (1, frames, size, size, 3)
    np.testing.assert_allclose(mine / 255.0, video, atol=1.5 / 255)
    if clean:  # the frame held clean ends as the image latent, as the pipeline's does
        wan = isinstance(adapter, WanTI2VAdapter)
        held = result.latents[:, :, :1] if wan else result.latents[:, : adapter.clean_tokens]
        condition = adapter.condition_latent(cond)
        torch.testing.assert_close(held, condition, atol=0, rtol=0)
        assert tuple(condition.shape[1:]) == adapter.condition_shape(shape)


def test_the_image_conditions_the_sample(tmp_path):
    """Another first frame, another video (the image latent reaches the model in every variant)."""
    for variant in ("wan2.2-ti2v-i2v", "cogvideox1.5-i2v", "ltx-i2v"):
        _, adapter, size, frames = _load(tmp_path, variant)
        a = _sample(adapter, size, frames, first_frame(size, seed=0), num_steps=2)[2].latents
        b = _sample(adapter, size, frames, first_frame(size, seed=1), num_steps=2)[2].latents
        assert not torch.allclose(a, b, atol=1e-3), variant


def test_ltx_i2v_matches_the_pipeline_drawing_its_own_noise(tmp_path):
    """Without ``latents=``, the pipeline encodes the image and mixes it into its own noise; the
    adapter from that noise (any first frame: it is held clean) samples the same latents."""
    folder, adapter, size, frames = _load(tmp_path, "ltx-i2v")
    image = first_frame(size)
    pipe = adapter.pipeline
    processed = pipe.video_processor.preprocess(image, height=size, width=size)
    drawn, _ = pipe.prepare_latents(
        processed, 1, 8, size, size, frames, torch.float32, "cpu", torch.Generator().manual_seed(0)
    )
    drawn[:, : adapter.clean_tokens] = torch.randn(1, adapter.clean_tokens, 8)  # what the adapter ignores there
    with torch.no_grad():
        cond = adapter.pipeline_conditioning([PROMPT], [image], drawn, "", size, size, frames, 16)
        mine = sample(adapter, drawn, cond, 3, scheduler=adapter.make_scheduler()).latents
    theirs = _pipeline(folder, "ltx-i2v", image, None, "latent", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def test_cogvideox_i2v_image_latent_is_a_posterior_sample(tmp_path):
    """The pipeline samples the image latent with its generator: the adapter's seed is the one to pass."""
    folder, adapter, size, frames = _load(tmp_path, "cogvideox-i2v")
    image = first_frame(size)
    noise, _, result = _sample(adapter, size, frames, image)
    reseeded = torch.Generator().manual_seed(adapter.image_latent_seed + 1)
    other = _pipeline(folder, "cogvideox-i2v", image, noise.clone(), "latent", generator=reseeded)
    assert not torch.allclose(result.latents, other, atol=1e-4)


class _KeepSchedulers(StepHook):
    def __init__(self):
        self.kept = {}

    def before_model(self, state):
        self.kept[state.step] = (state.latents.clone(), copy.deepcopy(state.scheduler))


@pytest.mark.parametrize("variant", ["wan2.2-ti2v-i2v", "ltx-i2v"])
def test_held_clean_runs_resume_from_a_recorded_scheduler(tmp_path, variant):
    """A run resumed at step s from its latent and (deep-copied) multistep scheduler state ends where
    the whole run does, the clean frame included."""
    _, adapter, size, frames = _load(tmp_path, variant)
    keep = _KeepSchedulers()
    _, cond, whole = _sample(adapter, size, frames, first_frame(size), num_steps=4, hooks=[keep])
    latents, scheduler = keep.kept[2]
    assert isinstance(scheduler, HoldCleanTokens)
    with torch.no_grad():
        resumed = sample(adapter, latents, cond, 4, start_step=2, resume_scheduler=scheduler).latents
    torch.testing.assert_close(resumed, whole.latents, atol=0, rtol=0)


def test_trace_a_wan_ti2v_image_to_video_folder(tmp_path, run_cli):
    from tiny_pipelines import write_samples

    model = build_tiny_wan_ti2v(tmp_path / "wan")
    data = write_samples(tmp_path / "data", n=1, size=64)
    out = tmp_path / "store.h5"
    code, _, err = run_cli(
        "trace", "--model", model, "--data", data, "--height", 64, "--width", 64, "--num-frames", 5,
        "--num-steps", 3, "--max-sequence-length", 16, "--out", out,
    )  # fmt: skip
    assert code == 0, err
    with ActivationStore(out) as store:
        assert store.layout.adapter == "wan2.2-ti2v" and store.layout.token_grid == (2, 2, 2)
        assert store.layout.extra["clean_latent_frames"] == [0]
        assert store.has_condition and store.condition().shape == (1, 4, 1, 4, 4)
        final = store.x_t()
        assert np.isfinite(final).all() and np.isfinite(store.activations("blocks.1")).all()
