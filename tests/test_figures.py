"""Figures say what they show: separate scales for different quantities, per-step controls as
curves, inputs that decode a target flagged, intervals from per-video resampling."""

import numpy as np
import pandas as pd
import pytest

from probes.intervals import bootstrap_scores, probe_intervals
from probes.labels import CLASS, REGRESSION
from probes.plots import probe_figure
from probes.run import COLUMNS


def _table(condition: float, steps=(0, 1, 2), layers=(0, 1)) -> pd.DataFrame:
    rows = []
    for step in steps:
        for layer in layers:
            value = 0.6 + 0.1 * layer + 0.05 * step
            rows.append({
                "target": "t", "kind": CLASS, "site": f"site{layer}", "layer": layer, "step": step, "sigma": 1.0,
                "metric": "accuracy", "value": value, "control": 0.5, "selectivity": value - 0.5,
                "majority_rate": 0.55, "x_t": 0.5 + 0.1 * step, "condition": condition, "regularisation": 1.0,
                "n_train_videos": 6, "n_test_videos": 2, "method": "fast", "value_lo": value - 0.05,
                "value_hi": value + 0.05, "selectivity_lo": 0.0, "selectivity_hi": 0.4,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_probe_figure_scales_curves_and_input_flag():
    import matplotlib.pyplot as plt

    fig = probe_figure(_table(condition=0.9), "t")
    probe, control, selectivity, curves = fig.axes[:4]
    clim = [ax.collections[0].get_clim() for ax in (probe, control, selectivity)]
    assert clim[0] == clim[1] == (0.0, 1.0)  # probe and control: one accuracy scale
    assert clim[2][0] == -clim[2][1] and clim[2] != clim[0]  # selectivity: its own, centred on 0
    labels = [line.get_label() for line in curves.get_lines()]
    assert "probe on x_t alone" in labels and "conditioning alone" in labels and "majority class" in labels
    x_t = next(line for line in curves.get_lines() if line.get_label() == "probe on x_t alone")
    assert list(x_t.get_xdata()) == [0, 1, 2]  # one value per step: a curve, not a layer x step grid
    title = fig._suptitle.get_text()
    assert "WARNING: target decodable from the inputs" in title and "conditioning alone" in title
    plt.close(fig)
    fig = probe_figure(_table(condition=0.3), "t")
    assert "WARNING" not in fig._suptitle.get_text()
    plt.close(fig)


def test_bootstrap_resamples_videos_not_tokens():
    # Two test videos: one all right, one all wrong. Token counts do not shrink the interval.
    video = np.repeat([0, 1], 500)
    y = np.zeros(1000)
    pred = np.where(video == 0, 0.0, 1.0)
    boot = bootstrap_scores([pred], [y], video, CLASS, n_boot=400)
    assert set(np.unique(boot.round(6))) <= {0.0, 0.5, 1.0} and boot.min() == 0.0 and boot.max() == 1.0
    low, high, sel_low, sel_high = probe_intervals(pred, y, y, y, video, CLASS)
    assert low == 0.0 and high == 1.0 and sel_low <= -0.5  # the control is always right here


def test_bootstrap_r2_matches_the_pooled_score_on_the_full_sample():
    rng = np.random.default_rng(0)
    video = np.repeat(np.arange(6), 50)
    y = rng.standard_normal(300)
    pred = y + 0.5 * rng.standard_normal(300)
    boot = bootstrap_scores([pred], [y], video, REGRESSION, n_boot=2000)[:, 0]
    r2 = 1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert np.quantile(boot, 0.025) < r2 < np.quantile(boot, 0.975)
    assert abs(np.median(boot) - r2) < 0.05


@pytest.mark.parametrize("n_videos", [1])
def test_one_test_video_gives_no_interval(n_videos):
    assert np.isnan(probe_intervals(np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(4, int), CLASS)).all()


def test_pair_intervals_cover_the_mean_and_need_two_pairs():
    from interp.analysis.bootstrap import pair_intervals

    per_pair = np.array([[[0.0, 1.0]], [[1.0, 1.0]], [[0.5, np.nan]]])  # (pairs, steps, layers)
    low, high = pair_intervals(per_pair)
    assert low.shape == (1, 2) and low[0, 0] <= 0.5 <= high[0, 0] and low[0, 1] == high[0, 1] == 1.0
    assert np.isnan(pair_intervals(per_pair[:1])[0]).all()


def test_noise_curves_have_integer_frame_ticks_and_name_what_is_zero_by_construction(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from interp.report import causal_figures

    kept = {}
    monkeypatch.setattr(plt, "close", lambda fig: kept.setdefault("fig", fig))
    point = {"accuracy": 0.0, "ci95": [0.0, 0.1], "final_exact": 1.0, "final_exact_ci95": [0.9, 1.0]}
    at_frame = {"0": point, "1": point, "2": point}  # keys as they come back from result.json
    causal_figures.noise_curves({"accuracy": 1.0}, {"0": point, "5": point}, at_frame, tmp_path / "n.png")
    frames_ax = kept["fig"].axes[1]
    ticks = [t for t in frames_ax.get_xticks() if 0 <= t <= 2]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert "0 by construction" in frames_ax.get_title()


def test_energy_maps_share_one_scale_per_layer_across_steps_with_colour_bars(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from interp.report.energy_plots import maze_walls, plot_token_maps
    from interp.tasks import maze as maze_task

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig: kept.append(fig))
    maps = np.random.default_rng(0).random((2, 3, 4, 4))
    walls = maze_walls(maze_task.generate_maze(4, 0).open_sides)
    plot_token_maps(maps, [0, 7], tmp_path / "e.png", limits=[(0.0, 5.0), (1.0, 2.0)], overlay=walls)
    fig = kept[0]
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert {im.get_clim() for im in images[:3]} == {(0.0, 5.0)} and {im.get_clim() for im in images[3:]} == {(1.0, 2.0)}
    assert len([ax for ax in fig.axes if not ax.images]) == 2  # one colour bar per layer row
    assert all(ax.lines for ax in fig.axes if ax.images)  # the maze's walls drawn on every map


def test_filmstrips_keep_the_steps_that_change_and_choose_mazes_that_show_change():
    from types import SimpleNamespace

    from interp.experiments.generate import choose_filmstrips
    from interp.report.filmstrip import changing_rows

    x0 = np.zeros((20, 4, 9, 9, 3), np.uint8)
    x0[3:] = 1
    x0[12:] = 2  # the picture changes at steps 3 and 12
    assert changing_rows(x0) == [0, 3, 12, 19]
    assert len(changing_rows(np.arange(20)[:, None] * np.ones((20, 2)), max_rows=8)) == 8

    def made(seed, solved, commit, size=4):
        video = np.full((4, 9, 9, 3), 9, np.uint8)
        x0 = np.zeros((20, 4, 9, 9, 3), np.uint8)
        x0[commit:] = video
        return SimpleNamespace(maze=SimpleNamespace(seed=seed, size=size), verdict=SimpleNamespace(solved=solved),
                               video=video, x0_videos=x0)  # fmt: skip

    pool = [made(0, True, 0), made(1, True, 9), made(2, False, 2), made(3, True, 0)]
    chosen = choose_filmstrips(pool, [made(10, False, 5, size=5)], 3)
    assert [g.maze.seed for g in chosen] == [2, 1, 10]  # the failure, the late commit, a larger size


def test_the_ensemble_claim_is_decided_by_a_paired_test_when_rows_keep_their_mazes():
    from interp.analysis.claims import ensemble_gain

    def row(method, solved, **extra):
        return {"size": 5, "method": method, "accuracy": np.mean(solved), "ci95": [0.0, 1.0], "solved": solved,
                **extra}  # fmt: skip

    wide = [row("ensemble (mean)", [1] * 10 + [0] * 2, n_seeds=3), row("control: temperature", [0] * 9 + [1] + [0] * 2)]
    verdict = ensemble_gain(wide)[0]
    assert verdict["verdict"] == "shows" and "McNemar" in verdict["why"]  # overlapping intervals, paired: shows
    close = [row("ensemble (mean)", [1, 1, 0, 0], n_seeds=3), row("control: temperature", [1, 0, 0, 0])]
    assert ensemble_gain(close)[0]["verdict"] == "cannot tell"
