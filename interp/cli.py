"""The ``interp`` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)
train_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train a model.")
app.add_typer(train_app, name="train")

TASKS = ("maze",)


class UsageError(ValueError):
    """Bad arguments: reported as one line, exit status 2."""


def _check_common(task: str, size: int, frames: int, steps: int | None) -> None:
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    if size < 2:
        raise UsageError(f"--size must be at least 2 cells per side, got {size}")
    if frames < 2:
        raise UsageError(f"--frames must be at least 2 (the puzzle and the solution), got {frames}")
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")


def _load_testbed(model: Path | None):
    from interp.models.testbed import TestbedAdapter

    if model is not None and not model.is_dir():
        raise UsageError(f"--model {model}: no such folder")
    return TestbedAdapter.load(model)


@app.command()
def generate(
    task: str = typer.Option("maze", help="Reasoning task."),
    size: int = typer.Option(4, help="Maze cells per side."),
    frames: int = typer.Option(4, help="Frames of the video (frame 0 is the puzzle)."),
    seed: int = typer.Option(0, help="Maze seed (held-out test mazes are seeds below 500000)."),
    noise_seed: int | None = typer.Option(None, help="Seed of the initial noise; defaults to --seed."),
    steps: int | None = typer.Option(None, help="Denoising steps; default: the model's."),
    shift: float | None = typer.Option(None, help="Flow shift of the scheduler; default: the model's."),
    model: Path | None = typer.Option(None, help="Testbed weights folder; default: the shipped model."),
    out: Path = typer.Option(Path("runs/generate"), help="Output folder."),
) -> None:
    """Generate one maze video: writes video.gif, the x0_hat filmstrip.png and verdict.json."""
    _check_common(task, size, frames, steps)
    from interp.generation import generate_mazes, write_generated
    from interp.tasks import maze as maze_task
    from interp.tasks.splits import is_training_seed

    adapter = _load_testbed(model)
    if is_training_seed(seed):
        typer.echo(f"note: seed {seed} is in the training range; use a seed below 500000 for a held-out maze")
    maze = maze_task.generate_maze(size, seed)
    noise = [seed if noise_seed is None else noise_seed]
    result = generate_mazes(adapter, [maze], frames, steps, shift, noise)[0]
    paths = write_generated(result, out)
    v = result.verdict
    typer.echo(
        f"maze {size}x{size} seed {seed}: {'SOLVED' if v.solved else 'NOT SOLVED'} "
        f"(final trail exact: {v.final_exact}, frames valid: {v.frames_valid}, "
        f"path lit: {v.path_fraction:.0%}, walked per frame: {list(v.prefix_lengths)})"
    )
    for name, path in paths.items():
        typer.echo(f"  {name}: {path}")


@app.command()
def evaluate(
    size: int = typer.Option(4, help="Maze cells per side."),
    frames: int = typer.Option(4, help="Frames per video."),
    n: int = typer.Option(500, "-n", "--n", help="Held-out test mazes (seeds 0..n-1)."),
    steps: int | None = typer.Option(None, help="Denoising steps; default: the model's."),
    shift: float | None = typer.Option(None, help="Flow shift; default: the model's."),
    model: Path | None = typer.Option(None, help="Testbed weights folder; default: the shipped model."),
) -> None:
    """Exact-match accuracy of the testbed on held-out mazes, with a 95% interval."""
    _check_common("maze", size, frames, steps)
    if n < 1:
        raise UsageError(f"-n must be at least 1, got {n}")
    from interp.evaluation import evaluate_mazes
    from interp.tasks.splits import held_out_seeds

    adapter = _load_testbed(model)
    ev = evaluate_mazes(adapter, held_out_seeds(n), size, frames, steps, shift, progress=True)
    typer.echo(json.dumps(ev.summary(), indent=2))


@app.command()
def trace(
    model: str = typer.Option(
        "testbed", help="'testbed', a folder of testbed weights, or a diffusers pipeline folder."
    ),
    data: Path | None = typer.Option(None, help="Pipeline models: folder of samples (prompt.txt, first_frame.png)."),
    height: int = typer.Option(480, help="Pipeline models: video height."),
    width: int = typer.Option(832, help="Pipeline models: video width."),
    num_frames: int = typer.Option(81, help="Pipeline models: frames."),
    seed: list[int] = typer.Option([0], help="Pipeline models: noise seeds per sample (repeatable)."),
    guidance_scale: float | None = typer.Option(None, help="Pipeline models: guidance scale (default: the family's)."),
    max_sequence_length: int = typer.Option(226, help="Pipeline models: prompt tokens."),
    device: str = typer.Option("cpu", help="Pipeline models: torch device."),
    task: str = typer.Option("maze", help="Reasoning task."),
    n: int = typer.Option(16, "-n", "--n", help="Number of videos (maze seeds first-seed .. first-seed+n-1)."),
    first_seed: int = typer.Option(0, help="First maze seed (held-out mazes: below 500000)."),
    size: int = typer.Option(4, help="Maze cells per side."),
    frames: int = typer.Option(4, help="Frames per video."),
    steps: str = typer.Option("all", help="Denoising steps to store: 'all', '0-9,19', '0-19:2'."),
    layers: str = typer.Option("all", help="Blocks to store: 'all', '0-7:2', '3'."),
    sub: list[str] = typer.Option([], help="Also store block sub-modules: attn1, attn2, ffn (repeatable)."),
    pooling: str = typer.Option("none", help="'none', 'frame', 'spatial:K', 'random:K[:SEED]'."),
    dtype: str = typer.Option("float16", help="Storage dtype: float16 or float32."),
    batch_size: int = typer.Option(16, help="Videos per batch (and per part file)."),
    num_steps: int | None = typer.Option(None, help="Denoising steps of the sampler; default: the model's."),
    backend: str = typer.Option("nnsight", help="Capture backend: nnsight or hooks."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    out: Path = typer.Option(Path("runs/trace.h5"), help="Store path; rerunning resumes it."),
) -> None:
    """Sample videos and store every chosen block's output per (step, layer), resumably."""
    import torch

    from interp.trace_job import TraceConfig, load_adapter, plan_trace, run_trace

    if dtype not in ("float16", "float32"):
        raise UsageError(f"--dtype must be float16 or float32, got {dtype!r}")
    if Path(model, "model_index.json").is_file():
        from interp.pipeline_job import PipelineTraceConfig, run_pipeline_trace

        if data is None:
            raise UsageError("a pipeline model needs --data DIR (sample folders with prompt.txt, first_frame.png)")
        torch.set_num_threads(threads)
        pcfg = PipelineTraceConfig(
            model=model,
            data=str(data),
            height=height,
            width=width,
            num_frames=num_frames,
            seeds=list(seed),
            steps=steps,
            layers=layers,
            subs=list(sub),
            pooling=pooling,
            dtype=dtype,
            num_steps=num_steps or 50,
            guidance_scale=guidance_scale,
            device=device,
            backend=backend,
            max_sequence_length=max_sequence_length,
        )
        run_pipeline_trace(pcfg, out)
        typer.echo(f"stored {model} activations in {out}")
        return
    if data is not None:
        raise UsageError("--data is for pipeline models; the testbed generates its own mazes")
    cfg = TraceConfig(
        model=model,
        task=task,
        size=size,
        frames=frames,
        n=n,
        first_seed=first_seed,
        steps=steps,
        layers=layers,
        subs=list(sub),
        pooling=pooling,
        dtype=dtype,
        batch_size=batch_size,
        num_steps=num_steps,
        backend=backend,
    )
    _check_common(task, size, frames, num_steps)
    torch.set_num_threads(threads)
    adapter = load_adapter(model)
    plan = plan_trace(cfg, adapter)  # every check before any compute
    tic = time.time()
    run_trace(cfg, out, adapter=adapter)
    typer.echo(
        f"stored {len(plan.sites)} sites x {len(plan.steps)} steps x {n} videos "
        f"({plan.layout.n_tokens} tokens each) in {out} [{time.time() - tic:.0f}s]"
    )


