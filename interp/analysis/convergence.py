"""Chain of steps without a verifier: how x0_hat converges to the final sample, for any store.

Per video and stored step: the relative distance of x0_hat to the final latent,
``||x0_hat_s - x_final|| / ||x_final||``, overall and per latent frame; the commit step of each
frame (the first stored step from which that distance stays below ``threshold``). Across videos of
the same sample with different seeds: the spread of x0_hat per step (mean pairwise distance over
the mean norm of the finals) -- many candidate outcomes early and one late is the study's
multi-path signature. With a scorer (a function of decoded frames returning a number, e.g. a
VBVR-Bench rule), the score of every step's decoded x0_hat.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from interp.analysis.scorers import load_scorer

__all__ = ["analyse_convergence", "commit_steps", "load_scorer", "seed_spread", "trajectory_distances"]


def _frames_first(latent: np.ndarray, frame_axis: int | None) -> np.ndarray:
    """(frames, rest); a packed latent (no frame axis) is one frame."""
    if frame_axis is None:
        return latent.reshape(1, -1)
    return np.moveaxis(latent, frame_axis, 0).reshape(latent.shape[frame_axis], -1)


def trajectory_distances(
    x0: np.ndarray, final: np.ndarray, frame_axis: int | None = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(steps,) and (steps, frames) relative distances of x0_hat (steps, *latent) to the final latent."""
    x0, final = x0.astype(np.float64), final.astype(np.float64)
    total = np.linalg.norm((x0 - final).reshape(len(x0), -1), axis=1) / max(np.linalg.norm(final), 1e-12)
    f_final = _frames_first(final, frame_axis)
    f_norm = np.maximum(np.linalg.norm(f_final, axis=1), 1e-12)
    per_frame = np.stack([np.linalg.norm(_frames_first(x, frame_axis) - f_final, axis=1) / f_norm for x in x0])
    return total, per_frame


def commit_steps(per_frame: np.ndarray, steps: list[int], threshold: float) -> list[int | None]:
    """Per frame, the first stored step from which the distance stays below ``threshold`` (None: never)."""
    out = []
    for f in range(per_frame.shape[1]):
        below = per_frame[:, f] < threshold
        i = len(below)
        while i > 0 and below[i - 1]:
            i -= 1
        out.append(steps[i] if i < len(below) else None)
    return out


def seed_spread(x0s: list[np.ndarray], finals: list[np.ndarray]) -> np.ndarray:
    """(steps,) mean pairwise distance of x0_hat across seeds of one sample, over the finals' mean norm."""
    scale = max(float(np.mean([np.linalg.norm(f) for f in finals])), 1e-12)
    pairs = list(combinations(range(len(x0s)), 2))
    return (
        np.mean([np.linalg.norm((x0s[a] - x0s[b]).reshape(len(x0s[a]), -1), axis=1) for a, b in pairs], axis=0) / scale
    )


def sample_folder(store, video: int):
    """The sample folder a pipeline store's video was traced from (its trace config's ``data`` and the
    video's ``sample``), where a built-in scorer such as ``maze`` reads its truth; None otherwise."""
    from pathlib import Path

    extra = store.layout.extra
    data = (extra.get("pipeline_trace_config") or extra.get("trace_config") or {}).get("data")
    name = store.meta(video).get("sample")
    return Path(data) / name if isinstance(data, str) and isinstance(name, str) else None


def sample_groups(store) -> dict[str, list[int]]:
    """Complete videos by the sample they show (pipeline stores: metadata ``sample``; testbed: the maze)."""
    groups: dict[str, list[int]] = {}
    for v in store.completed_videos:
        meta = store.meta(v)
        key = str(meta.get("sample", meta.get("maze_seed", v)))
        groups.setdefault(key, []).append(v)
    return groups


def analyse_convergence(store, threshold: float = 0.1, scorer=None, decode=None, progress: bool = False) -> dict:
    """The verifier-free chain-of-steps record of a store (see the module docstring); ``progress``: a
    bar over the videos while a scorer runs (it decodes and scores every stored step)."""
    from tqdm.auto import tqdm

    if not 0 < threshold:
        raise ValueError(f"threshold must be positive, got {threshold}")
    steps = list(store.steps)
    frame_axis = store.layout.extra.get("latent_frame_axis", 1)  # None: packed latents (LTX)
    videos, totals, frames_d = [], [], []
    bar = tqdm(store.completed_videos, disable=not (progress and scorer is not None), desc="scoring videos")
    for v in bar:
        x0 = np.asarray(store.x0_hat(videos=[v])[0], np.float64)
        final = np.asarray(store.final(videos=[v])[0], np.float64)
        total, per_frame = trajectory_distances(x0, final, frame_axis)
        record = {"video": v, "key": store.layout.video_keys[v], "distance": total.tolist(),
                  "distance_per_frame": per_frame.tolist(), "commit_step_per_frame": commit_steps(per_frame, steps,
                  threshold)}  # fmt: skip
        if scorer is not None:
            name, folder = f"video {v} ({store.layout.video_keys[v]})", sample_folder(store, v)
            record["score"] = [scorer(decode(x[None])[0], f"{name}, step {s}", folder) for s, x in zip(steps, x0)]
            record["score"].append(scorer(decode(final[None])[0], f"{name}, final sample", folder))
        videos.append(record)
        totals.append(total)
        frames_d.append(per_frame)
    if not videos:
        raise ValueError("the store has no complete video")
    spreads = {}
    for key, members in sample_groups(store).items():
        if len(members) > 1:
            x0s = [np.asarray(store.x0_hat(videos=[v])[0], np.float64) for v in members]
            finals = [np.asarray(store.final(videos=[v])[0], np.float64) for v in members]
            spreads[key] = seed_spread(x0s, finals).tolist()
    commits = np.array([[np.nan if c is None else c for c in r["commit_step_per_frame"]] for r in videos], float)
    summary = {
        "n": len(videos), "steps": steps, "threshold": threshold,
        "distance_per_step": np.mean(totals, axis=0).tolist(),
        "distance_per_step_per_frame": np.mean(frames_d, axis=0).tolist(),
        "commit_step_per_frame_median": [None if np.isnan(c).all() else float(np.nanmedian(c)) for c in commits.T],
        "never_committed_share_per_frame": np.isnan(commits).mean(0).tolist(),
        "seed_spread_per_step": np.mean(list(spreads.values()), axis=0).tolist() if spreads else None,
        "samples_with_seeds": len(spreads),
    }  # fmt: skip
    if scorer is not None:
        summary["score_per_step"] = np.mean([r["score"] for r in videos], axis=0).tolist()  # stored steps + final
    return {"summary": summary, "videos": videos, "seed_spread": spreads}
