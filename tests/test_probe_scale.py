"""A regression target's scale and offset do not change its score: the target x 1e-300, + 1e9 or
x -1e6 scores as the target itself, on the whole and the budgeted path."""

import numpy as np
import pytest
from test_control_task import N_VIDEOS, _i2v_store

from probes.labels import standardised
from probes.run import ProbeConfig, run_probes


@pytest.mark.parametrize("max_tokens", [None, 20])
def test_a_targets_scale_does_not_change_its_score(tmp_path, max_tokens):
    condition = np.random.default_rng(7).standard_normal((N_VIDEOS, 4, 1, 4, 4))
    planted = _i2v_store(tmp_path / "s.h5", condition)
    target = planted + 0.5 * np.random.default_rng(1).standard_normal(planted.shape)
    transforms = {"tiny": lambda t: t * 1e-300, "shifted": lambda t: t + 1e9, "flipped": lambda t: -1e6 * t + 3}
    cfg = ProbeConfig(targets=[], max_tokens=max_tokens)
    plain = run_probes(tmp_path / "s.h5", cfg, progress=False, labels={"t": target}, write=False)
    assert plain.set_index("site").loc["blocks.1", "value"] > 0.3  # the planted signal is found
    for name, transform in transforms.items():  # one target per run: the control task's draw is the same
        table = run_probes(tmp_path / "s.h5", cfg, progress=False, labels={"t": transform(target)}, write=False)
        for column in ("value", "control", "x_t", "condition", "value_lo", "selectivity_hi"):
            np.testing.assert_allclose(table[column], plain[column], atol=1e-6, err_msg=f"{name} {column}")


def test_standardised_keeps_the_signal_at_any_scale():
    y = np.array([1.0, 2.0, 4.0, np.nan, 7.0])
    rows = np.array([0, 1, 2, 3])
    expected = (y - np.mean([1, 2, 4])) / np.std([1, 2, 4])
    for a, b in ((1e-300, 0.0), (1.0, 1e9), (-1e200, 5.0)):
        np.testing.assert_allclose(standardised(a * y + b, rows), np.sign(a) * expected, rtol=1e-6, atol=1e-6)
    assert np.isnan(standardised(y, rows)[3])
    assert (standardised(np.full(4, 1e9), np.arange(4)) == 0).all()  # a constant target: centred only


def test_fit_probe_scores_a_target_at_any_scale_and_predicts_in_its_units():
    from probes.arrays import fit_probe

    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 16, 8)).astype(np.float32)
    y = x[..., :2].sum(-1).astype(np.float64) + 0.3 * rng.standard_normal((24, 16))
    plain = fit_probe(x, y)
    assert plain.score > 0.5
    for scale, shift in ((1e-300, 0.0), (1.0, 1e9), (-1e6, 3.0)):
        probe = fit_probe(x, scale * y + shift)
        assert probe.score == pytest.approx(plain.score, abs=1e-6)
        np.testing.assert_allclose(probe.predict(x[:2]), scale * plain.predict(x[:2]) + shift, rtol=1e-5,
                                   atol=1e-5 * abs(scale))  # fmt: skip
