"""Real videos in (issue 32): a video file decoded by PyAV as a player shows it, encoded as the pipeline's VAE
encodes (or by the testbed renderer's inverse), and traced into the same store layout: each stored x_s is the
scheduler's own noising of the video (FlowMatchEuler's ``scale_noise``, UniPC's ``add_noise``), or the step of
its ODE inversion, from which regeneration returns the video; probes read the video's VAE latent as a control."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipelines import build_tiny_wan, write_samples

from activations import ActivationStore
from interp.tasks import maze as maze_task
from interp.videos import read_video


def _write_lossless(path, frames: np.ndarray, rate: int = 8) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_video_is_read_as_a_player_shows_it(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (6, 24, 40, 3), dtype=np.uint8)
    _write_lossless(tmp_path / "v.mkv", frames)
    assert np.array_equal(read_video(tmp_path / "v.mkv", 6), frames)
    assert np.array_equal(read_video(tmp_path / "v.mkv", 4), frames[:4])  # the model's frames, from the start
    with pytest.raises(ValueError, match="shows 6 frames; the model takes 7"):
        read_video(tmp_path / "v.mkv", 7)
    # A GIF writer merges a repeated frame into one shown twice as long: it still counts twice.
    video = frames[[0, 1, 1, 2]]
    images = [Image.fromarray(f) for f in video]
    images[0].save(tmp_path / "v.gif", save_all=True, append_images=images[1:], duration=100, loop=0)
    got = read_video(tmp_path / "v.gif", 4)
    assert len(got) == 4 and np.array_equal(got[1], got[2]) and not np.array_equal(got[0], got[1])
    # ... the last frames too: a maze video of 16 frames whose agent arrives early ends on a merged frame
    maze = maze_task.generate_maze(3, 0)
    latent = maze_task.encode(maze, 16)
    from interp.report.filmstrip import save_gif

    save_gif(maze_task.render(latent), tmp_path / "m.gif", scale=1)
    assert np.array_equal(maze_task.latent_from_frames(read_video(tmp_path / "m.gif", 16), 3), latent)
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.raises(ValueError, match="not a video FFmpeg can read"):
        read_video(tmp_path / "notes.txt", 2)


def test_the_testbed_encodes_a_maze_video_by_inverting_its_renderer():
    for size in (3, 4, 6):
        for seed in range(8):
            latent = maze_task.encode(maze_task.generate_maze(size, seed), 5)
            video = maze_task.render(latent)
            assert np.array_equal(maze_task.latent_from_frames(video, size), latent)
            large = video.repeat(9, 1).repeat(9, 2)  # drawn large, as `interp data maze --pixels` draws it
            assert np.array_equal(maze_task.latent_from_frames(large, size), latent)


@pytest.fixture(scope="module")
def mazes(tmp_path_factory):
    from interp.tasks.maze_data import write_maze_samples

    folder = tmp_path_factory.mktemp("mazes")
    write_maze_samples(folder, size=4, n=6, frames=4, first_seed=3, pixels=36)
    return folder


def test_a_forward_noised_store_holds_the_schedulers_noising_of_the_video(mazes, tmp_path, run_cli):
    """Each stored x_s is diffusers' FlowMatchEuler ``scale_noise`` of the video's latent with the run's noise at
    that step's timestep; x0_hat is the model's reading of it; the final is the video."""
    from interp.experiments.trace import TraceConfig

    code, out, err = run_cli("trace", "--data", mazes, "--video-file", "ground_truth.gif", "--steps", "0,7,15",
                             "--layers", "0", "--dtype", "float32", "--out", tmp_path / "v.h5")  # fmt: skip
    assert code == 0, err
    cfg = TraceConfig(data=str(mazes), video_file="ground_truth.gif", steps="0,7,15", layers="0", dtype="float32")
    adapter = cfg.load()
    videos = cfg.videos(adapter)
    noise, cond = cfg.inputs(adapter, videos, drawn=True)
    clean = torch.from_numpy(np.stack([maze_task.encode(v.sample.truth, 4) for v in videos]))
    scheduler = adapter.make_scheduler(cfg.shift_of(adapter))
    adapter.set_timesteps(scheduler, 20)
    with ActivationStore(tmp_path / "v.h5") as store:
        assert np.array_equal(store.final(), clean.numpy())
        for step in store.steps:
            t = scheduler.timesteps[step : step + 1]
            expected = scheduler.scale_noise(clean, t, noise)
            x_t = torch.from_numpy(store.x_t(steps=[step])[:, 0])
            assert torch.allclose(x_t, expected, atol=1e-6), step
            with torch.no_grad():
                v = adapter.predict(expected, t[0], cond)
            x0 = expected - float(scheduler.sigmas[step]) * v
            assert torch.allclose(torch.from_numpy(store.x0_hat(steps=[step])[:, 0]), x0, atol=1e-4), step
        meta = store.meta(0)
    assert meta["noising"] == "forward" and meta["video_file"].endswith("ground_truth.gif")
    assert meta["verdict"]["solved"]  # the ground truth, read back through the renderer's inverse
    code, out, err = run_cli("probe", tmp_path / "v.h5", "--target", "on_path", "--folds", 2, "--out", tmp_path / "p")
    assert code == 0 and "the video's VAE latent alone" in out, err
    import pandas as pd

    table = pd.read_csv(tmp_path / "p" / "probes.csv")
    assert np.isfinite(table["vae_latent"]).all() and table["vae_latent"].nunique() == 1


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_an_inverted_video_regenerates_within_tolerance(mazes, tmp_path, solver):
    """Inversion from the video to noise, then regeneration from that noise with the model's own sampler, returns
    the video (relative latent error under 2%, the verifier's verdict unchanged); the store's x_s follow the
    inverted trajectory."""
    from interp.experiments.trace import TraceConfig, run_trace
    from interp.videos import invert

    cfg = TraceConfig(data=str(mazes), video_file="ground_truth.gif", noising="invert", solver=solver, steps="0,10",
                      layers="0", dtype="float32")  # fmt: skip
    store_path = run_trace(cfg, tmp_path / "i.h5", progress=False)
    adapter = cfg.load()
    videos = cfg.videos(adapter)
    _, cond = cfg.inputs(adapter, videos, drawn=True)
    clean = torch.from_numpy(np.stack([maze_task.encode(v.sample.truth, 4) for v in videos]))
    trajectory = invert(adapter, clean, cond, adapter.make_scheduler(cfg.shift_of(adapter)), 20, solver)
    with ActivationStore(store_path) as store:
        errors = [store.meta(v)["inversion"]["reconstruction_error"] for v in store.completed_videos]
        assert all(store.meta(v)["verdict"]["solved"] for v in store.completed_videos)
        for step in (0, 10):
            assert torch.allclose(torch.from_numpy(store.x_t(steps=[step])[:, 0]), trajectory[step], atol=1e-5)
    assert max(errors) < 0.02, errors


def test_inversion_needs_a_flow_and_bad_video_choices_are_one_line(mazes, tmp_path, run_cli):
    from types import SimpleNamespace

    from interp.experiments.trace import TraceConfig
    from interp.videos import check_videos

    cfg = TraceConfig(data=str(mazes), video_file="ground_truth.gif", noising="invert")
    with pytest.raises(ValueError, match="predicts v_prediction: use --noising forward"):
        check_videos(cfg, SimpleNamespace(prediction="v_prediction", name="cogvideox"), cfg.videos(cfg.load()))
    for args, expected in ((["--data", mazes, "--video-file", "nope.mp4"], "nope.mp4 is not there"),
                           (["--video-file", "a.mp4"], "give --data DIR"),
                           (["--noising", "invert"], "give --video-file"),
                           (["--data", mazes, "--video-file", "../a.gif"], "not a path")):  # fmt: skip
        code, _, err = run_cli("trace", *args, "--out", tmp_path / "x.h5")
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "x.h5").exists()


def test_a_pipeline_encodes_a_video_as_its_vae_and_noises_it_with_its_scheduler(tmp_path, run_cli):
    """Tiny Wan with UniPC (the scheduler Wan ships): the clean latent is the pipeline VAE's posterior mode of the
    processed video, normalised as WanImageToVideoPipeline normalises latents; each stored x_s is UniPC's
    ``add_noise`` of it at that step."""
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents

    from interp.models.base import PipelineSpec
    from interp.models.loading import load_model

    folder = build_tiny_wan(tmp_path / "wan", unipc=True)
    data = write_samples(tmp_path / "data", n=2)
    rng = np.random.default_rng(1)
    for sample in sorted(data.iterdir()):
        _write_lossless(sample / "clip.mkv", rng.integers(0, 255, (7, 40, 40, 3), dtype=np.uint8))
    pipe = DiffusionPipeline.from_pretrained(folder)
    adapter = load_model(folder, PipelineSpec(32, 32, 5))
    frames = read_video(data / "sample_000" / "clip.mkv", 5)
    video = pipe.video_processor.preprocess_video([Image.fromarray(f) for f in frames], 32, 32)
    z = retrieve_latents(pipe.vae.encode(video), sample_mode="argmax")
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = 1.0 / torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    expected = (z - mean) * std  # WanImageToVideoPipeline.prepare_latents
    assert torch.allclose(adapter.encode_video(frames, 32, 32), expected, atol=1e-6)
    code, _, err = run_cli("trace", "--model", folder, "--data", data, "--video-file", "clip.mkv", "--height", 32,
                           "--width", 32, "--num-frames", 5, "--num-steps", 4, "--steps", "0,2", "--layers", "0",
                           "--dtype", "float32", "--out", tmp_path / "w.h5")  # fmt: skip
    assert code == 0, err
    from interp.experiments.trace import TraceConfig

    cfg = TraceConfig.from_dict({**json.loads((tmp_path / "w.h5.config.json").read_text())})
    videos = cfg.videos(adapter)
    noise, _ = cfg.inputs(adapter, videos, drawn=True)
    clean = torch.cat([adapter.encode_video(read_video(data / v.sample.name / "clip.mkv", 5), 32, 32) for v in videos])
    scheduler = pipe.scheduler
    scheduler.set_timesteps(4)
    with ActivationStore(tmp_path / "w.h5") as store:
        for step in (0, 2):
            noised = scheduler.add_noise(clean, noise, scheduler.timesteps[step : step + 1])
            assert torch.allclose(torch.from_numpy(store.x_t(steps=[step])[:, 0]), noised, atol=1e-5), step
        assert np.allclose(store.final(), clean.numpy(), atol=1e-6)


def test_given_videos_set_the_same_mazes_ground_truth_beside_the_models_generations(tmp_path, run_cli):
    """`interp given_videos STORE`: the ground-truth videos of the store's own mazes and noise seeds (at sigma 1
    both stores hold the same x_s: the noise), probed on the same target per (step, layer) with the controls."""
    from interp.experiments.trace import TraceConfig, run_trace

    store = run_trace(TraceConfig(n=6, steps="0,10,19", layers="0,6", dtype="float32", first_seed=7),
                      tmp_path / "g.h5", progress=False)  # fmt: skip
    code, out, err = run_cli("given_videos", store, "--folds", 2, "--out", tmp_path / "gv")
    assert code == 0, err
    record = json.loads((tmp_path / "gv" / "given_videos.json").read_text())
    with ActivationStore(store) as generated, ActivationStore(record["video_store"]) as given:
        seeds = [[(s.meta(v)["maze_seed"], s.meta(v)["noise_seed"]) for v in s.completed_videos] for s in (generated,
                                                                                                          given)]
        assert seeds[0] == seeds[1] == [(7 + i, 7 + i) for i in range(6)]  # the same mazes, the same noise seeds
        assert np.array_equal(generated.x_t(steps=[0]), given.x_t(steps=[0]))  # sigma 1: both hold the noise
        assert not np.array_equal(generated.x_t(steps=[10]), given.x_t(steps=[10]))
        assert all(given.meta(v)["verdict"]["solved"] for v in given.completed_videos)
    assert {(r["store"], r["step"]) for r in record["rows"]} == {(k, s) for k in ("generated", "given video")
                                                                 for s in (0, 10, 19)}  # fmt: skip
    manifest = json.loads((tmp_path / "gv" / "run.json").read_text())
    assert manifest["claims"][0]["verdict"] in ("shows", "does not show", "cannot tell")
    code, _, err = run_cli("given_videos", record["video_store"], "--out", tmp_path / "again")
    assert code == 2 and "traced from given videos already" in err
    other = run_trace(TraceConfig(n=6, steps="0,10,19", layers="0,6", dtype="float32", first_seed=30),
                      tmp_path / "o.h5", progress=False)  # fmt: skip
    code, _, err = run_cli("given_videos", other, "--folds", 2, "--out", tmp_path / "gv")  # the first run's folder
    assert code == 2 and "holds other mazes" in err, err


def test_causal_runs_start_from_the_inverted_noise_and_regenerate_the_video(mazes, tmp_path, run_cli):
    """Item 5: with --video-file and --noising invert, every run of a causal experiment starts from the video's
    inverted noise, so its recorded run regenerates the video and resumes as any recorded run (self-patching
    changes nothing); noise at a step reads against it. --noising forward (no trajectory) is refused there, and
    an experiment that draws its own noise per seed takes no video."""
    from interp.api import block, copy_from, run
    from interp.experiments.perturb import PerturbConfig

    cfg = PerturbConfig(data=str(mazes), video_file="ground_truth.gif", noising="invert")
    adapter = cfg.load()
    videos = cfg.videos(adapter)
    noise, cond = cfg.inputs(adapter, videos)
    clean = torch.from_numpy(np.stack([maze_task.encode(v.sample.truth, 4) for v in videos]))
    base = run(adapter, noise, cond, sites=[block(3)], num_steps=20)
    error = (base.final - clean).flatten(1).norm(dim=1) / clean.flatten(1).norm(dim=1)
    assert error.max() < 0.02 and all(base.solved([v.sample.truth for v in videos]))
    patched = run(adapter, noise, cond, num_steps=20, interventions=[copy_from(base, block(3), steps=[10])])
    assert torch.equal(patched.final, base.final)
    common = ["--data", mazes, "--video-file", "ground_truth.gif"]
    code, out, err = run_cli("perturb", *common, "--noising", "invert", "--steps", "0,10", "--frames-to-noise", 1,
                             "--out", tmp_path / "p")  # fmt: skip
    assert code == 0 and "no noise: 1.00 solved" in out, err
    code, _, err = run_cli("perturb", *common, "--out", tmp_path / "q")
    assert code == 2 and "this experiment takes --noising invert" in err and not (tmp_path / "q").exists()
    code, _, err = run_cli("ensemble", *common, "--out", tmp_path / "e")
    assert code == 2 and "--video-file" in err and not (tmp_path / "e").exists()



def test_the_first_frame_an_image_to_video_model_holds_clean_stays_the_videos(tmp_path, run_cli):
    """Wan 2.2 TI2V holds its first latent frame clean: a given video's stored x_s keep that frame as the video's
    latent at every step (forward and inverted), the other frames noised as the scheduler noises them."""
    from tiny_pipelines_i2v import build_tiny_wan_ti2v

    folder = build_tiny_wan_ti2v(tmp_path / "ti2v")
    data = write_samples(tmp_path / "data", n=1)
    rng = np.random.default_rng(2)
    _write_lossless(data / "sample_000" / "clip.mkv", rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8))
    for noising in ("forward", "invert"):
        code, _, err = run_cli("trace", "--model", folder, "--data", data, "--video-file", "clip.mkv", "--noising",
                               noising, "--height", 32, "--width", 32, "--num-frames", 5, "--num-steps", 3,
                               "--layers", "0", "--dtype", "float32", "--out", tmp_path / f"{noising}.h5")  # fmt: skip
        assert code == 0, err
        with ActivationStore(tmp_path / f"{noising}.h5") as store:
            final, x_t = store.final(), store.x_t()
            assert np.allclose(x_t[:, :, :, 0], final[:, None, :, 0], atol=1e-6), noising  # frame 0: the video's
            assert not np.allclose(x_t[:, 0, :, 1:], final[:, :, 1:], atol=1e-3)  # the rest: noised



@pytest.mark.parametrize("family", ["cogvideox", "ltx", "hunyuanvideo"])
def test_every_family_encodes_a_video_as_its_pipeline_holds_latents(family, tmp_path):
    """The clean latent of each family is its pipeline VAE's posterior mode of the processed video, in the layout
    and scale its pipeline holds latents in (CogVideoX: frames first, times the scaling factor, as its image-to-
    video pipeline scales image latents; LTX: normalised with the VAE's mean and std, then packed into tokens as
    its pipelines pack; HunyuanVideo: times the scaling factor), of the run's latent shape, and decoding it gives
    what the pipeline's VAE decodes from the raw posterior mode."""
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents
    from tiny_pipelines import family_inputs

    adapter, shape, _, _ = family_inputs(family, tmp_path / family)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / family)
    frames = np.random.default_rng(3).integers(0, 255, (9, 40, 40, 3), dtype=np.uint8)
    video = pipe.video_processor.preprocess_video([Image.fromarray(f) for f in frames], 32, 32)
    with torch.no_grad():
        z = retrieve_latents(pipe.vae.encode(video), sample_mode="argmax")
    vae = pipe.vae
    if family == "cogvideox":
        expected = vae.config.scaling_factor * z.permute(0, 2, 1, 3, 4)
    elif family == "ltx":
        normalised = pipe._normalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        config = pipe.transformer.config
        expected = pipe._pack_latents(normalised, config.patch_size, config.patch_size_t)
    else:
        expected = z * vae.config.scaling_factor
    got = adapter.encode_video(frames, 32, 32)
    assert tuple(got.shape[1:]) == tuple(shape) and torch.allclose(got, expected, atol=1e-6)
    with torch.no_grad():
        direct = pipe.vae.decode(z, return_dict=False)[0] if family != "ltx" else None
    if direct is not None:
        from interp.models.base import video_to_uint8

        decoded = adapter.decode(got).astype(int)
        assert np.abs(decoded - video_to_uint8(direct)).max() <= 1  # the scale's round trip, to a level