@app.command()
def energy(
    store: Path = typer.Argument(..., help="An activation store (.h5)."),
    video: int = typer.Option(0, help="Video index in the store."),
    step: int = typer.Option(0, help="Denoising step (must be stored)."),
    out: Path = typer.Option(Path("runs/energy"), help="Output folder."),
) -> None:
    """Token energy (layers x frames heatmap, per-token maps) and PCA colour maps of one video at one step."""
    from activations.reader import ActivationStore
    from interp.report.energy_plots import write_energy_figures

    with ActivationStore(store) as st:
        if step not in st.steps:
            raise UsageError(f"step {step} is not stored; stored steps: {st.steps}")
        if video not in st.completed_videos:
            raise UsageError(f"video {video} is not a complete video of the store (0-{st.n_videos - 1})")
        paths = write_energy_figures(st, video, step, out)
    for p in paths:
        typer.echo(f"  {p}")


@train_app.command("testbed")
def train_testbed_cmd(
    seed: int = typer.Option(0, help="Training seed (selects the training mazes and the noise)."),
    steps: int = typer.Option(5000, help="Optimiser steps."),
    batch_size: int = typer.Option(64, help="Mazes per step."),
    device: str = typer.Option("cpu", help="torch device: cpu, cuda, cuda:1, ..."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    checkpoint: Path = typer.Option(Path("checkpoints/testbed"), help="Checkpoint folder (resumed if present)."),
    export: Path | None = typer.Option(None, help="Write the final weights here as a diffusers model folder."),
    export_weights_choice: str = typer.Option(
        "best", "--export-weights", help="ema, raw, or best (the more accurate on validation mazes)."
    ),
) -> None:
    """Train the maze testbed with flow matching; rerun the same command to resume."""
    import torch

    from interp.models.testbed import SamplingDefaults
    from interp.training import TrainConfig, export_weights, train_testbed

    if steps < 1 or batch_size < 1:
        raise UsageError("--steps and --batch-size must be positive")
    if export_weights_choice not in ("ema", "raw", "best"):
        raise UsageError(f"--export-weights must be ema, raw or best, got {export_weights_choice!r}")
    torch.set_num_threads(threads)
    cfg = TrainConfig(seed=seed, steps=steps, batch_size=batch_size)
    from tqdm.auto import tqdm

    train_testbed(cfg, checkpoint, device=device, log=tqdm.write, progress=True)
    if export is not None:
        defaults = SamplingDefaults(num_steps=cfg.sample_steps, frames=cfg.frames, size=cfg.size)
        export_weights(checkpoint, export, defaults, which=export_weights_choice)
        typer.echo(f"exported weights to {export}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output folder."),
    n_filmstrips: int = typer.Option(6, help="Held-out mazes drawn as filmstrips."),
    n_accuracy: int = typer.Option(200, help="Held-out mazes for the accuracy figure."),
    n_trace: int = typer.Option(32, help="Held-out mazes traced into an activation store."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """The main job on the testbed: accuracy, x0_hat filmstrips, an activation store, token-energy maps."""
    import torch

    from activations.reader import ActivationStore
    from interp.evaluation import evaluate_mazes
    from interp.generation import generate_mazes, write_generated
    from interp.report.energy_plots import write_energy_figures
    from interp.tasks import maze as maze_task
    from interp.tasks.splits import IN_DISTRIBUTION, held_out_seeds
    from interp.trace_job import TraceConfig, run_trace

    torch.set_num_threads(threads)
    tic = time.time()
    adapter = _load_testbed(None)
    size, frames = IN_DISTRIBUTION["size"], IN_DISTRIBUTION["frames"]
    typer.echo(f"1/3 x0_hat filmstrips of {n_filmstrips} held-out {size}x{size} mazes")
    mazes = [maze_task.generate_maze(size, s) for s in held_out_seeds(n_filmstrips)]
    for result in generate_mazes(adapter, mazes, frames):
        folder = out / f"maze{size}_seed{result.maze.seed}"
        write_generated(result, folder)
        typer.echo(f"  seed {result.maze.seed}: {'solved' if result.verdict.solved else 'NOT solved'} -> {folder}")
    typer.echo(f"2/3 accuracy on {n_accuracy} held-out mazes")
    ev = evaluate_mazes(adapter, held_out_seeds(n_accuracy), size, frames, progress=True)
    summary = ev.summary()
    (out / "accuracy.json").write_text(json.dumps(summary, indent=2))
    typer.echo(f"3/3 activation store of {n_trace} mazes (every block, every step) and token-energy maps")
    store_path = run_trace(TraceConfig(n=n_trace), out / "trace.h5", adapter=adapter)
    with ActivationStore(store_path) as store:
        for step in (store.steps[0], store.steps[len(store.steps) // 2], store.steps[-1]):
            write_energy_figures(store, 0, step, out / f"energy_step{step:02d}")
    lo, hi = summary["ci95"]
    typer.echo(
        f"held-out {size}x{size} mazes: {summary['accuracy']:.1%} exact (95% CI {lo:.1%}-{hi:.1%}, "
        f"n={summary['n']}); store: {store_path}; {time.time() - tic:.0f}s; results in {out}"
    )


def main() -> None:
    try:
        app()
    except (UsageError, FileNotFoundError, ValueError) as err:
        typer.echo(f"interp: error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
