import json

import pytest
import torch

from interp.models import testbed
from interp.training import (
    MIXED_PRESET,
    TrainConfig,
    config_dict,
    export_weights,
    mixed_config,
    size_at,
    train_sizes,
    train_testbed,
    training_batch,
)

TINY = {"num_layers": 1, "ffn_dim": 32, "num_attention_heads": 2, "attention_head_dim": 8}


def _mixed(**kw):
    fields = dict(steps=4, batch_size=4, warmup=2, checkpoint_every=100, eval_mazes=0, model=TINY)
    fields.update(sizes=[3, 4], size_weights=[1.0, 2.0])
    fields.update(kw)
    return TrainConfig(**fields)


def test_sizes_are_a_function_of_seed_and_step():
    cfg = _mixed(steps=400)
    sizes = [size_at(cfg, k) for k in range(400)]
    assert sizes == [size_at(cfg, k) for k in range(400)]
    assert set(sizes) == {3, 4} and 0.55 < sizes.count(4) / 400 < 0.8  # weights 1:2
    assert [size_at(_mixed(seed=1, steps=400), k) for k in range(400)] != sizes
    x0, cond = training_batch(cfg, 0)
    assert x0.shape[-1] == sizes[0] and cond.shape[-1] == sizes[0]
    single = TrainConfig()
    assert {size_at(single, k) for k in range(50)} == {single.size} and train_sizes(single) == [single.size]


def test_single_size_records_keep_their_fields():
    assert set(config_dict(TrainConfig())) == {
        "seed", "size", "frames", "steps", "batch_size", "lr", "min_lr_ratio", "warmup", "weight_decay",
        "ema_decay", "grad_clip", "checkpoint_every", "eval_every", "eval_mazes", "sample_steps", "model",
    }  # fmt: skip
    assert config_dict(_mixed())["sizes"] == [3, 4]


def test_mixed_training_resumes_exactly_and_logs_per_size(tmp_path):
    straight = train_testbed(_mixed(), tmp_path / "a", log=lambda *_: None)
    cfg = _mixed(eval_every=2, eval_mazes=2, eval_raw=True, sample_steps=2)
    # The log's folder does not exist yet: it is created.
    train_testbed(cfg, tmp_path / "new" / "b", log=lambda *_: None, max_new_steps=3)
    resumed = train_testbed(cfg, tmp_path / "new" / "b", log=lambda *_: None)
    a, b = straight.transformer.state_dict(), resumed.transformer.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    records = [json.loads(line) for line in (tmp_path / "new" / "b.log.jsonl").read_text().splitlines()]
    val = [r for r in records if "val" in r]
    assert [r["step"] for r in val] == [2, 4]
    for r in val:
        assert set(r["val"]) == {"ema", "raw"}
        for per_size in r["val"].values():
            assert set(per_size) == {"3", "4"}
            assert {"accuracy", "final_exact", "x0_step0", "x0_step0_final_exact"} <= set(per_size["4"])
    state = json.loads((tmp_path / "new" / "b" / "state.json").read_text())
    assert TrainConfig(**state["config"]) == cfg

    out = export_weights(tmp_path / "new" / "b", tmp_path / "w", testbed.SamplingDefaults(num_steps=2), "best", 2)
    record = json.loads((out / "training.json").read_text())
    assert record["exported"] in ("ema", "raw") and set(record["validation"]) == {"ema", "raw"}
    reused = export_weights(
        tmp_path / "new" / "b", tmp_path / "w2", testbed.SamplingDefaults(num_steps=2), "best", 2, val[-1]["val"]
    )
    assert json.loads((reused / "training.json").read_text())["validation"] == val[-1]["val"]


def test_bad_mixed_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="size_weights"):
        train_testbed(_mixed(size_weights=[1.0]), tmp_path / "c", log=lambda *_: None)
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        train_testbed(_mixed(model={**TINY, "rope_max_seq_len": 3}), tmp_path / "c", log=lambda *_: None)


def test_mixed_preset_covers_its_sizes():
    cfg = mixed_config()
    assert cfg.sizes == MIXED_PRESET["sizes"] and min(cfg.sizes) == 4 and max(cfg.sizes) >= 6
    model = {**testbed.DEFAULT_CONFIG, **cfg.model}
    assert model["rope_max_seq_len"] >= max(max(cfg.sizes), cfg.frames)
