"""Chain-of-Steps analysis of x0_hat trajectories: when does the answer form, and how?

Per video and per denoising step, the clean-sample estimate x0_hat is read as the maze task reads a
video (on the per-cell latent: a channel is on when > 0): the answer is the set of cells lit by the
trail in the last frame. From that:

- ``solved`` / ``path_fraction`` per step: the verifier on the decoded x0_hat;
- ``commit_step``: the first step after which the decoded answer never changes again;
- ``branches`` per step: lit side branches, read against the maze's graph: leaves of the lit part
  of the maze tree other than the start and the goal (the solution alone has none);
- ``perception_step``: the first step from which walls, start and goal decode right for good,
  against ``action_step``, the trail's commit step.

Per-video behaviour labels, with the thresholds in ``ChainConfig``:
multi-path (at some step at least ``min_branches`` lit branches), exploration then pruning (such a
step, and the final sample lights fewer branches than it did: the extra routes were dropped),
superposition (at some step the answer covers at least ``superposition_share`` of the solution while at least
``superposition_extra`` off-path cells are lit too), self-correction (solved at the end, but at some
step a formed answer, at least ``formed_share`` of the path length lit, left part of the solution
dark), perception
before action (``perception_step < action_step``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from interp.tasks import maze as maze_task


@dataclass
class ChainConfig:
    min_branches: int = 2
    superposition_share: float = 0.8
    superposition_extra: int = 2
    formed_share: float = 0.5

    def thresholds(self) -> ChainConfig:
        """The thresholds alone (a config that holds them as fields, e.g. the chain experiment's)."""
        return ChainConfig(**{f.name: getattr(self, f.name) for f in fields(ChainConfig)})


@dataclass
class Chain:
    """One video's trajectory read step by step."""

    seed: int
    solved: list[bool]  # verifier on x0_hat per step
    path_fraction: list[float]  # share of solution cells lit in the last frame
    extra_cells: list[int]  # lit cells off the solution
    branches: list[int]
    answer_changes: list[bool]  # answer differs from the previous step's
    commit_step: int
    correction_step: int | None  # self-correction: the step after the last formed wrong answer
    perception_step: int
    action_step: int
    labels: dict[str, bool]

    def to_dict(self) -> dict:
        return asdict(self)


def _answer(latent: np.ndarray) -> np.ndarray:
    """(N, N) cells lit by trail or agent in the last frame of a (C, T, N, N) latent."""
    return (latent[maze_task.TRAIL, -1] > 0) | (latent[maze_task.AGENT, -1] > 0)


def _stable_from(same: list[bool]) -> int:
    """First index from which every entry is True (len if the last is False)."""
    step = len(same)
    for i in range(len(same) - 1, -1, -1):
        if not same[i]:
            break
        step = i
    return step


def lit_branches(lit: np.ndarray, maze: maze_task.Maze) -> int:
    """Leaves of the lit part of the maze tree other than the start and the goal."""
    n = maze.size
    leaves = 0
    for r in range(n):
        for c in range(n):
            if not lit[r, c] or (r, c) in (maze.start, maze.goal):
                continue
            degree = sum(
                1
                for d, (dr, dc) in enumerate(maze_task.DIRECTIONS)
                if maze.open_sides[r, c, d] and 0 <= r + dr < n and 0 <= c + dc < n and lit[r + dr, c + dc]
            )
            leaves += degree <= 1
    return leaves


def _perceived(latent: np.ndarray, truth: np.ndarray) -> bool:
    """Walls (open sides), start and goal of every frame decode as in the true video."""
    channels = list(range(maze_task.OPEN_N, maze_task.GOAL + 1))
    return bool(np.array_equal(latent[channels] > 0, truth[channels] > 0))


def analyse_trajectory(x0_hat: np.ndarray, maze: maze_task.Maze, cfg: ChainConfig | None = None) -> Chain:
    """``x0_hat``: (steps, C, T, N, N) latents of one video; ``maze``: its puzzle."""
    cfg = cfg or ChainConfig()
    if x0_hat.ndim != 5 or x0_hat.shape[1] != len(maze_task.LATENT_CHANNELS) or x0_hat.shape[-1] != maze.size:
        raise ValueError(f"x0_hat of shape {x0_hat.shape} is not (steps, 8, T, {maze.size}, {maze.size})")
    frames = x0_hat.shape[2]
    truth = maze_task.encode(maze, frames)
    solution = np.zeros((maze.size, maze.size), dtype=bool)
    for cell in maze.path:
        solution[cell] = True
    answers = [_answer(z) for z in x0_hat]
    verdicts = [maze_task.verify(maze_task.render(z), maze) for z in x0_hat]
    extra = [int((a & ~solution).sum()) for a in answers]
    share = [float((a & solution).sum() / solution.sum()) for a in answers]
    branches = [lit_branches(a, maze) for a in answers]
    final = answers[-1]
    changes = [False] + [not np.array_equal(a, b) for a, b in zip(answers[1:], answers[:-1])]
    commit = _stable_from([np.array_equal(a, final) for a in answers])
    perception = _stable_from([_perceived(z, truth) for z in x0_hat])
    formed = [a.sum() >= cfg.formed_share * len(maze.path) for a in answers]
    # Wrong = a formed answer that leaves part of the solution dark (a route committed elsewhere);
    # the solution lit together with extras is superposition, not a wrong answer.
    wrong_formed = [f and sh < 1.0 for f, sh in zip(formed, share)]
    peak = max(branches[:-1], default=0)
    wrong_steps = [s for s, w in enumerate(wrong_formed) if w]
    labels = {
        "multi_path": max(branches) >= cfg.min_branches,
        "explore_then_prune": peak >= cfg.min_branches and branches[-1] < peak,
        "superposition": any(
            s >= cfg.superposition_share and e >= cfg.superposition_extra for s, e in zip(share, extra)
        ),
        "self_correction": bool(verdicts[-1].solved and any(wrong_formed)),
        "perception_before_action": perception < commit,
    }
    return Chain(
        seed=maze.seed,
        solved=[v.solved for v in verdicts],
        path_fraction=share,
        extra_cells=extra,
        branches=branches,
        answer_changes=changes,
        commit_step=commit,
        correction_step=wrong_steps[-1] + 1 if labels["self_correction"] else None,
        perception_step=perception,
        action_step=commit,
        labels=labels,
    )


def analyse_store(store, cfg: ChainConfig | None = None, videos=None) -> list[Chain]:
    """Every complete maze video of an activation store (x0_hat must cover every step)."""
    if len(store.steps) != store.layout.num_steps:
        raise ValueError("chain-of-steps analysis needs x0_hat at every step: trace with --steps all")
    chains = []
    for v in store.completed_videos if videos is None else videos:
        meta = store.meta(v)
        if meta.get("task") != "maze":
            raise ValueError(f"video {v} is not a maze video")
        maze = maze_task.generate_maze(meta["size"], meta["maze_seed"])
        chains.append(analyse_trajectory(store.x0_hat(videos=[v])[0].astype(np.float32), maze, cfg))
    return chains


def summarise(chains: list[Chain]) -> dict:
    """Shares of videos per behaviour, and the distribution of commit and perception steps."""
    n = len(chains)
    if n == 0:
        raise ValueError("no videos to summarise")
    labels = {k: float(np.mean([c.labels[k] for c in chains])) for k in chains[0].labels}
    commit = np.array([c.commit_step for c in chains])
    perception = np.array([c.perception_step for c in chains])
    steps = len(chains[0].solved)
    return {
        "n": n,
        "behaviour_share": labels,
        "commit_step": {"median": float(np.median(commit)), "min": int(commit.min()), "max": int(commit.max())},
        "perception_step": {"median": float(np.median(perception)), "min": int(perception.min())},
        "solved_per_step": [float(np.mean([c.solved[s] for c in chains])) for s in range(steps)],
        "branches_per_step": [float(np.mean([c.branches[s] for c in chains])) for s in range(steps)],
        "final_solved": float(np.mean([c.solved[-1] for c in chains])),
    }


def write_chain_report(chains: list[Chain], cfg: ChainConfig, out) -> dict:
    """chain.json (config, summary, per video) and chain.png (solved and branches per step, commit steps)."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(chains)
    record = {"config": asdict(cfg), "summary": summary, "videos": [c.to_dict() for c in chains]}
    (out / "chain.json").write_text(json.dumps(record, indent=2))
    steps = np.arange(len(summary["solved_per_step"]))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(steps, summary["solved_per_step"], "o-")
    axes[0].set(xlabel="denoising step", ylabel="share solved", title="verifier on decoded x0_hat", ylim=(-0.02, 1.02))
    axes[1].plot(steps, summary["branches_per_step"], "o-", color="C2")
    axes[1].set(xlabel="denoising step", ylabel="mean lit side branches", title="multi-path exploration")
    commits = [c.commit_step for c in chains]
    perceptions = [c.perception_step for c in chains]
    bins = np.arange(len(steps) + 2) - 0.5
    axes[2].hist([perceptions, commits], bins=bins, label=["perception (walls, start, goal)", "answer commits"])
    axes[2].set(xlabel="denoising step", ylabel="videos", title="perception vs action")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "chain.png", dpi=110)
    plt.close(fig)
    return {"json": out / "chain.json", "figure": out / "chain.png", "summary": summary}
