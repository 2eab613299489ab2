"""Causal interventions: patching is exact where it must be, finds a planted path, and configs rerun."""

import json

import numpy as np
import pytest
import torch

from interp.analysis.similarity import linear_cka
from interp.execution.loop import initial_noise
from interp.execution.patching import Patch, record_run, run_patched
from interp.experiments.base import load_config
from interp.experiments.flow import FlowConfig, run_flow
from interp.experiments.patch import PatchConfig, run_patch
from interp.experiments.perturb import PerturbConfig, run_perturb
from interp.experiments.swap import SwapConfig
from interp.models import testbed
from interp.tasks import maze as M

TINY = {"num_layers": 4, "ffn_dim": 64, "num_attention_heads": 2, "attention_head_dim": 16}


def _runs(adapter, seeds, sites, num_steps=6, size=4, frames=4):
    mazes = [M.generate_maze(size, s) for s in seeds]
    cond = adapter.conditioning(mazes, frames)
    noise = initial_noise([0] * len(seeds), adapter.latent_shape(size, frames))  # same noise: only the maze differs
    return record_run(adapter, noise, cond, num_steps, sites), cond


def test_patching_a_run_with_its_own_activations_changes_nothing(tiny_adapter):
    sites = ["blocks.0", "blocks.1"]
    run, cond = _runs(tiny_adapter, [3], sites)
    rows = [[Patch(2, "blocks.0")], [Patch(0, "blocks.1"), Patch(4, "blocks.0", (1, 5, 9))]]
    finals = run_patched(tiny_adapter, run, cond, run, rows, start_step=0)
    for final in finals:
        torch.testing.assert_close(final, run.final[0], rtol=0, atol=1e-5)


def test_patching_every_layer_at_every_step_reproduces_the_clean_run(tiny_adapter):
    sites = ["blocks.0", "blocks.1"]
    clean, _ = _runs(tiny_adapter, [1], sites)
    corrupted, corr_cond = _runs(tiny_adapter, [2], sites)
    assert not torch.allclose(clean.final, corrupted.final, atol=1e-3)
    everything = [[Patch(s, site) for s in range(6) for site in sites]]
    final = run_patched(tiny_adapter, corrupted, corr_cond, clean, everything)
    torch.testing.assert_close(final[0], clean.final[0], rtol=0, atol=1e-5)
    # One step only: sampling continues from a mixed state, neither clean nor corrupted.
    one = run_patched(tiny_adapter, corrupted, corr_cond, clean, [[Patch(3, "blocks.1")]])
    assert not torch.allclose(one[0], corrupted.final[0], atol=1e-4)


def test_batched_sweep_equals_patched_runs_one_at_a_time_from_step_zero(tiny_adapter):
    sites = ["blocks.0", "blocks.1"]
    clean, _ = _runs(tiny_adapter, [1], sites)
    corrupted, corr_cond = _runs(tiny_adapter, [2], sites)
    rows = [[Patch(3, site)] for site in sites]
    batched = run_patched(tiny_adapter, corrupted, corr_cond, clean, rows)  # starts at step 3 from the cache
    for row, final in zip(rows, batched):
        naive = run_patched(tiny_adapter, corrupted, corr_cond, clean, [row], start_step=0)
        torch.testing.assert_close(final, naive[0], rtol=0, atol=1e-5)


@pytest.fixture
def planted_model(tmp_path):
    """A tiny testbed model whose tokens mix only in block 2's self-attention (the others' attention
    outputs are zeroed): information between tokens is routed through that block alone."""
    torch.manual_seed(0)
    model = testbed.build_transformer(TINY).eval()
    with torch.no_grad():
        for k, block in enumerate(model.blocks):
            if k != 2:
                block.attn1.to_out[0].weight.zero_()
                block.attn1.to_out[0].bias.zero_()
            else:  # a strong route, so that its effect stands well above float noise
                block.attn1.to_out[0].weight.mul_(8.0)
    folder = tmp_path / "planted"
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "sampling.json").write_text(json.dumps({"num_steps": 4}))
    return str(folder)


