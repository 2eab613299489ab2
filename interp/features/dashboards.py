"""Feature dashboards (issue 31, item 4): for one SAE latent, its mean activation over latent frames x stored
steps, its step profile, the held-out tokens where it fires most drawn on their video's decoded x0_hat frame
at the SAE's step, the target it best matches, and its splice-in importance (the final latent's move and the
verifier's failures when it alone is ablated at its step, beside random directions of the same norm).

The profile reads the store one block at a time; an SAE of one step is applied to every stored step's tokens
(how that step's feature reads elsewhere: off its training distribution, said in the figure), a step-shared
SAE at each of its own steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from interp.features.saes import encoded_blocks, random_directions


@dataclass
class Dashboard:
    site: str
    step: int  # the SAE's step (where its top tokens are read)
    feature: int
    target: str  # the target it was chosen for
    match: str  # e.g. "auroc 0.82 (control 0.57)"
    steps: list[int]
    profile: np.ndarray  # (steps, latent frames) mean activation over the held-out videos' tokens
    off_distribution: list[int]  # steps its SAE was not trained on
    top: list[tuple[int, int, float]]  # (video, token, activation) of the strongest held-out tokens at ``step``
    importance: dict[str, float] | None = None  # loss name -> the ablation's mean loss (and random controls')


def _activations(store, sae, site: str, step: int, feature: int, videos: list[int]) -> np.ndarray:
    """(videos, stored tokens) activation of one latent, in ``videos``' order."""
    out = np.zeros((len(videos), store.layout.n_tokens), dtype=np.float32)
    where = {v: i for i, v in enumerate(videos)}
    for block, start, stop, z in encoded_blocks(store, sae, site, step, videos, [feature]):
        out[[where[v] for v in block], start:stop] = z.reshape(len(block), -1)
    return out


def feature_dashboard(
    store, sae_at: Callable[[int], object], site: str, step: int, feature: int, videos: list[int],
    trained_steps: list[int], target: str = "", match: str = "", n_top: int = 6,
) -> Dashboard:  # fmt: skip
    """Everything the figure shows but the decoded frames; ``sae_at(step)``: the SAE to read a step with."""
    grid = store.pooling.output_grid(tuple(store.layout.token_grid))
    steps = list(store.steps)
    profile = np.zeros((len(steps), grid[0] if grid else 1))
    top: list[tuple[int, int, float]] = []
    for i, s in enumerate(steps):
        acts = _activations(store, sae_at(s if s in trained_steps else step), site, s, feature, videos)
        profile[i] = acts.reshape(len(videos), profile.shape[1], -1).mean((0, 2)) if grid else acts.mean()
        if s == step:
            order = np.argsort(acts.reshape(-1))[::-1][:n_top]
            top = [(videos[k // acts.shape[1]], int(k % acts.shape[1]), float(acts.reshape(-1)[k])) for k in order]
    off = [s for s in steps if s not in trained_steps]
    return Dashboard(site, step, feature, target, match, steps, profile, off, top)


def draw_dashboard(board: Dashboard, store, path: str | Path, model=None) -> Path:
    """The dashboard as one figure: frames x steps heatmap, step profile, the top tokens on x0_hat decoded by
    ``model`` (its ``pixel_box`` places a token on its frame; None: no frames drawn)."""
    from interp.report.mpl import pyplot

    plt = pyplot()
    n_top = len(board.top) if model is not None else 0
    decoded: dict[int, np.ndarray] = {}  # video -> its x0_hat at the board's step, decoded once
    fig = plt.figure(figsize=(3.2 * 2 + 1.6 * max(n_top, 1), 3.0))
    grid = fig.add_gridspec(1, 2 + max(n_top, 1), width_ratios=[2, 2] + [1] * max(n_top, 1))
    ax = fig.add_subplot(grid[0, 0])
    image = ax.imshow(board.profile.T, aspect="auto", origin="lower", cmap="viridis")
    shown = range(0, len(board.steps), max(1, len(board.steps) // 8))
    ax.set_xticks(list(shown), [board.steps[i] for i in shown], fontsize=7)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("latent frame")
    fig.colorbar(image, ax=ax, fraction=0.05)
    ax = fig.add_subplot(grid[0, 1])
    ax.plot(board.steps, board.profile.mean(1), "o-", color="C3")
    ax.axvline(board.step, color="0.5", ls=":")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("mean activation")
    if board.off_distribution:
        ax.set_title("open circles: steps its SAE was not trained on", fontsize=7)
        ax.plot(board.off_distribution, board.profile.mean(1)[[board.steps.index(s) for s in board.off_distribution]],
                "o", mfc="white", color="C3")  # fmt: skip
    cells = store.pooling.output_grid(tuple(store.layout.token_grid))
    for i, (video, token, value) in enumerate(board.top if n_top and cells else []):
        t, rest = divmod(token, cells[1] * cells[2])
        h, w = divmod(rest, cells[2])
        if video not in decoded:
            x0 = torch.from_numpy(np.asarray(store.x0_hat(videos=[video], steps=[board.step])[0], np.float32))
            with torch.no_grad():
                out = model.decode(x0.to(model.device, model.dtype))
            decoded[video] = np.asarray(out.cpu() if isinstance(out, torch.Tensor) else out)[0]
        frames = decoded[video]  # (video frames, height, width, 3)
        frame = frames[min(len(frames) - 1, t * len(frames) // cells[0])]
        ax = fig.add_subplot(grid[0, 2 + i])
        ax.imshow(frame, interpolation="nearest")
        top, left, height, width = model.pixel_box((h, w), cells[1:], frame.shape[:2])
        ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), width, height, fill=False, ec="red", lw=2))
        ax.set_title(f"video {video}, frame {t}\n{value:.2f}", fontsize=7)
        ax.axis("off")
    fig.suptitle(f"feature {board.feature} of {board.site} at step {board.step}: best match {board.target} "
                 f"({board.match})", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def splice_importance(runs, sae, site: str, step: int, feature: int, n_random: int = 2, seed: int = 0) -> dict:
    """The losses of the held-out runs with the latent ablated at its step (``interp.api.feature_edit``), and the
    mean of ``n_random`` random directions of its decoder row's norm given the same change: how much the run
    needs it."""
    from interp.api import feature_edit

    batch = runs.noise.shape[0]
    directions = [None, *random_directions(sae, feature, n_random, seed)]
    losses: dict[str, list[float]] = {}
    for direction in directions:
        edit = feature_edit(sae, site, feature, "ablate", 1.0, [step], direction=direction).bind(runs.adapter, batch)
        final = runs.final([edit])
        for name, loss in runs.losses.items():
            losses.setdefault(name, []).append(float(loss(final).mean()))
    out = {}
    for name, values in losses.items():
        out[name], out[f"{name} random"] = values[0], float(np.mean(values[1:])) if n_random else float("nan")
    return out
