"""The layer-specialisation figure: per-layer profiles side by side, each on its own scale."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from interp.analysis.layer_roles import THIRDS, thirds
from interp.report.mpl import pyplot


def _thirds(ax, layers: list[int]) -> None:
    """Shade early / middle / late and name them at the top."""
    for i, part in enumerate(thirds(len(layers))):
        lo, hi = layers[part[0]] - 0.5, layers[part[-1]] + 0.5
        ax.axvspan(lo, hi, color="0.93" if i % 2 == 0 else "white", zorder=0)
        ax.text((lo + hi) / 2, 0.01, THIRDS[i], transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=7, color="0.4")  # fmt: skip


def _band(ax, profile, label: str, **style) -> None:
    layers = profile.layers
    ax.plot(layers, profile.values, marker="o", ms=3, label=label, **style)
    low, high = np.asarray(profile.low, dtype=float), np.asarray(profile.high, dtype=float)
    if np.isfinite(low).any():
        ax.fill_between(layers, low, high, alpha=0.2, color=ax.lines[-1].get_color())


def layer_profiles_figure(result, path: str | Path) -> Path:
    """Three panels over layers: probe selectivity per target, CKA to the final sample (mean and a few
    steps), the diff-region patching effect (mean and per start step); 95% intervals as bands."""
    plt = pyplot()
    probes = [p for p in result.profiles if p.name.endswith("selectivity")]
    cka, patch = result.profiles[-2], result.profiles[-1]
    layers = cka.layers
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for p in probes:
        _band(axes[0], p, p.name.removesuffix(" selectivity"))
    axes[0].axhline(0, color="0.5", lw=0.8)
    axes[0].set_title("probe selectivity (score - control task),\nbest step per layer", fontsize=9)
    axes[0].set_ylabel("selectivity")
    _band(axes[1], cka, "mean over steps", color="k")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        by_step = np.nanmean(result.cka, axis=0)  # (steps, layers)
        by_start = np.nanmean(result.patch, axis=0)  # (start steps, layers)
    picks = sorted({0, len(result.cka_steps) // 2, len(result.cka_steps) - 1})
    for j in picks:
        axes[1].plot(layers, by_step[j], lw=1, alpha=0.8, label=f"step {result.cka_steps[j]}")
    axes[1].set_title("linear CKA of the layer to the final sample\n(per video, same tokens)", fontsize=9)
    axes[1].set_ylabel("CKA")
    _band(axes[2], patch, "mean over start steps", color="k")
    for j, step in enumerate(result.patch_steps):
        axes[2].plot(layers, by_start[j], lw=1, alpha=0.8, label=f"from step {step}")
    axes[2].set_title("patching the diff region of one layer onward\n(1 = clean final, 0 = corrupted)", fontsize=9)
    axes[2].set_ylabel("patching effect")
    for ax in axes:
        _thirds(ax, layers)
        ax.set_xticks(layers)
        ax.set_xlabel("layer")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.suptitle(f"{result.verdict['verdict']}: {result.verdict['why']}", fontsize=9, y=1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