def test_a_planted_causal_path_is_found_at_its_block_and_nowhere_else(planted_model):
    cfg = PatchConfig(model=planted_model, n=2, steps="0,2", sub="attn1", metric="latent", span="onward")
    scores = run_patch(cfg, progress=False).grid
    assert scores.dims == ("step", "layer") and list(scores.layer.values) == [0, 1, 2, 3]
    elsewhere = np.abs(scores.sel(layer=[0, 1, 3]).values).max()
    assert elsewhere < 1e-5  # patching a zero output with a zero output: float noise only
    planted = scores.sel(layer=2).values
    assert (planted > 0.01).all() and planted.min() > 1000 * elsewhere


def test_configs_round_trip_through_json_and_rerun_from_the_cli(tmp_path, run_cli, planted_model):
    for cfg in (PatchConfig(region="diff", span="onward"), SwapConfig(other="7"), PerturbConfig(n=3), FlowConfig()):
        path = tmp_path / f"{cfg.experiment}.json"
        path.write_text(cfg.to_json())
        assert load_config(path) == cfg
    with pytest.raises(ValueError, match="'flow' config, not 'patch'"):
        PatchConfig.from_json(FlowConfig().to_json())
    out1, out2 = tmp_path / "a", tmp_path / "b"
    args = ["patch", "--model", planted_model, "-n", 1, "--steps", "1", "--metric", "latent"]
    code, stdout, err = run_cli(*args, "--out", out1)
    assert code == 0, err
    assert (out1 / "heatmap.png").stat().st_size > 0 and "highest score" in stdout
    code, _, err = run_cli("patch", "--config", out1 / "config.json", "--out", out2)
    assert code == 0, err
    first, second = (json.loads((o / "result.json").read_text()) for o in (out1, out2))
    assert first["config"] == second["config"] and first["values"] == second["values"]


def test_bad_requests_are_refused_before_any_compute(tmp_path, run_cli, tiny_adapter, planted_model):
    np.save(tmp_path / "mask.npy", np.ones((4, 3, 3), bool))
    cases = [
        (["--region", tmp_path / "mask.npy"], "has shape (4, 3, 3); the token grid is (4, 4, 4)"),
        (["--region", "frame:9"], "frame 9 is out of range"),
        (["--layers", "7"], "out of range"),
        (["--steps", "4"], "out of range"),
        (["--direction", "sideways"], "direction must be one of"),
    ]
    for extra, message in cases:
        code, _, err = run_cli("patch", "--model", planted_model, "-n", 1, *extra, "--out", tmp_path / "x")
        assert code == 2 and message in err, (extra, err)
    small, _ = _runs(tiny_adapter, [1], ["blocks.0"], size=3)
    big, big_cond = _runs(tiny_adapter, [1], ["blocks.0"], size=4)
    with pytest.raises(ValueError, match="different latent shapes"):
        run_patched(tiny_adapter, big, big_cond, small, [[Patch(1, "blocks.0")]])


def test_noise_at_step_and_at_frame_on_the_shipped_model():
    result = run_perturb(PerturbConfig(n=8, steps="0,19", frames_to_noise="3"), progress=False)
    assert result.baseline["n"] == 8 and result.baseline["accuracy"] >= 0.75
    # Fresh noise at step 0 is just another initial draw; at the last step nothing can repair it.
    assert result.at_step[0]["accuracy"] >= 0.75
    assert result.at_step[19]["accuracy"] < result.at_step[0]["accuracy"]
    lo, hi = result.at_frame[3]["ci95"]
    assert 0 <= lo <= result.at_frame[3]["accuracy"] <= hi <= 1