def test_cogvideox_forward_noising_and_a_feature_edit_on_its_joint_stream(tmp_path, run_cli):
    """CogVideoX (DDIM, v-prediction; text and video in one stream): a given video's stored x_s are diffusers'
    ``add_noise`` of its latent, and a feature edit of a block changes exactly its SAE-space delta on the chosen
    video tokens and nothing else of that block's video rows."""
    from diffusers import DiffusionPipeline
    from tiny_pipelines import family_inputs

    from interp.api import block, feature_edit, frame_tokens, run
    from interp.experiments.trace import TraceConfig
    from interp.features.saes import SAESpec, load_sae, training_sae

    adapter, _, noise, cond = family_inputs("cogvideox", tmp_path / "cog")
    data = write_samples(tmp_path / "data", n=1)
    rng = np.random.default_rng(4)
    _write_lossless(data / "sample_000" / "clip.mkv", rng.integers(0, 255, (9, 32, 32, 3), dtype=np.uint8))
    args = ["--model", tmp_path / "cog", "--data", data, "--video-file", "clip.mkv", "--height", 32, "--width", 32,
            "--num-frames", 9, "--num-steps", 3, "--max-sequence-length", 16, "--layers", "0", "--dtype", "float32"]
    code, _, err = run_cli("trace", *args, "--out", tmp_path / "c.h5")
    assert code == 0, err
    cfg = TraceConfig.from_dict(json.loads((tmp_path / "c.h5.config.json").read_text()))
    videos = cfg.videos(adapter)
    drawn, _ = cfg.inputs(adapter, videos, drawn=True)
    clean = adapter.encode_video(read_video(data / "sample_000" / "clip.mkv", 9), 32, 32)
    scheduler = DiffusionPipeline.from_pretrained(tmp_path / "cog").scheduler
    scheduler.set_timesteps(3)
    with ActivationStore(tmp_path / "c.h5") as store:
        for step in range(3):
            expected = scheduler.add_noise(clean, drawn, scheduler.timesteps[step : step + 1])
            assert torch.allclose(torch.from_numpy(store.x_t(steps=[step])[:, 0]), expected, atol=1e-5), step
        assert np.allclose(store.final(), clean.numpy(), atol=1e-6)
    site = block(0)
    hidden = adapter.hidden_size()
    untrained = training_sae(SAESpec(expansion=2, k=4), hidden, "cpu", {"hook_name": site})
    untrained.save_inference_model(str(tmp_path / "sae"))  # the form `interp sae train` saves and edits read
    sae = load_sae(tmp_path / "sae")
    x = run(adapter, noise, cond, sites=[site], num_steps=3, steps=[1]).activations(site)[0]
    with torch.no_grad():
        z = sae.encode(x.reshape(-1, hidden))
    j = int((z != 0).sum(0).argmax())
    tokens = frame_tokens(adapter, noise, [1])
    edit = feature_edit(sae, site, j, "clamp", 2.0, steps=[1], tokens=tokens)
    y = run(adapter, noise, cond, sites=[site], num_steps=3, steps=[1], interventions=[edit]).activations(site)[0]
    z2 = z.clone()
    z2[:, j] = 2.0
    with torch.no_grad():
        expected = (x.reshape(-1, hidden) - sae.decode(z) + sae.decode(z2)).reshape(x.shape)
    off = [t for t in range(x.shape[1]) if t not in tokens]
    assert torch.allclose(y[:, tokens], expected[:, tokens], atol=1e-5) and torch.equal(y[:, off], x[:, off])
