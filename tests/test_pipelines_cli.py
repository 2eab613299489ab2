"""A tiny two-expert Wan 2.2 image-to-video pipeline (UniPC, as released) through every command
from the CLI, with the same flags everywhere, into one run folder and one report."""

import json
import re
from urllib.parse import unquote

import numpy as np
import pytest
import torch

from activations import ActivationStore
from interp.manifest import Manifest, is_manifest


def test_every_command_on_a_two_expert_pipeline(tmp_path, run_cli, wan22):
    model, data = wan22
    run = tmp_path / "run"
    video = ["--height", 32, "--width", 32, "--num-frames", 5, "--num-steps", 4]
    pipe = ["--model", model, "--data", data, *video]
    pair = [*pipe, "--samples", "sample_000,sample_001"]
    code, _, err = run_cli("trace", *pipe, "--seed", 0, "--seed", 1, "--out", run / "s.h5")
    assert code == 0, err
    with ActivationStore(run / "s.h5") as store:
        assert store.n_videos == 4 and store.completed_videos == [0, 1, 2, 3]
        assert store.layout.extra["trace_config"]["torch_dtype"] == "float32"  # the CPU default, recorded
        assert {s.split(".")[0] for s in store.sites} == {"high", "low"}
        tokens = store.layout.n_tokens
    from diffusers import DiffusionPipeline

    with pytest.MonkeyPatch.context() as patch:  # the plan of an experiment on a pipeline loads nothing
        patch.setattr(DiffusionPipeline, "from_pretrained", lambda *a, **k: pytest.fail("the plan loaded weights"))
        code, gen, err = run_cli("generate", *pipe, "--steps", "0,3", "--dry-run", "--out", run / "never")
        assert code == 0 and "2 videos x 3 decoded (x0_hat of 2 steps and the final video), 5 frames of 32x32" in gen
        ensemble = ["--samples", "sample_001", "--seeds", 2, "--k", 1, "--merge", "mean", "--temperature", 0.6]
        code, ens, err = run_cli("ensemble", *pipe, *ensemble, "--dry-run", "--out", run / "never")
        assert code == 0 and "1 video x 5 runs (seeds, ensembles, controls)" in ens, err
        code, out, err = run_cli("patch", *pair, "--steps", "0,2", "--dry-run", "--out", run / "never")
    expected = f"recorded run per sample: 2 layers x 4 steps x {tokens} tokens x 2 guidance branches in float32"
    assert code == 0 and expected in out, err
    assert not (run / "never").exists()
    np.save(tmp_path / "prompt.npy", np.array([0, 0, 1, 1]))
    commands = [
        ["energy", run / "s.h5", "--step", 3, "--out", run / "energy"],  # step 3 runs the low-noise expert
        ["probe", run / "s.h5", "--labels", f"sample={tmp_path / 'prompt.npy'}", "--steps", "0,3", "--folds", 2,
         "--out", run / "probes"],
        ["generate", *pipe, "--samples", "sample_000", "--steps", "0,3", "--out", run / "generate"],
        ["filmstrip", run / "s.h5", "--model", model, "--videos", "0-1", "--steps", "0,2", "--out", run / "filmstrip"],
        ["patch", *pair, "--metric", "latent", "--steps", "0,2", "--out", run / "patch"],
        ["swap", *pair, "--steps", "0,3", "--out", run / "swap"],
        ["perturb", *pipe, "--samples", "sample_000", "--steps", "1", "--frames-to-noise", "1", "--out", run / "noise"],
        ["flow", *pipe, "--samples", "sample_000", "--inject-steps", "1", "--strength", 0.5, "--out", run / "flow"],
        ["ensemble", *pipe, "--samples", "sample_001", "--seeds", 2, "--k", 1, "--merge", "mean", "--temperature", 0.6,
         "--scorer", "scorers:mean_red",
         "--out", run / "ensemble"],
        ["chain", run / "s.h5", "--scorer", "scorers:mean_red", "--model", model, "--out", run / "chain"],
    ]  # fmt: skip
    for args in commands:
        code, _, err = run_cli(*args)
        assert code == 0, (args[0], err)
    assert len(list((run / "ensemble" / "videos").rglob("*.gif"))) == 5  # the runs the plan counted
    for kind in ("patch", "swap"):  # both experts' layers patched, each at the steps it runs
        values = np.array(json.loads((run / kind / "result.json").read_text())["values"], dtype=float)
        assert values.shape == (2, 2) and np.isfinite(values).all()
        assert np.abs(values[:, -1]).max() > 0  # patching the last block moves the output
    cka = np.array(json.loads((run / "flow" / "result.json").read_text())["cka"], dtype=float)
    assert cka.shape == (1, 4, 2) and np.isfinite(cka[0, 1:]).all()  # steps 1 (high) to 3 (low)
    for folder in ("generate/sample_000-seed0", "filmstrip/video000", "filmstrip/video001"):
        assert (run / folder / "filmstrip.png").stat().st_size > 0 and (run / folder / "video.gif").is_file()
    assert (run / "generate/sample_000-seed0/step_03.gif").is_file()
    chain = json.loads((run / "chain" / "convergence.json").read_text())["summary"]
    assert chain["n"] == 4 and chain["samples_with_seeds"] == 2 and len(chain["seed_spread_per_step"]) == 4
    assert chain["distance_per_step"][-1] < chain["distance_per_step"][0]  # x0_hat converges to the final sample
    assert len(chain["score_per_step"]) == 5 and all(0 <= v <= 1 for v in chain["score_per_step"])
    assert not (run / "chain" / "chain.json").exists()  # no maze verifier for this model
    code, _, err = run_cli("report", run)
    assert code == 0, err
    page = (run / "report.html").read_text()
    links = {unquote(h.removeprefix("./")) for h in re.findall(r'href="([^"#][^"]*)"', page)}  # ./ + percent-encoded
    links |= set(re.findall(r'data-file="([^"]*)"', page))
    for path in (p for p in run.rglob("*") if is_manifest(p)):
        for entry in Manifest.read(path).files:
            assert (path.parent / entry.path).relative_to(run).as_posix() in links, entry.path


