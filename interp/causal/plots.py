"""Figures and files of the causal experiments: every result is written beside its config."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_record(out: Path, config: dict, record: dict, figure: str) -> dict[str, Path]:
    """config.json and result.json in ``out`` (created); the paths, with the figure's to come."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (out / "result.json").write_text(json.dumps(record, indent=2))
    return {"config": out / "config.json", "result": out / "result.json", "figure": out / figure}


def _axes_record(result) -> dict:
    """Config, dims and integer coords of a DataArray result, for result.json."""
    return {
        "config": json.loads(result.attrs["config"]),
        "dims": list(result.dims),
        "coords": {d: [int(v) for v in result.coords[d].values] for d in result.dims},
    }


def _finite_or_none(values: np.ndarray) -> list:
    return np.where(np.isfinite(values), values, None).tolist()


def save_grid(result, out: str | Path, title: str, vmin: float = 0.0, vmax: float = 1.0) -> dict[str, Path]:
    """A (step, layer) DataArray: result.json (config, coords, values), config.json and a heatmap."""
    import seaborn as sns

    record = {
        **_axes_record(result),
        "name": result.name,
        "values": _finite_or_none(result.values),
        "attrs": {k: json.loads(v) if k != "meaning" else v for k, v in result.attrs.items() if k != "config"},
    }
    paths = _write_record(Path(out), record["config"], record, "heatmap.png")
    plt = _plt()
    # Wide enough for the title even with one or two steps (a swap at the first step only).
    width = max(1.2 + 0.45 * result.sizes["step"], 0.075 * len(title) + 1.0)
    fig, ax = plt.subplots(figsize=(width, 1.4 + 0.35 * result.sizes["layer"]))
    grid = result.transpose("layer", "step").to_pandas().sort_index(ascending=False)
    sns.heatmap(grid, ax=ax, vmin=vmin, vmax=vmax, cmap="viridis", annot=grid.size <= 200, fmt=".2f")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(paths["figure"], dpi=110)
    plt.close(fig)
    return paths


def save_perturb(result: dict, out: str | Path) -> dict[str, Path]:
    """Noise at step vs noise at frame: accuracy curves with 95% intervals and the baseline."""
    paths = _write_record(Path(out), result["config"], result, "noise_step_vs_frame.png")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, key, label in ((axes[0], "at_step", "denoising step s"), (axes[1], "at_frame", "frame f")):
        xs = sorted(result[key], key=int)
        if "similarity" in result["baseline"]:  # a pipeline model: no verifier
            ax.plot(xs, [result[key][x]["similarity"] for x in xs], "o-", label="cosine similarity to unperturbed")
            ax.set_xlabel(label)
            ax.set_ylim(-1.02, 1.02)
            continue
        for metric, colour in (("accuracy", "C0"), ("final_exact", "C1")):
            ys = [result[key][x][metric] for x in xs]
            ci = np.array([result[key][x]["ci95" if metric == "accuracy" else "final_exact_ci95"] for x in xs])
            ax.plot(xs, ys, "o-", color=colour, label="solved" if metric == "accuracy" else "answer (last frame)")
            ax.fill_between(xs, ci[:, 0], ci[:, 1], color=colour, alpha=0.2)
        ax.axhline(result["baseline"]["accuracy"], color="grey", ls="--", label="no noise (solved)")
        ax.set_xlabel(label)
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_title("x_s of every frame replaced by fresh noise at step s", fontsize=10)
    axes[1].set_title("frame f replaced by fresh noise at every step", fontsize=10)
    axes[0].set_ylabel("share of mazes")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["figure"], dpi=110)
    plt.close(fig)
    return paths


def save_flow(result, out: str | Path) -> dict[str, Path]:
    """Information flow: sensitivity per injection step, and 1 - CKA (step x layer) per injection."""
    import seaborn as sns

    values = result.values
    record = {
        **_axes_record(result),
        "cka": _finite_or_none(values),
        "x0_hat_cka": json.loads(result.attrs["x0_hat_cka"]),
        "sensitivity": json.loads(result.attrs["sensitivity"]),
    }
    paths = _write_record(Path(out), record["config"], record, "flow.png")
    plt = _plt()
    injects = record["coords"]["inject_step"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].plot(injects, record["sensitivity"], "o-")
    axes[0].set_xlabel("step s where noise is injected")
    axes[0].set_ylabel("mean 1 - CKA of later block outputs")
    axes[0].set_title("sensitivity to noise injected at step s", fontsize=10)
    with warnings.catch_warnings():  # steps before every injection are all-NaN columns
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(1 - values, axis=0)  # (step, layer) averaged over injections
    grid = result.isel(inject_step=0).copy(data=mean).transpose("layer", "step").to_pandas().sort_index(ascending=False)
    sns.heatmap(grid, ax=axes[1], vmin=0, vmax=max(0.05, float(np.nanmax(mean))), cmap="magma")
    axes[1].set_title("1 - CKA to the clean run, averaged over injection steps", fontsize=10)
    axes[1].set_xlabel("denoising step")
    axes[1].set_ylabel("layer")
    fig.tight_layout()
    fig.savefig(paths["figure"], dpi=110)
    plt.close(fig)
    return paths
