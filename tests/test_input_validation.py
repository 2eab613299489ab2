"""Bad input is one line before any compute: output places that cannot be written (for root too), plans
that do not fit, --dry-run, late checks moved up front. A few cases of benchmarks/bad_inputs.py."""

from __future__ import annotations

import errno
import json

import pytest

from interp.models.loading import load_model


def _one_line(code, err, message):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("interp: error:"), err
    assert message in lines[0] and "Traceback" not in err, err


def test_output_places_that_cannot_be_written_are_refused_before_compute(run_cli, tmp_path):
    regular = tmp_path / "a_file"
    regular.write_text("x")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    cases = [
        (["trace", "-n", 1, "--out", regular / "sub" / "t.h5"], f"cannot be created, {regular} is a file"),
        (["trace", "-n", 1, "--out", folder], "is a folder; give a file path"),
        (["generate", "--out", regular], "is a file, not a folder"),
        (["energy", tmp_path / "none.h5", "--out", regular / "x"], "is a file, not a folder"),
        (["patch", "-n", 1, "--out", regular / "x"], "is a file, not a folder"),
        (["report", tmp_path, "--out", folder], "is a folder"),
        (["train", "testbed", "--checkpoint", regular / "ckpt"], "is a file, not a folder"),
    ]
    for args, message in cases:
        code, _, err = run_cli(*args)
        _one_line(code, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder"]  # nothing written


def test_a_read_only_filesystem_is_caught_by_the_probe_file(tmp_path, monkeypatch):
    import tempfile

    from interp.validation import UsageError, check_output

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(UsageError, match="cannot write in .*Read-only file system"):
        check_output(tmp_path / "new" / "folder")


def test_dry_run_prints_the_plan_only_and_a_plan_that_does_not_fit_is_refused(run_cli, tmp_path, monkeypatch):
    import shutil

    code, out, err = run_cli("trace", "-n", 3, "--layers", "0-1", "--dry-run", "--out", tmp_path / "t.h5")
    assert code == 0 and "plan: trace: 3 videos, 20 denoising steps each, 20 steps stored, 2 sites" in out, err
    assert not (tmp_path / "t.h5").exists() and not list(tmp_path.iterdir())
    # 3 videos x 20 steps x 2 sites x 64 tokens x 128 hidden x 2 bytes + x0_hat, x_t (8 x 64 each) and the final
    expected = 3 * 20 * 2 * 64 * 128 * 2 + 3 * 2 * 20 * 512 * 2 + 3 * 512 * 2
    assert f"writes ~{expected / 2**20:.1f} MB" in out
    # memory: one step's slabs of the batch twice in float32, the writer queue's bound (here 1 MB) and the
    # weights, read from the safetensors header of the testbed's folder like a pipeline's (nothing loaded)
    from interp.models.registry import resolve
    from interp.plans import folder_weight_bytes

    weights = folder_weight_bytes(resolve("testbed")[1])
    assert weights == sum(p.numel() * 4 for p in load_model("testbed").transformer.parameters())
    args = ["-n", 3, "--layers", "0-1", "--queue-mb", 1, "--dry-run", "--out", tmp_path / "q.h5"]
    code, out, err = run_cli("trace", *args)
    assert code == 0 and f"memory ~{(2 * 3 * 2 * 64 * 128 * 4 + 2**20 + weights) / 2**20:.1f} MB" in out, out
    code, out, err = run_cli("patch", "-n", 1, "--dry-run", "--out", tmp_path / "p")
    assert code == 0 and "plan: patch: 2 videos" in out and not (tmp_path / "p").exists()
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    code, _, err = run_cli("trace", "-n", 3, "--out", tmp_path / "t.h5")
    _one_line(code, err, "would write ~")
    assert "has 1000 B free" in err and not (tmp_path / "t.h5").exists()


def test_late_checks_come_first(run_cli, tmp_path, monkeypatch):
    import probes.run

    code, _, err = run_cli("demo", "--probe-steps", "99", "--out", tmp_path / "d")
    _one_line(code, err, "--probe-steps: step 99 is out of range")
    assert not (tmp_path / "d").exists()
    monkeypatch.setattr(probes.run, "run_probes", lambda *a, **k: pytest.fail("fitted before checking the name"))
    from interp.experiments.probe import probe_store
    from probes.run import ProbeConfig

    with pytest.raises(ValueError, match="name must be a non-empty name without '/'"):
        probe_store(tmp_path / "store.h5", ProbeConfig(name="a/b"))


@pytest.mark.parametrize(
    "body, message",
    [
        ({"experiment": "patch", "stpes": "0"}, "unknown field 'stpes'"),
        ([1, 2], "not an experiment config"),
        ({"experiment": "patch", "n": 2.5}, "n must be an integer, got 2.5"),
        ({"experiment": "swap", "steps": 3}, "steps must be a string, got 3"),
        ({"experiment": "perturb", "num_steps": 0}, "num_steps must be an integer from 1 to 1000, got 0"),
        ({"experiment": "flow", "pipeline": "folder"}, "pipeline must be an object or null"),
    ],
)
def test_config_files_are_checked_before_compute(run_cli, tmp_path, body, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(body))
    kind = body["experiment"] if isinstance(body, dict) else "patch"
    code, _, err = run_cli(kind, "--config", path, "--out", tmp_path / "x")
    _one_line(code, err, message)


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--shift", "nan"], "shift must be a number or null (no NaN or Inf), got nan"),
        (["ensemble", "--temperature", "nan"], "temperatures must be a list of numbers (no NaN or Inf)"),
        (["trace", "--pooling", "spatial:99"], "pooling spatial:99 is larger than the 4x4 token grid"),
        (["trace", "--layers", "99999999999999999999"], "layer 99999999999999999999 is out of range"),
        (["trace", "-n", "1000000000000"], "n must be an integer from 1 to 1000000"),
        (["patch", "--num-steps", "100000000"], "num_steps must be an integer from 1 to 1000"),
        (["trace", "--threads", "0"], "--threads must be an integer from 1 to 1024, got 0"),
        (["patch", "-n", "2.5"], "Invalid value for '-n' / '--n'"),
    ],
)
def test_a_sample_of_the_bad_input_matrix(run_cli, tmp_path, args, message):
    code, _, err = run_cli(*args, "--out", tmp_path / "o")
    _one_line(code, err, message)