def test_a_pipeline_config_without_its_inputs_is_refused_in_one_line(run_cli, wan22, tmp_path):
    model, data = wan22
    code, _, err = run_cli("patch", "--model", model, "--out", tmp_path / "x")
    assert code == 2 and "needs --data DIR" in err
    code, _, err = run_cli("patch", "--data", data, "--samples", "sample_000,sample_001", "--out", tmp_path / "x")
    assert code == 2 and "no maze.json (not a maze sample" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("trace", "--model", model, "--data", data, "--torch-dtype", "int8", "--out", tmp_path / "y")
    assert code == 2 and "torch_dtype must be" in err


def test_every_command_takes_the_pipeline_flags_and_records_them(run_cli, tmp_path):
    """--guidance-scale, --negative-prompt, --max-sequence-length reach every command that samples a
    pipeline and its saved config (a CogVideoX with a 16-token text length patches instead of failing
    on a size mismatch); a size the LTX pipeline refuses is refused before any compute."""
    from tiny_pipelines import build_tiny_cogvideox, build_tiny_ltx, write_samples

    model, data = build_tiny_cogvideox(tmp_path / "cogvideox"), write_samples(tmp_path / "data", n=2)
    pipe = ["--model", model, "--data", data, "--height", 32, "--width", 32, "--num-frames", 9, "--num-steps", 2,
            "--guidance-scale", 2.5, "--negative-prompt", "blurry", "--max-sequence-length", 16]  # fmt: skip
    pair = ["--samples", "sample_000,sample_001"]
    commands = {
        "patch": [*pair, "--metric", "latent", "--steps", "0", "--layers", "0", "--sub", "ffn", "--region", "frame:0"],
        "swap": [*pair, "--steps", "0", "--layers", "0"],
        "perturb": ["--samples", "sample_000", "--steps", "1", "--frames-to-noise", "0"],
        "flow": ["--samples", "sample_000", "--inject-steps", "0", "--layers", "0"],
        "ensemble": ["--samples", "sample_000", "--seeds", 2, "--k", 1, "--merge", "mean", "--temperature", 0.6],
    }
    for kind, args in commands.items():
        code, out, err = run_cli(kind, *pipe, *args, "--out", tmp_path / kind)
        assert code == 0, (kind, err)
        saved = tmp_path / kind / ("ensemble.json" if kind == "ensemble" else "config.json")
        spec = json.loads(saved.read_text())
        spec = spec["config"] if kind == "ensemble" else spec  # one source: the config's own fields
        assert (spec["guidance_scale"], spec["negative_prompt"], spec["max_sequence_length"]) == (2.5, "blurry", 16)
    code, out, err = run_cli("generate", *pipe, "--samples", "sample_000", "--steps", "1", "--out", tmp_path / "gen")
    assert code == 0, err
    config = json.loads((tmp_path / "gen" / "run.json").read_text())["config"]
    assert (config["guidance_scale"], config["max_sequence_length"]) == (2.5, 16)
    ltx = build_tiny_ltx(tmp_path / "ltx")
    code, _, err = run_cli("perturb", "--model", ltx, "--data", data, "--height", 48, "--width", 48, "--num-frames", 9,
                           "--num-steps", 2, "--dry-run", "--out", tmp_path / "never")  # fmt: skip
    assert code == 2 and "multiples of 32" in err, err


def test_hunyuans_true_cfg_is_reachable(tmp_path):
    from tiny_pipelines import build_tiny_hunyuan

    from interp.models.base import PipelineSpec
    from interp.models.loading import load_pipeline_adapter

    folder = build_tiny_hunyuan(tmp_path / "hunyuan")
    spec = PipelineSpec(height=32, width=32, num_frames=9, true_cfg_scale=3.0)
    adapter = load_pipeline_adapter(folder, spec, "float32")
    assert adapter.true_cfg_scale == 3.0
    noise = torch.randn(1, *adapter.pipeline_latent_shape(32, 32, 9))
    cond = adapter.pipeline_conditioning(["a maze"], [None], noise, "blurry", 32, 32, 9, 16)
    assert len(adapter.forward_calls(noise, torch.tensor(999.0), cond)) == 2  # conditional and negative calls
