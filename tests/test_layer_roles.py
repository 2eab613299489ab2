"""Layer specialisation: the roles verdict on hand-made profiles, CKA to the final sample on a
store whose tokens are known, and the experiment on the shipped testbed."""

import json

import numpy as np
import pytest

from activations import ActivationStore, StoreLayout, StoreWriter
from interp.analysis.claims import CANNOT_TELL, NOT_SHOWN, SHOWS
from interp.analysis.layer_roles import Profile, localise, roles_claim, thirds
from interp.experiments.layers import cka_to_final

LAYERS = list(range(6))  # thirds: 0-1, 2-3, 4-5


def _profile(name, values, half_width):
    values = np.asarray(values, dtype=float)
    return Profile(name, LAYERS, values, values - half_width, values + half_width)


def test_thirds_cover_every_layer_once():
    for n in (3, 6, 8, 40):
        parts = thirds(n)
        assert len(parts) == 3 and np.array_equal(np.concatenate(parts), np.arange(n))


def test_two_profiles_peaking_apart_with_narrow_intervals_separate():
    early = _profile("wall", [0.9, 0.8, 0.3, 0.2, 0.1, 0.1], 0.05)
    late = _profile("path", [0.1, 0.1, 0.2, 0.3, 0.6, 0.9], 0.05)
    assert localise(early) == ("localised", 0) and localise(late) == ("localised", 2)
    verdict = roles_claim([early, late])
    assert verdict["verdict"] == SHOWS and "wall early" in verdict["why"] and "path late" in verdict["why"]


def test_the_same_peaks_with_wide_intervals_cannot_tell():
    early = _profile("wall", [0.9, 0.8, 0.3, 0.2, 0.1, 0.1], 0.5)
    late = _profile("path", [0.1, 0.1, 0.2, 0.3, 0.6, 0.9], 0.5)
    assert localise(early)[0] == "unresolved"
    assert roles_claim([early, late])["verdict"] == CANNOT_TELL


def test_flat_profiles_or_one_shared_third_do_not_show():
    flat = _profile("wall", [0.26] * 6, 0.03)  # a tie is flat, never "a peak at layer 0"
    assert localise(flat) == ("flat", None)
    late = _profile("cka", [0.1, 0.1, 0.2, 0.3, 0.6, 0.9], 0.05)
    verdict = roles_claim([flat, late])
    assert verdict["verdict"] == NOT_SHOWN and "late" in verdict["why"]
    assert "wall: flat" in verdict["measurement"] and "cka peaks at layer 5 (late)" in verdict["measurement"]


def test_fewer_than_three_layers_cannot_tell():
    two = Profile("x", [0, 1], np.array([0.1, 0.9]), np.array([0.0, 0.8]), np.array([0.2, 1.0]))
    assert roles_claim([two, two])["verdict"] == CANNOT_TELL


GRID = (2, 2, 2)
LATENT = (4, 2, 4, 4)  # patch (1, 2, 2): 16 features per token


def _known_store(path, n_videos=6, seed=0):
    """blocks.0 holds each token's patch of the final sample (cut by hand from token_positions);
    blocks.1 is noise independent of it."""
    rng = np.random.default_rng(seed)
    sites = ["blocks.0", "blocks.1"]
    layout = StoreLayout(model="synthetic", adapter="none", num_steps=1, steps=[0], timesteps=[1000.0],
                         sigmas=[1.0, 0.0], sites=sites, hidden=dict.fromkeys(sites, 16), token_grid=GRID,
                         pooling=json.dumps({"kind": "none", "factor": 1, "count": 0, "seed": 0}), n_tokens=8,
                         latent_shape=LATENT, n_videos=n_videos, video_keys=[f"v{i}" for i in range(n_videos)],
                         dtype="float32")  # fmt: skip
    final = rng.standard_normal((n_videos, *LATENT)).astype(np.float32)
    positions = [(t, h, w) for t in range(2) for h in range(2) for w in range(2)]  # frame-major
    copy = np.stack([[final[v, :, t, 2 * h : 2 * h + 2, 2 * w : 2 * w + 2].reshape(-1) for t, h, w in positions]
                     for v in range(n_videos)])  # fmt: skip
    with StoreWriter(path, layout) as writer:
        part = writer.begin_part(list(range(n_videos)))
        part.write_site("blocks.0", 0, copy)
        part.write_site("blocks.1", 0, rng.standard_normal(copy.shape).astype(np.float32))
        part.write_x0_hat(0, final)
        part.write_x_t(0, final)
        part.finish(final, [{"task": "synthetic"}] * n_videos)
    return positions


def test_cka_to_the_final_sample_reads_each_tokens_own_patch(tmp_path):
    positions = _known_store(tmp_path / "k.h5")
    with ActivationStore(tmp_path / "k.h5") as store:
        assert [tuple(p) for p in store.token_positions] == positions
        cka = cka_to_final(store, ["blocks.0", "blocks.1"], [0])
    assert cka.shape == (6, 1, 2)
    # Each token's own patch gives CKA 1 (a token read from another place would not); noise does not.
    np.testing.assert_allclose(cka[:, 0, 0], 1.0, atol=1e-6)
    assert (cka[:, 0, 1] < 0.9).all()


@pytest.fixture(scope="module")
def testbed_layers(tmp_path_factory):
    """The experiment on the shipped testbed: a small trace, its probes, the profiles."""
    from interp.experiments.layers import LayersConfig, run_layers, save_layers
    from interp.experiments.probe import probe_store
    from interp.experiments.trace import TraceConfig, run_trace
    from probes.run import ProbeConfig, save_results

    folder = tmp_path_factory.mktemp("layers")
    store = run_trace(TraceConfig(n=12, steps="0,10,19"), folder / "t.h5", progress=False)
    probe_cfg = ProbeConfig(targets=["on_path"])
    save_results(probe_store(store, probe_cfg, progress=False), store, probe_cfg, None)
    cfg = LayersConfig(store=str(store), n=2, patch_steps="0,10")
    result = run_layers(cfg, progress=False)
    return result, save_layers(result, cfg, folder / "out"), folder / "out"


def test_the_testbed_profiles_cover_every_layer_with_a_verdict(testbed_layers):
    result, manifest, out = testbed_layers
    names = [p.name for p in result.profiles]
    assert names == ["on_path selectivity", "CKA to the final sample", "patching effect"]
    assert all(len(p.values) == 8 and np.isfinite(p.values).all() for p in result.profiles)
    assert result.cka.shape == (12, 3, 8) and result.patch.shape == (2, 2, 8)
    assert ((result.cka > 0) & (result.cka <= 1 + 1e-9)).all()
    assert result.verdict["verdict"] in (SHOWS, NOT_SHOWN, CANNOT_TELL)
    assert manifest.claims == [result.verdict] and manifest.headline[0].startswith("layer roles: ")
    record = json.loads((out / "layers.json").read_text())
    assert record["verdict"] == result.verdict and len(record["profiles"]) == 3
    assert (out / "layer_profiles.png").stat().st_size > 10_000


def test_layer_roles_refuse_a_store_of_another_size_and_missing_tables(testbed_layers, run_cli, tmp_path):
    result = testbed_layers[0]
    store = result.config.store
    code, _, err = run_cli("layers", "--store", store, "--size", "5", "--out", tmp_path / "a")
    assert code == 2 and "holds 4x4 mazes" in err and "Traceback" not in err
    code, _, err = run_cli("layers", "--store", store, "--probes", "other", "--out", tmp_path / "b")
    assert code == 2 and "no probe table 'other'" in err
    assert not (tmp_path / "a" / "layers.json").exists()