def test_what_a_user_legitimately_passes_is_accepted_and_saved_as_plain_json():
    """numpy numbers and paths from a notebook, a negative swap offset, K = 0 in the ensemble sweep,
    a run name with spaces: accepted, and the config still saves as JSON."""
    from pathlib import Path

    import numpy as np

    from interp.experiments.ensemble import EnsembleConfig
    from interp.experiments.swap import SwapConfig
    from interp.experiments.trace import TraceConfig
    from interp.validation import check
    from probes.run import ProbeConfig

    cfg = TraceConfig(n=np.int64(8), shift=np.float32(3.0))
    assert type(cfg.n) is int and type(cfg.shift) is float and TraceConfig.from_json(cfg.to_json()) == cfg
    assert TraceConfig(model=Path("/m/wan"), data=Path("/d")).model == "/m/wan"
    assert SwapConfig(other="-1000").other == "-1000"
    assert EnsembleConfig(ks=[0, 1], temperatures=[]).ks == [0, 1]
    check(ProbeConfig(name="my run"))
    with pytest.raises(ValueError, match="ensemble_sizes must be a non-empty list, each an integer from 1"):
        EnsembleConfig(ensemble_sizes=[10**12])  # N seeds merged, not seed values
    old = EnsembleConfig.from_dict({"experiment": "ensemble", "seeds": [1, 3], "frames": 4, "sizes": [5]})
    assert (old.ensemble_sizes, old.seeds, old.num_frames, old.sizes) == ([1, 3], None, 4, [5])  # before one source
    piped = EnsembleConfig.from_dict({"experiment": "ensemble", "seeds": [2], "first_seed": 7, "n": 64, "sizes": [4, 5],
                                      "pipeline": {"model": "/m", "data": "/d", "num_steps": 4, "height": 32}})
    assert (piped.model, piped.data, piped.seeds, piped.ensemble_sizes, piped.height) == ("/m", "/d", [7], [2], 32)


