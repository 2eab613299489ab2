import numpy as np
import pytest
import torch

from activations import ActivationStore
from interp.analysis.token_energy import energy_by_layer, pca_rgb, token_energy
from interp.experiments.trace import TraceConfig, run_trace
from interp.models import testbed


@pytest.fixture
def store_path(tmp_path):
    torch.manual_seed(0)
    adapter = testbed.TestbedAdapter(
        testbed.build_transformer({"num_layers": 2, "ffn_dim": 32, "num_attention_heads": 2, "attention_head_dim": 8}),
        testbed.SamplingDefaults(num_steps=4),
    )
    return run_trace(TraceConfig(n=2, dtype="float32"), tmp_path / "e.h5", adapter=adapter, progress=False)


def test_token_energy_is_the_l2_norm_on_the_token_grid(store_path):
    with ActivationStore(store_path) as store:
        energy = token_energy(store, "blocks.1", videos=[1], steps=[2])
        acts = store.activations("blocks.1", videos=[1], steps=[2])
        assert energy.shape == (1, 1, 4, 4, 4)
        np.testing.assert_allclose(energy.reshape(-1), np.linalg.norm(acts, axis=-1).reshape(-1), rtol=1e-6)
        matrix = energy_by_layer(store, video=1, step=2)
        assert matrix.shape == (2, 4)  # layers x frames
        np.testing.assert_allclose(matrix[1], energy[0, 0].mean(axis=(1, 2)), rtol=1e-6)
        rgb = pca_rgb(store, "blocks.0", video=0, step=0)
        assert rgb.shape == (4, 4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1 and rgb.std() > 0


def test_energy_command_writes_figures(store_path, tmp_path, run_cli):
    code, out, err = run_cli("energy", store_path, "--video", 1, "--step", 3, "--out", tmp_path / "fig")
    assert code == 0, err
    for name in ("energy_layers_frames.png", "energy_maps.png", "pca_maps.png", "energy_layers_frames.npy"):
        assert (tmp_path / "fig" / name).stat().st_size > 0
    code, _, err = run_cli("energy", store_path, "--step", 9, "--out", tmp_path / "fig")
    assert code == 2 and "step 9 is not stored" in err


def test_energy_maps_of_several_steps_share_a_scale_from_the_command_line(store_path, tmp_path, run_cli):
    code, out, err = run_cli("energy", store_path, "--step", 3, "--scale-step", 0, "--out", tmp_path / "fig")
    assert code == 0 and "2 steps read" in out, err
    manifest = (tmp_path / "fig" / "run.json").read_text()
    assert "colour scale is shared by steps 0, 3, so the figures of those steps compare" in manifest
    code, _, err = run_cli("energy", store_path, "--step", 3, "--scale-step", 9, "--out", tmp_path / "fig")
    assert code == 2 and "9" in err and "not stored" in err, err
