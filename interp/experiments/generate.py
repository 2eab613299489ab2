"""Generate videos with the decoded x0_hat of chosen steps, for any model over any source: per video (its
store key) a folder with ``step_SS.gif`` per step, ``video.gif``, ``filmstrip.png`` (rows: the steps whose
picture changes, then the final video; columns: frames) and, where a maze model can judge it,
``verdict.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from activations.selection import parse_index_spec
from interp.execution.loop import KeepX0, sample
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest
from interp.report.step_videos import write_step_videos
from interp.sources import SourceConfig
from interp.tasks import maze as maze_task


@dataclass
class GenerateConfig(SourceConfig, ExperimentConfig):
    """A source (``interp.sources.SourceConfig``; by default one testbed maze) and the steps decoded."""

    experiment = "generate"
    n: int = 1
    steps: str = "all"  # the steps whose x0_hat is decoded
    max_frames: int = 8  # columns of the filmstrip (evenly spaced frames); every frame is in the GIFs

    cli_help = {
        **SourceConfig.cli_help,
        "seeds": "Testbed without --data: the maze's seed (held-out below 500000); otherwise noise seeds "
                 "(repeatable).",
        "n": "Testbed without --data: mazes (seeds --seed ..).",
        "steps": "Steps whose x0_hat is decoded (all, 0-49:5); the testbed: also a number, its denoising steps.",
        "max_frames": "Columns of each filmstrip (evenly spaced frames).",
    }

    def __post_init__(self):
        ExperimentConfig.__post_init__(self)  # interp.validation: types and ranges
        SourceConfig.__post_init__(self)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """A testbed config written before one source: ``seed`` (the maze), ``noise_seed``, ``steps`` (a count
        of denoising steps)."""
        if "seed" in data:
            data["first_seed"] = data.pop("seed")
        if "noise_seed" in data:
            noise_seed = data.pop("noise_seed")
            if noise_seed is not None:
                data["seeds"] = [noise_seed]
        if "steps" in data and (data["steps"] is None or type(data["steps"]) is int):
            count = data.pop("steps")
            if count is not None:
                data["num_steps"] = count
        return SourceConfig.upgrade.__func__(cls, data)


def run_generate(cfg: GenerateConfig, out, adapter=None, progress: bool = True) -> list[dict]:
    """Sample every video of the source one at a time, keeping x0_hat of the chosen steps on the host, and
    decode them one at a time into the video's folder (memory: one decoded video plus thumbnails)."""
    adapter = adapter or cfg.load()
    videos = cfg.videos(adapter)
    num_steps, shift = cfg.num_steps_of(adapter), cfg.shift_of(adapter)
    steps = parse_index_spec(cfg.steps, num_steps, "step")
    cfg.latent_shape(adapter, videos)  # validates the video size before any compute
    made = []
    for video in tqdm(videos, disable=not progress, desc="generating"):
        noise, cond = cfg.inputs(adapter, [video])
        keep = KeepX0(steps)
        final = sample(adapter, noise, cond, num_steps, shift, hooks=[keep]).latents
        folder = Path(out) / video.key
        x0s = {s: torch.from_numpy(x[0]).to(adapter.device, final.dtype) for s, x in keep.x0.items()}
        maze = video.sample.truth if adapter.task else None  # a maze model judges its own videos
        verdict = maze_task.verify(adapter.decode(final)[0], maze) if maze is not None else None
        title = _title(video, maze, verdict)
        paths = write_step_videos(adapter.decode, x0s, keep.sigmas, final[0], folder, title, cfg.max_frames,
                                  legend=maze_task.PALETTE if maze is not None else None,
                                  only_changes=maze is not None)  # a maze's picture settles: its changes
        if verdict is not None:
            record = {"maze_size": maze.size, "maze_seed": maze.seed, "frames": cfg.frames_of(adapter),
                      "noise_seed": video.seed, "verdict": asdict(verdict)}  # fmt: skip
            paths["verdict"] = folder / "verdict.json"
            paths["verdict"].write_text(json.dumps(record, indent=2))
        made.append({"key": video.key, "folder": folder, "paths": paths, "maze": maze, "verdict": verdict})
    return made


def _title(video, maze, verdict) -> str:
    if verdict is None:
        return f"{video.sample.name}, seed {video.seed}"
    return f"maze {maze.size}x{maze.size} seed {maze.seed}: {'solved' if verdict.solved else 'not solved'}"


def save_generated(made: list[dict], cfg: GenerateConfig, out) -> Manifest:
    """The manifest of ``run_generate``'s folders: the files of every video and, for a maze model, its verdict."""
    manifest = Manifest("generate", "x0_hat step videos", "filmstrips", cfg.to_dict())
    for item in made:
        name = item["folder"].name
        manifest.add(item["paths"]["filmstrip"], "figure", f"{name}: x0_hat per step (rows), frames (columns)")
        for key, path in item["paths"].items():
            if key not in ("filmstrip", "verdict"):
                manifest.add(path, "video", f"{name}: {key}")
        v, maze = item["verdict"], item["maze"]
        if v is not None:
            manifest.add(item["paths"]["verdict"], "data", f"{name}: the verifier's verdict")
            manifest.headline.append(
                f"maze {maze.size}x{maze.size} seed {maze.seed}: {'SOLVED' if v.solved else 'NOT SOLVED'} "
                f"(final trail exact: {v.final_exact}, frames valid: {v.frames_valid}, "
                f"path lit: {v.path_fraction:.0%}, walked per frame: {list(v.prefix_lengths)})"
            )
    manifest.notes.append(
        "Rows: denoising steps (the clean-sample estimate x0_hat of each step, decoded; for a maze model only "
        "the steps where the picture changes); columns: frames. The last row is the sampled video."
    )
    manifest.headline.append(f"{len(made)} step-video sets in {out}")
    manifest.write(out)
    return manifest