def test_every_reading_command_prints_its_plan_and_dry_run_writes_nothing(run_cli, tmp_path):
    from interp.experiments.trace import TraceConfig, run_trace

    store = run_trace(TraceConfig(n=2, steps="0-19:5", layers="0-1"), tmp_path / "t.h5", progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    # x0_hat of 2 videos x 4 stored steps, float32, of latents (4, 4, 4, 8) = 512 values
    cases = [
        (
            ["filmstrip", store, "--videos", "0-1"],
            "plan: filmstrip: 2 videos, 20 denoising steps each, 4 steps read",
            f"reads ~{2 * 4 * 512 * 4 / 1024:.1f} KB of {store}",
        ),
        (
            ["energy", store, "--step", 5],
            "plan: energy: 1 video, 20 denoising steps each, 1 step read, 2 sites",
            f"reads ~{2 * 64 * 128 * 4 / 1024:.1f} KB",
        ),
        (["chain", store], "plan: chain: 2 videos", f"reads ~{2 * 4 * 512 * 4 / 1024:.1f} KB"),
        (["verify", store, "--checksums"], "plan: verify: 1 part: every chunk checked", "reads ~"),
        (["report", tmp_path], "plan: report: 0 figures embedded", "writes ~"),
        (
            ["demo", "--n-trace", 3],
            "plan: demo: 3 videos, 20 denoising steps each, 20 steps stored, 8 sites",
            "writes ~",
        ),
    ]
    for args, head, cost in cases:
        out_option = ["--out", tmp_path / "o"] if args[0] not in ("verify", "report") else []
        code, out, err = run_cli(*args, "--dry-run", *out_option)
        assert code == 0 and head in out and cost in out, (args, out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    code, _, err = run_cli("chain", tmp_path / "none.h5", "--dry-run")
    _one_line(code, err, "no activation store at")


def test_pipeline_weights_are_counted_from_the_safetensors_headers(wan22):
    import torch
    from diffusers import DiffusionPipeline

    from interp.plans import folder_weight_bytes

    folder, _ = wan22
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32)  # what the toolkit loads, counted
    loaded = sum(p.numel() * 4 for name in ("transformer", "transformer_2", "vae", "text_encoder", "image_encoder")
                 if getattr(pipe, name, None) is not None for p in getattr(pipe, name).parameters())  # fmt: skip
    assert folder_weight_bytes(folder) == loaded
    assert folder_weight_bytes(folder, "bfloat16") == loaded // 2
    vae = sum(p.numel() * 4 for p in pipe.vae.parameters())
    assert folder_weight_bytes(folder, None, ("vae",)) == vae


def test_weight_variants_count_once_and_a_pointer_file_is_one_line(tmp_path):
    import torch
    from safetensors.torch import save_file

    from interp.plans import folder_weight_bytes
    from interp.validation import UsageError

    (tmp_path / "vae").mkdir()
    save_file({"w": torch.zeros(10)}, tmp_path / "vae" / "model.safetensors")
    save_file({"w": torch.zeros(10, dtype=torch.float16)}, tmp_path / "vae" / "model.fp16.safetensors")
    assert folder_weight_bytes(tmp_path) == 10 * 4  # the variant beside the full weights is not loaded too
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(UsageError, match="text_encoder/model.safetensors is not a readable safetensors file"):
        folder_weight_bytes(tmp_path)
