import json

import torch
from safetensors.torch import load_file

from interp.models import testbed
from interp.training import TrainConfig, export_weights, train_testbed

TINY = {"num_layers": 1, "ffn_dim": 32, "num_attention_heads": 2, "attention_head_dim": 8}


def _cfg():
    return TrainConfig(steps=4, batch_size=4, warmup=2, checkpoint_every=100, eval_mazes=0, model=TINY)


def test_interrupted_training_resumes_exactly(tmp_path):
    straight = train_testbed(_cfg(), tmp_path / "a", log=lambda *_: None)
    train_testbed(_cfg(), tmp_path / "b", log=lambda *_: None, max_new_steps=3)
    assert json.loads((tmp_path / "b" / "state.json").read_text())["step"] == 3
    resumed = train_testbed(_cfg(), tmp_path / "b", log=lambda *_: None)
    a = straight.transformer.state_dict()
    b = resumed.transformer.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    # Training moved the weights away from their initialisation.
    init = testbed.build_transformer(TINY).state_dict()
    assert any(not torch.allclose(init[k], b[k]) for k in init if init[k].is_floating_point())


def test_export_writes_a_diffusers_folder_that_loads(tmp_path):
    train_testbed(_cfg(), tmp_path / "ck", log=lambda *_: None)
    out = export_weights(tmp_path / "ck", tmp_path / "weights", testbed.SamplingDefaults(num_steps=7))
    weights = list(out.glob("*.safetensors"))
    assert len(weights) == 1 and not list(out.glob("*.bin"))
    adapter = testbed.TestbedAdapter.load(out)
    assert adapter.defaults.num_steps == 7
    ema = load_file(tmp_path / "ck" / "ema.safetensors")
    for k, v in adapter.transformer.state_dict().items():
        assert torch.equal(v, ema[k])


def test_export_best_picks_by_validation_accuracy(tmp_path):
    train_testbed(_cfg(), tmp_path / "ck", log=lambda *_: None)
    sampling = testbed.SamplingDefaults(num_steps=3)
    out = export_weights(tmp_path / "ck", tmp_path / "w", sampling, which="best", validation_mazes=8)
    record = json.loads((out / "training.json").read_text())
    assert set(record["validation_accuracy"]) == {"ema", "raw"} and record["exported"] in ("ema", "raw")
    best = max(record["validation_accuracy"].values())
    assert record["validation_accuracy"][record["exported"]] == best
    raw = export_weights(tmp_path / "ck", tmp_path / "r", sampling, which="raw")
    assert json.loads((raw / "training.json").read_text())["exported"] == "raw"
    model = load_file(tmp_path / "ck" / "model.safetensors")
    for k, v in testbed.TestbedAdapter.load(raw).transformer.state_dict().items():
        assert torch.equal(v, model[k])


def test_the_readme_train_command_runs_from_a_fresh_folder(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ folder yet: the command creates what it needs
    args = ["train", "testbed", "--seed", "0", "--device", "cpu", "--checkpoint", "checkpoints/testbed"]
    code, _, err = run_cli(*args, "--steps", 2, "--batch-size", 4, "--export", "runs/w", "--export-weights", "raw")
    assert code == 0, err
    assert (tmp_path / "checkpoints" / "testbed" / "state.json").is_file()
    assert (tmp_path / "runs" / "w" / "diffusion_pytorch_model.safetensors").is_file()
