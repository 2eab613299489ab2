"""One source for every family (``interp.sources.SourceConfig``): no field is silently ignored, the two runs
of a pair differ only in their input, and a store's settings are compared on resume whatever version
recorded them."""

import pytest
from tiny_pipelines import build_tiny_wan, write_samples

from activations.schema import StoreLayout
from interp.experiments._causal import pair_videos
from interp.experiments.patch import PatchConfig
from interp.experiments.swap import SwapConfig
from interp.experiments.trace import TraceConfig
from interp.sources import load_testbed


def test_the_two_runs_of_a_pair_share_their_noise(run_cli, tmp_path):
    from interp.tasks import maze as maze_task

    testbed = load_testbed("testbed")
    clean, other = pair_videos(PatchConfig(n=2, seeds=[7, 8]), testbed, maze_task.rewire)
    assert [v.seed for v in clean] == [v.seed for v in other] == [7, 8, 7, 8]
    offset = SwapConfig(n=2, other="1000")  # another maze: its own walls, the same noise
    base, others = pair_videos(offset, testbed, lambda m: maze_task.generate_maze(m.size, m.seed + 1000))
    assert [v.seed for v in base] == [v.seed for v in others] == [0, 1]
    assert [v.sample.truth.seed for v in others] == [1000, 1001]
    code, _, err = run_cli("data", "maze", "-n", 4, "--pixels", 18, "--out", tmp_path / "mazes")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "mazes").iterdir())
    pairs = PatchConfig(data=str(tmp_path / "mazes"), samples=[names[3], names[0], names[1], names[2]])
    first, second = pair_videos(pairs, testbed, maze_task.rewire)
    assert [v.sample.name for v in first] == [names[3], names[1]] and [v.sample.name for v in second] == [names[0],
                                                                                                         names[2]]
    assert [v.seed for v in first] == [v.seed for v in second] == [3, 1]  # each maze's own seed: the first's
    for samples in ([names[0]], [names[0], names[0]], None):
        with pytest.raises(ValueError, match="samples named in pairs"):
            pair_videos(PatchConfig(data=str(tmp_path / "mazes"), samples=samples), testbed, maze_task.rewire)