def test_linear_cka_and_information_flow(tiny_adapter, planted_model):
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ q + 1) == pytest.approx(1.0)  # invariant to rotation, scale, shift
    assert linear_cka(x, torch.randn(200, 16, generator=torch.Generator().manual_seed(2))) < 0.3
    flow = run_flow(FlowConfig(model=planted_model, n=2, inject_steps="1,2", strength=0.5), progress=False)
    values = flow.cka.values  # (inject, step, layer)
    assert np.isnan(values[0, 0]).all() and np.isnan(values[1, :2]).all()
    assert np.isfinite(values[0, 1:]).all() and ((values[0, 1:] >= 0) & (values[0, 1:] <= 1 + 1e-9)).all()
    assert len(flow.sensitivity) == 2


def test_patch_and_flow_run_on_a_local_pipeline_from_their_configs(tmp_path, run_cli):
    from tiny_pipelines import build_tiny_wan, write_samples

    model = build_tiny_wan(tmp_path / "wan", image_to_video=True)
    data = write_samples(tmp_path / "data", n=2)
    pipeline = {
        "model": str(model),
        "data": str(data),
        "samples": ["sample_000", "sample_001"],
        "height": 32,
        "width": 32,
        "num_frames": 5,
        "num_steps": 3,
        "torch_dtype": "float32",
    }
    # a config written before one source (a ``pipeline`` object, ``frames``) still runs
    old_style = {"experiment": "patch", "pipeline": {**pipeline, "seed": 0}, "metric": "latent", "steps": "0,2",
                 "layers": "all", "region": "frame:1", "frames": 4}  # fmt: skip
    assert PatchConfig.from_dict(old_style) == PatchConfig(**pipeline, seeds=[0], metric="latent", steps="0,2",
                                                           region="frame:1")  # fmt: skip
    (tmp_path / "patch.json").write_text(json.dumps({**old_style, "pipeline": {**pipeline, "seed": 0}}))
    code, _, err = run_cli("patch", "--config", tmp_path / "patch.json", "--out", tmp_path / "p")
    assert code == 0, err
    result = json.loads((tmp_path / "p" / "result.json").read_text())
    assert result["coords"] == {"step": [0, 2], "layer": [0, 1]}
    values = np.array(result["values"], dtype=float)
    assert np.isfinite(values).all() and np.abs(values).max() > 0  # patching one frame moves the output
    flow_cfg = FlowConfig(**pipeline, inject_steps="1", strength=0.5)
    (tmp_path / "flow.json").write_text(flow_cfg.to_json())
    code, _, err = run_cli("flow", "--config", tmp_path / "flow.json", "--out", tmp_path / "f")
    assert code == 0, err
    cka = np.array(json.loads((tmp_path / "f" / "result.json").read_text())["cka"], dtype=float)
    assert cka.shape == (1, 3, 2) and np.isnan(cka[0, 0]).all() and np.isfinite(cka[0, 1:]).all()
    swap_cfg = SwapConfig(**pipeline, steps="0", layers="1")
    (tmp_path / "swap.json").write_text(swap_cfg.to_json())
    code, _, err = run_cli("swap", "--config", tmp_path / "swap.json", "--out", tmp_path / "s")
    assert code == 0, err
    swapped = json.loads((tmp_path / "s" / "result.json").read_text())
    assert swapped["config"]["experiment"] == "swap" and np.isfinite(np.array(swapped["values"], float)).all()
    perturb_cfg = PerturbConfig(**pipeline, steps="0,2", frames_to_noise="1")
    (tmp_path / "perturb.json").write_text(perturb_cfg.to_json())
    code, stdout, err = run_cli("perturb", "--config", tmp_path / "perturb.json", "--out", tmp_path / "n")
    assert code == 0, err
    noised = json.loads((tmp_path / "n" / "result.json").read_text())
    assert noised["baseline"]["similarity"] == pytest.approx(1.0)
    assert set(noised["at_step"]) == {"0", "2"} and noised["at_frame"]["1"]["similarity"] < 1.0
    bad = PatchConfig(**pipeline, metric="maze")
    (tmp_path / "bad.json").write_text(bad.to_json())
    code, _, err = run_cli("patch", "--config", tmp_path / "bad.json", "--out", tmp_path / "b")
    assert code == 2 and "use metric 'latent'" in err
