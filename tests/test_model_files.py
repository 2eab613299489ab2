"""Model files are checked before anything is built or imported: a testbed's sampling.json and
config.json, a pipeline's component configs, and the modules its model_index.json names (a .py
shipped in the model folder never runs without the user's opt-in)."""

import json
import os

import pytest
from tiny_pipelines import build_tiny_wan, save_tiny_testbed, write_samples

TINY = {"num_layers": 2, "ffn_dim": 32, "num_attention_heads": 2, "attention_head_dim": 8}


@pytest.fixture
def tiny_testbed(tmp_path):
    return save_tiny_testbed(tmp_path / "tiny", TINY)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("interp: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "sampling, message",
    [({"shift": -2}, "shift must be a finite number > 0"), ({"shift": 1e300}, "shift must be a finite number > 0"),
     ({"num_steps": 0}, "num_steps must be an integer from 1"), ({"num_steps": "5"}, "num_steps must be")],
)  # fmt: skip
def test_a_testbed_sampling_file_is_checked(tiny_testbed, tmp_path, run_cli, sampling, message):
    (tiny_testbed / "sampling.json").write_text(json.dumps(sampling))
    code, _, err = run_cli("generate", "--model", tiny_testbed, "--out", tmp_path / "g")
    line = _one_error_line(err)
    assert code == 2 and "sampling.json" in line and message in line


def test_a_shift_past_any_model_is_refused(run_cli, tmp_path):
    code, _, err = run_cli("generate", "--shift", "1e300", "--out", tmp_path / "g")
    assert code == 2 and "shift must be a finite number > 0 and <= 1000" in _one_error_line(err)


@pytest.mark.parametrize(
    "change, message",
    [({"num_layers": 100_000_000}, "num_layers must be an integer from 0 to 1000"),
     ({"num_layers": 3}, "num_layers is 3, the weights beside it hold 2 blocks"),
     ({"num_attention_heads": -1}, "num_attention_heads must be an integer from 1")],
)  # fmt: skip
def test_a_testbed_config_is_checked_against_its_weights_before_the_dry_run(
    tiny_testbed, tmp_path, run_cli, change, message
):
    config = json.loads((tiny_testbed / "config.json").read_text())
    (tiny_testbed / "config.json").write_text(json.dumps({**config, **change}))
    code, _, err = run_cli("trace", "--model", tiny_testbed, "-n", 2, "--dry-run", "--out", tmp_path / "t.h5")
    line = _one_error_line(err)
    assert code == 2 and "config.json" in line and message in line


@pytest.fixture
def tiny_wan(tmp_path):
    return build_tiny_wan(tmp_path / "wan"), write_samples(tmp_path / "data", n=1)


def test_a_pipeline_scheduler_and_transformer_config_are_checked(tiny_wan, tmp_path, run_cli):
    model, data = tiny_wan
    pipe = ["--model", model, "--data", data, "--height", 32, "--width", 32, "--num-frames", 5, "--num-steps", 2]
    scheduler = model / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler.read_text())
    scheduler.write_text(json.dumps({**config, "flow_shift": -1.0}))
    code, _, err = run_cli("trace", *pipe, "--dry-run", "--out", tmp_path / "t.h5")
    line = _one_error_line(err)
    assert code == 2 and "scheduler_config.json: flow_shift must be a finite number > 0" in line
    scheduler.write_text(json.dumps(config))
    transformer = model / "transformer" / "config.json"
    transformer.write_text(json.dumps({**json.loads(transformer.read_text()), "num_layers": 10**8}))
    code, _, err = run_cli("trace", *pipe, "--dry-run", "--out", tmp_path / "t.h5")
    assert code == 2 and "num_layers must be an integer from 0 to 1000" in _one_error_line(err)


def test_a_module_named_by_the_model_folder_is_never_imported(tiny_wan, tmp_path, run_cli, monkeypatch):
    model, data = tiny_wan
    marker = tmp_path / "ran"
    (model / "evil_component.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nclass Evil: pass\n")
    index = json.loads((model / "model_index.json").read_text())
    index["transformer"] = ["evil_component", "Evil"]
    (model / "model_index.json").write_text(json.dumps(index))
    monkeypatch.chdir(model)  # where `import evil_component` would find it
    monkeypatch.syspath_prepend(str(model))
    monkeypatch.delenv("INTERP_TRUST_REMOTE_CODE", raising=False)
    pipe = ["--model", model, "--data", data, "--height", 32, "--width", 32, "--num-frames", 5, "--num-steps", 2]
    for args in (["--dry-run"], []):
        code, _, err = run_cli("trace", *pipe, *args, "--out", tmp_path / "t.h5")
        line = _one_error_line(err)
        assert code == 2 and "'evil_component', which would run its code" in line and "INTERP_TRUST_REMOTE_CODE" in line
    assert not marker.exists() and not os.path.exists(tmp_path / "t.h5")


def test_a_text_encoder_asking_for_1e8_layers_is_refused_before_it_loads(tiny_wan, tmp_path, run_cli):
    model, data = tiny_wan
    config = model / "text_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_layers": 10**8}))
    pipe = ["--model", model, "--data", data, "--height", 32, "--width", 32, "--num-frames", 5, "--num-steps", 2]
    code, _, err = run_cli("trace", *pipe, "--out", tmp_path / "t.h5")
    line = _one_error_line(err)
    assert code == 2 and "text_encoder/config.json: num_layers must be an integer from 0 to 1000" in line