def test_no_source_field_is_silently_ignored(run_cli, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    model, data = build_tiny_wan(tmp_path / "wan"), write_samples(tmp_path / "data", n=2)
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded before refusing"))
    cases = [
        (TraceConfig(samples=["a"]), "--samples names sample folders of --data"),
        (TraceConfig(guidance_scale=5.0), "--guidance-scale is a pipeline's"),
        (TraceConfig(negative_prompt="blurry"), "--negative-prompt is a pipeline's"),
        (TraceConfig(height=64), "--height is a pipeline's"),
        (TraceConfig(model=str(model), data=str(data), shift=3.0), "--shift is the testbed's sampler"),
        (TraceConfig(model=str(model), data=str(data), n=3), "-n, --size and --first-seed choose the testbed's"),
    ]
    for cfg, message in cases:
        with pytest.raises(ValueError, match=message):
            cfg.load(skeleton=True)
    pipe = ["--model", model, "--data", data, "--samples", "sample_000,sample_001"]
    code, _, err = run_cli("patch", *pipe, "--out", tmp_path / "p")  # the default metric needs a verifier
    assert code == 2 and "use metric 'latent'" in err
    code, _, err = run_cli("patch", *pipe, "--metric", "latent", "--region", "diff", "--out", tmp_path / "p")
    assert code == 2 and "region 'diff' is for maze pairs" in err
    code, _, err = run_cli("layers", "--model", model, "--data", data, "--store", tmp_path / "s.h5", "--out",
                           tmp_path / "l")  # fmt: skip
    assert code == 2 and "layers profiles a maze model" in err
    from interp.api import inputs

    with pytest.raises(ValueError, match="--height is a pipeline's"):
        inputs(load_testbed("testbed"), height=64)


def test_a_resumed_store_compares_the_settings_an_older_version_recorded():
    def layout(extra: dict) -> StoreLayout:
        return StoreLayout(**{**_LAYOUT, "extra": extra})

    old = layout({"pipeline_trace_config": {"guidance_scale": 5.0, "negative_prompt": ""}})
    new = layout({"trace_config": {"guidance_scale": 6.0, "negative_prompt": "", "seeds": [0]}})
    assert old.differences(new) == ["extra"]  # the renamed record is compared: guidance differs
    same = layout({"trace_config": {"guidance_scale": 5.0, "negative_prompt": "", "seeds": [0]}})
    assert old.differences(same) == []  # a field the old record lacks is not a different setting


_LAYOUT = {
    "model": "m", "adapter": "wan", "model_config": {}, "steps": [0], "num_steps": 1, "timesteps": [1.0],
    "sigmas": [1.0, 0.0], "sites": ["blocks.0"], "hidden": {"blocks.0": 4}, "token_grid": [1, 1, 1],
    "latent_shape": [1, 1, 1, 1], "pooling": "none", "n_tokens": 1, "dtype": "float16", "condition_shape": None,
    "cfg_branch": "cond", "n_videos": 1, "video_keys": ["a"],
}  # fmt: skip


def test_a_pipeline_source_samples_what_the_pipelines_own_call_gives_by_default(tmp_path):
    """No prompt-token count given: the source uses the pipeline's own default (Wan 512; the toolkit's old
    fixed 226 gave another run), and Wan 2.1 I2V's image tokens are split from the text where its attention
    processor expects them; a count the processor cannot split is refused in one line."""
    import torch
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    from interp.execution.loop import sample
    from interp.sources import SourceConfig

    model = build_tiny_wan(tmp_path / "wan", image_to_video=True, image_encoder=True)
    data = write_samples(tmp_path / "data", n=1)
    source = SourceConfig(model=str(model), data=str(data), height=32, width=32, num_frames=9, num_steps=3)
    adapter = source.load()
    videos = source.videos(adapter)
    noise, cond = source.inputs(adapter, videos)
    got = sample(adapter, noise.clone(), cond, 3).latents
    pipe = WanImageToVideoPipeline.from_pretrained(model)
    sample_dir = data / videos[0].sample.name
    expected = pipe(image=Image.open(sample_dir / "first_frame.png").convert("RGB"),
                    prompt=(sample_dir / "prompt.txt").read_text().strip(), height=32, width=32, num_frames=9,
                    num_inference_steps=3, latents=noise.clone(), output_type="latent").frames  # fmt: skip
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert source.max_sequence_length_of(adapter) == 512
    short = SourceConfig(model=str(model), data=str(data), height=32, width=32, num_frames=9, max_sequence_length=226)
    with pytest.raises(ValueError, match="needs 512"):
        short.inputs(adapter, videos)
    with pytest.raises(ValueError, match="needs 512"):  # and by any plan, from the folder's configs alone
        short.load(skeleton=True)


@pytest.mark.parametrize("family", ["wan", "cogvideox", "ltx", "hunyuanvideo"])
def test_a_pipeline_sources_default_video_is_the_one_its_pipeline_call_makes(tmp_path, family):
    """No size or frame count given: the source plans and samples the video the pipeline's own call would
    (Wan 480x832x81, LTX 512x704x161, HunyuanVideo 720x1280x129, CogVideoX from its transformer's sample
    size): the latents the pipeline prepares have the shape the source lays out."""
    import torch
    from diffusers import DiffusionPipeline
    from tiny_pipelines import BUILDERS

    from interp.sources import SourceConfig

    class Prepared(Exception):
        pass

    folder = BUILDERS[family](tmp_path / family)
    source = SourceConfig(model=str(folder), data=str(write_samples(tmp_path / "data", n=1)), num_steps=1,
                          max_sequence_length=16)  # fmt: skip
    skeleton = source.load(skeleton=True)
    videos = source.videos(skeleton)
    planned = source.latent_shape(skeleton, videos)
    pipe = DiffusionPipeline.from_pretrained(folder)
    shapes = []
    real = pipe.prepare_latents

    def prepare(*args, **kwargs):
        shapes.append(tuple(real(*args, **kwargs)[0].shape))  # one video's latent
        raise Prepared

    pipe.prepare_latents = prepare
    with pytest.raises(Prepared), torch.no_grad():
        pipe(prompt="a maze", num_inference_steps=1, max_sequence_length=16, output_type="latent")
    assert shapes == [planned]
    assert skeleton.pipeline_spec.num_frames == source.frames_of(skeleton)


def test_the_videos_read_once_follow_the_configs_fields():
    """The sample list a config read is reused only while the fields it was read from are unchanged."""
    cfg = TraceConfig(n=2)
    model = load_testbed("testbed")
    assert len(cfg.videos(model)) == 2
    cfg.n = 3
    assert [v.sample.truth.seed for v in cfg.videos(model)] == [0, 1, 2]
    cfg.first_seed = 5
    assert [v.sample.truth.seed for v in cfg.videos(model)] == [5, 6, 7]


def test_the_testbed_is_a_registered_family_planned_from_its_configs(tmp_path, run_cli, monkeypatch):
    """The testbed resolves through the registry like any family (by its shipped name or its folder), its plan's
    job is laid out from config.json on the meta device exactly as the loaded model lays it out, and a
    plan reads no weight."""
    from dataclasses import asdict

    from diffusers import WanTransformer3DModel

    from interp.experiments.trace import make_job
    from interp.models.registry import model_task, resolve
    from interp.models.testbed import TestbedAdapter

    for name in ("testbed", "testbed-mixed"):
        entry, folder = resolve(name)
        assert entry.adapter is TestbedAdapter and resolve(folder)[0] is entry and model_task(folder) == "maze"
        cfg = TraceConfig(model=name, n=3, layers="0,2", pooling="frame")
        skeleton = make_job(cfg, skeleton=True)
        assert next(skeleton.adapter.transformer.parameters()).is_meta
        assert asdict(skeleton.layout) == asdict(make_job(cfg).layout)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(ValueError, match="names 'UNet2DModel', which no family serves"):
        resolve(tmp_path / "other")

    def no_weights(*args, **kwargs):
        raise AssertionError("a plan loaded weights")

    monkeypatch.setattr(WanTransformer3DModel, "from_pretrained", no_weights)
    for command in ("trace", "patch", "generate", "ensemble"):
        code, out, err = run_cli(command, "--dry-run", "--out", tmp_path / command)
        assert code == 0 and out.startswith(f"plan: {command}:"), (command, err)
        assert command == "ensemble" or "from their safetensors headers" in out, out
