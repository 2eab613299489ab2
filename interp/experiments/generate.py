"""Generate testbed videos with x0_hat of every step: video.gif, the x0_hat filmstrip and verdict.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.generation import Generated, generate_mazes, write_generated
from interp.manifest import Manifest
from interp.sources import load_testbed
from interp.tasks import maze as maze_task


@dataclass
class GenerateConfig(ExperimentConfig):
    experiment = "generate"
    model: str = "testbed"
    task: str = "maze"
    size: int = 4
    frames: int = 4
    seed: int = 0
    noise_seed: int | None = None  # None: the maze seed
    steps: int | None = None  # denoising steps; None: the model's
    shift: float | None = None


def run_generate(cfg: GenerateConfig, adapter=None, progress: bool = True) -> Generated:
    adapter = adapter or load_testbed(cfg.model)
    maze = maze_task.generate_maze(cfg.size, cfg.seed)
    noise = [cfg.seed if cfg.noise_seed is None else cfg.noise_seed]
    return generate_mazes(adapter, [maze], cfg.frames, cfg.steps, cfg.shift, noise)[0]


def save_generated(result: Generated, cfg: GenerateConfig, out) -> Manifest:
    paths = write_generated(result, out)
    v = result.verdict
    state = "solved" if v.solved else "NOT solved"
    manifest = Manifest("generate", f"maze {result.maze.size}x{result.maze.size} seed {result.maze.seed}: {state}",
                        "filmstrips", cfg.to_dict())  # fmt: skip
    manifest.add(paths["filmstrip"], "figure", f"{Path(out).name}: {state}")
    manifest.add(paths["video"], "video", "the sampled video")
    manifest.add(paths["verdict"], "data", "the verifier's verdict")
    manifest.headline.append(
        f"maze {result.maze.size}x{result.maze.size} seed {result.maze.seed}: {'SOLVED' if v.solved else 'NOT SOLVED'} "
        f"(final trail exact: {v.final_exact}, frames valid: {v.frames_valid}, "
        f"path lit: {v.path_fraction:.0%}, walked per frame: {list(v.prefix_lengths)})"
    )
    manifest.notes.append(
        "Rows: denoising steps (the clean-sample estimate x0_hat of each step, decoded); columns: frames. "
        "The last row is the sampled video."
    )
    manifest.write(out)
    return manifest


def choose_filmstrips(in_size: list[Generated], larger: list[Generated], n: int) -> list[Generated]:
    """``n`` videos that show change rather than n alike: failures first, then the latest commits
    (x0_hat settles on its final picture late), and about a third from a larger, out-of-distribution size."""
    from interp.generation import commit_step

    n_larger = min(len(larger), max(1, n // 3)) if n > 1 else 0
    ranked = sorted(in_size, key=lambda g: (g.verdict.solved, -commit_step(g), g.maze.seed))
    ranked_larger = sorted(larger, key=lambda g: (g.verdict.solved, -commit_step(g), g.maze.seed))
    return ranked[: n - n_larger] + ranked_larger[:n_larger]


def demo(ctx) -> None:
    """The study: x0_hat filmstrips of held-out mazes chosen to show change (``choose_filmstrips``)
    from 4n candidates of the largest trained size and n of one size larger."""
    from interp.generation import commit_step
    from interp.tasks.splits import held_out_seeds

    n, size, frames = ctx.options["n_filmstrips"], ctx.size, ctx.frames
    ctx.stage(f"x0_hat filmstrips of {n} held-out mazes: failures, late commits, a larger size ({size + 1}x{size + 1})")
    pool = generate_mazes(ctx.adapter, [maze_task.generate_maze(size, s) for s in held_out_seeds(4 * n)], frames)
    larger = generate_mazes(ctx.adapter, [maze_task.generate_maze(size + 1, s) for s in held_out_seeds(n)], frames)
    for result in choose_filmstrips(pool, larger, n):
        m = result.maze
        folder = ctx.out / f"maze{m.size}_seed{m.seed}"
        cfg = GenerateConfig(model=ctx.model, size=m.size, frames=frames, seed=m.seed)
        save_generated(result, cfg, folder)
        state = "solved" if result.verdict.solved else "NOT solved"
        ctx.echo(f"  {m.size}x{m.size} seed {m.seed}: {state}, x0_hat final from step {commit_step(result)}: {folder}")


def _pipeline_config():
    from interp.experiments.step_videos import PipelineGenerateConfig

    return PipelineGenerateConfig


EXPERIMENT = register(
    Experiment("generate", GenerateConfig, run_generate, save_generated, demo=demo, demo_order=10, cli=False,
                                 alternatives=(_pipeline_config(),))
)
