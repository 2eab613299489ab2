"""The control task on a store with a conditioning latent (image-to-video): a continuous frame
leaves token types at positions, so a target of position alone scores no selectivity and a planted
feature keeps its margin; a categorical frame (a few values, or a VAE-like encoding of a few
categories) adds its categories; the number of types is reported beside every control."""

import json

import numpy as np
import pytest

from activations import StoreLayout, StoreWriter
from probes.features import ConditionSummary
from probes.run import ProbeConfig, run_probes

GRID = (2, 4, 4)
N_TOKENS = 32
HIDDEN = 64
N_VIDEOS = 40


def _i2v_store(path, condition: np.ndarray, seed: int = 0) -> np.ndarray:
    """Block outputs that see each token's position and its conditioning (a random nonlinear read,
    as a model's would be); block 1 also carries a planted binary token label. Returns the label."""
    rng = np.random.default_rng(seed)
    position = rng.standard_normal((N_TOKENS, HIDDEN))
    reads = rng.standard_normal((condition.shape[1], HIDDEN))
    planted = rng.integers(0, 2, size=(N_VIDEOS, N_TOKENS))
    direction = rng.standard_normal(HIDDEN)
    direction /= np.linalg.norm(direction)
    sites = ["blocks.0", "blocks.1"]
    layout = StoreLayout(
        model="synthetic-i2v", adapter="none", num_steps=1, steps=[0], timesteps=[1000.0], sigmas=[1.0, 0.0],
        sites=sites, hidden={s: HIDDEN for s in sites}, token_grid=GRID,
        pooling=json.dumps({"kind": "none", "factor": 1, "count": 0, "seed": 0}), n_tokens=N_TOKENS,
        latent_shape=(4, *GRID), n_videos=N_VIDEOS, video_keys=[f"v{i}" for i in range(N_VIDEOS)], dtype="float32",
        condition_shape=condition.shape[1:],
    )  # fmt: skip
    with StoreWriter(path, layout) as writer:
        for start in range(0, N_VIDEOS, 10):
            videos = list(range(start, start + 10))
            part = writer.begin_part(videos)
            cond = condition[videos]  # (10, C, 1, 4, 4): the same at every frame's token
            at_token = np.tile(cond.reshape(10, cond.shape[1], 16).transpose(0, 2, 1), (1, GRID[0], 1))
            for k, site in enumerate(sites):
                x = np.tanh(position[None] + at_token @ reads) + 0.3 * rng.standard_normal((10, N_TOKENS, HIDDEN))
                if k == 1:
                    x += 2.0 * (2 * planted[videos, :, None] - 1) * direction
                part.write_site(site, 0, x.astype(np.float32))
            part.write_x0_hat(0, rng.standard_normal((10, 4, *GRID)).astype(np.float32))
            part.write_x_t(0, rng.standard_normal((10, 4, *GRID)).astype(np.float32))
            part.write_condition(cond.astype(np.float32))
            part.finish(np.zeros((10, 4, *GRID), np.float32), [{"task": "synthetic"}] * 10)
    return planted


@pytest.mark.parametrize("max_tokens", [None, 24])
def test_a_continuous_frame_gives_position_types_and_no_selectivity_to_position(tmp_path, max_tokens):
    condition = np.random.default_rng(7).standard_normal((N_VIDEOS, 4, 1, 4, 4))
    planted = _i2v_store(tmp_path / "s.h5", condition)
    position_only = np.tile(np.random.default_rng(5).integers(0, 2, N_TOKENS), (N_VIDEOS, 1))
    table = run_probes(tmp_path / "s.h5", ProbeConfig(targets=[], max_tokens=max_tokens), progress=False,
                       labels={"position": position_only, "planted": planted}, write=False)  # fmt: skip
    rows = table.set_index(["target", "site"])
    assert (table["control_types"] == N_TOKENS).all()  # positions only: the frame is continuous
    assert rows.loc[("position", "blocks.0"), "value"] > 0.7  # the blocks do read position
    assert (table[table["target"] == "position"]["selectivity"].abs() < 0.1).all()
    planted_rows = rows.loc["planted"]
    assert planted_rows.loc["blocks.1", "value"] > 0.95
    assert planted_rows.loc["blocks.1", "selectivity"] - planted_rows.loc["blocks.0", "selectivity"] > 0.3


def test_a_categorical_frame_adds_its_categories_to_the_types(tmp_path):
    rng = np.random.default_rng(3)
    prototypes = rng.standard_normal((3, 4))
    category = rng.integers(0, 3, size=(N_VIDEOS, 16))
    encoded = prototypes[category] + 0.02 * rng.standard_normal((N_VIDEOS, 16, 4))  # a VAE's few codes, not exact
    condition = encoded.transpose(0, 2, 1).reshape(N_VIDEOS, 4, 1, 4, 4)
    planted = _i2v_store(tmp_path / "s.h5", condition)
    table = run_probes(tmp_path / "s.h5", ProbeConfig(targets=[]), progress=False, labels={"planted": planted},
                       write=False)  # fmt: skip
    assert (table["control_types"] == N_TOKENS * 3).all()  # every position shows each category somewhere
    summary = ConditionSummary.fit(encoded)
    assert summary.kind == "clusters" and len(summary.centres) == 3
    ids = summary(encoded)
    assert len({(a, b) for a, b in zip(ids.ravel(), category.ravel())}) == 3  # the categories, recovered
    codes = np.random.default_rng(4).integers(-3, 4, size=(5, 4)).astype(float)  # five exact codes, far apart
    exact = ConditionSummary.fit(codes[rng.integers(0, 5, 400)])
    assert exact.kind == "values" and len(exact.centres) == 5
    assert ConditionSummary.fit(rng.standard_normal((500, 1))).kind == "none"  # one continuous channel too