def choose_filmstrips(in_size: list, larger: list, n: int) -> list:
    """``n`` videos that show change rather than n alike: failures first, then the latest commits
    (x0_hat settles on its final picture late), and about a third from a larger, out-of-distribution size."""
    from interp.generation import commit_step

    n_larger = min(len(larger), max(1, n // 3)) if n > 1 else 0
    ranked = sorted(in_size, key=lambda g: (g.verdict.solved, -commit_step(g), g.maze.seed))
    ranked_larger = sorted(larger, key=lambda g: (g.verdict.solved, -commit_step(g), g.maze.seed))
    return ranked[: n - n_larger] + ranked_larger[:n_larger]


def demo(ctx) -> None:
    """The study: x0_hat filmstrips of held-out mazes chosen to show change (``choose_filmstrips``)
    from 4n candidates of the largest trained size and n of one size larger, each then generated."""
    from interp.generation import commit_step, generate_mazes
    from interp.tasks.splits import held_out_seeds

    n, size, frames = ctx.options["n_filmstrips"], ctx.size, ctx.frames
    ctx.stage(f"x0_hat filmstrips of {n} held-out mazes: failures, late commits, a larger size ({size + 1}x{size + 1})")
    pool = generate_mazes(ctx.adapter, [maze_task.generate_maze(size, s) for s in held_out_seeds(4 * n)], frames)
    larger = generate_mazes(ctx.adapter, [maze_task.generate_maze(size + 1, s) for s in held_out_seeds(n)], frames)
    for result in choose_filmstrips(pool, larger, n):
        m = result.maze
        folder = ctx.out / f"maze{m.size}_seed{m.seed}"
        cfg = GenerateConfig(model=ctx.model, size=m.size, first_seed=m.seed, num_frames=frames)
        save_generated(run_generate(cfg, folder, ctx.adapter, progress=False), cfg, folder)
        state = "solved" if result.verdict.solved else "NOT solved"
        ctx.echo(f"  {m.size}x{m.size} seed {m.seed}: {state}, x0_hat final from step {commit_step(result)}: {folder}")


def plan_generate(cfg: GenerateConfig, out: Path):
    """Per video the decoded x0_hat of every chosen step and the final video (GIFs, at most a byte per pixel:
    palette images), from the config and the model's configs (a pipeline: nothing loaded)."""
    from interp.plans import sampling_plan

    adapter = cfg.load(skeleton=True)
    videos, num_steps = cfg.videos(adapter), cfg.num_steps_of(adapter)
    decoded = len(parse_index_spec(cfg.steps, num_steps, "step")) + 1
    frames, (height, width) = cfg.frames_of(adapter), cfg.frame_size(adapter, videos)
    gifs = len(videos) * decoded * frames * height * width
    what = (f"{len(videos)} videos x {decoded} decoded (x0_hat of {decoded - 1} steps and the final video), "
            f"{frames} frames of {height}x{width} each")  # fmt: skip
    return sampling_plan("generate", cfg.model, cfg.torch_dtype, len(videos), num_steps, out, gifs, what)


def old_testbed_spellings(values: dict, old: dict) -> dict:
    """The testbed's generate, without --data, as before one source: ``--seed`` is its one maze's seed,
    ``--noise-seed`` the noise's, ``--steps N`` a count of denoising steps."""
    from interp.models.registry import model_task
    from interp.tasks.splits import is_training_seed
    from interp.validation import UsageError

    noise_seed = old["noise_seed"]
    if model_task(values["model"]) is None or values["data"] is not None:
        if noise_seed is not None:
            raise UsageError("--noise-seed is for the testbed's one maze; with --data give noise seeds with --seed")
        return values
    seeds = list(values["seeds"] or [])
    if len(seeds) > 1:
        raise UsageError("the testbed draws one maze: give one --seed (several mazes: interp data maze, --data)")
    if seeds:
        values["first_seed"] = seeds[0]
    values["seeds"] = [] if noise_seed is None else [noise_seed]
    if values["steps"].isdigit() and values["num_steps"] is None:
        values["num_steps"], values["steps"] = int(values["steps"]), "all"
    if is_training_seed(values["first_seed"]):
        print(f"note: seed {values['first_seed']} is in the training range; use a seed below 500000 for a held-out "
              "maze")  # fmt: skip
    return values


EXPERIMENT = register(
    Experiment("generate", GenerateConfig, run_generate, save_generated, run_writes=True, demo=demo, demo_order=10,
               plan=plan_generate, cli_values=old_testbed_spellings,
               old_options={"noise_seed": (int | None, None, "Testbed without --data: seed of the noise (default the "
                                           "maze's).")})  # fmt: skip
)
