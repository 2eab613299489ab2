"""The ``interp`` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
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
    ray: bool = typer.Option(False, "--ray", help="Spread the videos over Ray workers (pip install '.[ray]')."),
    ray_address: str | None = typer.Option(None, help="With --ray: a running cluster; default a local instance."),
    workers: int = typer.Option(2, help="With --ray and no address: workers of the local instance."),
    threads_per_worker: int = typer.Option(1, help="With --ray: CPU threads (and Ray CPUs) per worker."),
) -> None:
    """Sample videos and store every chosen block's output per (step, layer), resumably."""
    import torch

    def on_ray(config) -> None:
        from interp.distributed import run_trace_ray

        summary = run_trace_ray(config, out, ray_address, workers, threads_per_worker)
        typer.echo(summary.table())
        typer.echo(f"stored activations in {out}")

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
        if ray:
            return on_ray(pcfg)
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
    if ray:
        return on_ray(cfg)
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


@app.command()
def probe(
    store: Path = typer.Argument(..., help="An activation store (.h5)."),
    target: list[str] = typer.Option([], help="Maze target (on_path, wall, dist_to_goal, solved, ...); repeatable."),
    labels: list[str] = typer.Option([], help="NAME=FILE.npy: your labels on the store's token grid; repeatable."),
    out: Path = typer.Option(Path("runs/probes"), help="Output folder: table (CSV), config and heatmaps."),
    layers: str = typer.Option("all", help="Layers to probe, e.g. all, 0-7, 0-39:4."),
    steps: str = typer.Option("all", help="Denoising steps to probe, e.g. all, 0-9,19."),
    method: str = typer.Option("fast", help="fast (batched torch) or sklearn (one scikit-learn fit at a time)."),
    test_fraction: float = typer.Option(0.25, help="Share of videos held out for testing."),
    folds: int = typer.Option(3, help="Cross-validation folds (by video) for the regularisation."),
    seed: int = typer.Option(0, help="Seed of the video split and the control task."),
    group: int = typer.Option(
        4, help="Fast path: (step, layer) slabs fitted together (memory grows with it; raise it on a GPU)."
    ),
    tol: float = typer.Option(1e-4, help="Logistic fits stop when the largest gradient entry is below this."),
    max_iter: int = typer.Option(1000, help="At most this many iterations per C."),
    patience: int = typer.Option(
        10, help="Fast path: also stop once no predicted class changed for this many iterations (0: never)."
    ),
    device: str = typer.Option("cpu", help="torch device of the fast path: cpu, cuda, ..."),
    name: str = typer.Option("probes", help="Name of the table inside the store (results/probes/NAME)."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """Linear probes per (step, layer) with controls: control task, x_t alone, conditioning alone, majority."""
    import torch

    from probes.plots import plot_all
    from probes.run import ProbeConfig, run_probes, save_results

    label_files = {}
    for item in labels:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise UsageError(f"--labels takes NAME=FILE.npy, got {item!r}")
        label_files[key] = path
    if not store.is_file():
        raise UsageError(f"no activation store at {store}")
    torch.set_num_threads(threads)
    cfg = ProbeConfig(
        targets=list(target),
        labels=label_files,
        layers=layers,
        steps=steps,
        method=method,
        test_fraction=test_fraction,
        folds=folds,
        seed=seed,
        group=group,
        tol=tol,
        max_iter=max_iter,
        patience=patience,
        device=device,
        name=name,
    )
    tic = time.time()
    table = run_probes(store, cfg)
    paths = save_results(table, store, cfg, out)
    figures = plot_all(table, out)
    for t, rows in table.groupby("target", sort=False):
        best = rows.loc[rows["selectivity"].idxmax()]
        typer.echo(
            f"{t}: best selectivity {best['selectivity']:.3f} at step {best['step']}, layer {best['layer']} "
            f"({best['metric']} {best['value']:.3f}, control {best['control']:.3f}, x_t {best['x_t']:.3f})"
        )
    for p in [*paths.values(), *figures.values()]:
        typer.echo(f"  {p}")
    typer.echo(f"table also in {store} at results/probes/{name} [{time.time() - tic:.0f}s]")


@app.command()
def chain(
    store: Path = typer.Argument(..., help="An activation store traced with --steps all (maze task)."),
    out: Path = typer.Option(Path("runs/chain"), help="Output folder: chain.json and chain.png."),
    min_branches: int = typer.Option(2, help="Multi-path: lit side branches at some step."),
    superposition_share: float = typer.Option(0.8, help="Superposition: share of the solution lit..."),
    superposition_extra: int = typer.Option(2, help="...while at least this many off-path cells are lit."),
    formed_share: float = typer.Option(0.5, help="An answer is formed when this share of the path length is lit."),
) -> None:
    """Chain-of-Steps analysis of x0_hat: commit step, exploration, self-correction, perception vs action."""
    from activations.reader import ActivationStore
    from interp.analysis.chain_of_steps import ChainConfig, analyse_store, write_chain_report

    if not store.is_file():
        raise UsageError(f"no activation store at {store}")
    cfg = ChainConfig(min_branches, superposition_share, superposition_extra, formed_share)
    with ActivationStore(store) as st:
        chains = analyse_store(st, cfg)
    report = write_chain_report(chains, cfg, out)
    summary = report["summary"]
    shares = ", ".join(f"{k} {v:.2f}" for k, v in summary["behaviour_share"].items())
    typer.echo(
        f"{summary['n']} videos: answer commits at step {summary['commit_step']['median']:.0f} (median), "
        f"perception at {summary['perception_step']['median']:.0f}; shares: {shares}"
    )
    typer.echo(f"  {report['json']}\n  {report['figure']}")


@app.command()
def ensemble(
    n: int = typer.Option(64, "-n", "--n", help="Held-out mazes per size."),
    size: list[int] = typer.Option([4, 5], help="Maze sizes (4: in distribution); repeatable."),
    seeds: list[int] = typer.Option([1, 2, 3, 5], help="Ensemble sizes N; repeatable."),
    k: list[int] = typer.Option([1, 3], help="Merge after each of the first K steps; repeatable."),
    merge: list[str] = typer.Option(["mean", "rescaled", "x0"], help="Merge rules; repeatable."),
    temperature: list[float] = typer.Option([0.8, 0.6], help="Control: initial-noise scales; repeatable."),
    model: str = typer.Option("testbed", help="testbed, a folder of testbed weights, or a pipeline folder."),
    data: Path | None = typer.Option(None, help="Pipeline models: sample folders (prompt.txt, first_frame.png)."),
    height: int = typer.Option(480, help="Pipeline models: video height."),
    width: int = typer.Option(832, help="Pipeline models: video width."),
    num_frames: int = typer.Option(81, help="Pipeline models: frames."),
    num_steps: int = typer.Option(50, help="Pipeline models: denoising steps."),
    device: str = typer.Option("cpu", help="Pipeline models: torch device."),
    config: Path | None = typer.Option(None, help="Rerun from a saved ensemble.json or a config JSON."),
    out: Path = typer.Option(Path("runs/ensemble"), help="Output folder."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """Seed ensemble against one seed, best-of-N, and noise-shrinking controls, with 95% intervals.
    On a pipeline model (no verifier): every variant's video and final latent, with similarity stats."""
    import torch

    from interp.ensemble import (
        EnsembleConfig,
        PipelineEnsembleConfig,
        run_ensemble,
        run_pipeline_ensemble,
        write_ensemble_report,
        write_pipeline_ensemble_report,
    )

    torch.set_num_threads(threads)
    spec = None
    if config is not None:
        if not config.is_file():
            raise UsageError(f"no config file at {config}")
        spec = json.loads(config.read_text())
        spec = spec.get("config", spec)  # an ensemble.json holds its config
        spec.pop("experiment", None)
        if "pipeline" not in spec:
            cfg = EnsembleConfig(**spec)
            report = write_ensemble_report(run_ensemble(cfg), cfg, out)
            typer.echo(report["text"])
            return
    elif Path(model, "model_index.json").is_file():
        if data is None:
            raise UsageError("a pipeline model needs --data DIR (sample folders with prompt.txt)")
        pipeline = dict(model=model, data=str(data), height=height, width=width, num_frames=num_frames)
        pipeline.update(num_steps=num_steps, device=device, torch_dtype="bfloat16" if device != "cpu" else "float32")
        spec = dict(pipeline=pipeline, seeds=[s for s in seeds if s > 1] or [2], ks=list(k), merges=list(merge))
        spec["temperatures"] = list(temperature)
    if spec is not None:
        pcfg = PipelineEnsembleConfig(**spec)
        report = write_pipeline_ensemble_report(run_pipeline_ensemble(pcfg, out), pcfg, out)
        typer.echo(report["text"])
        typer.echo(f"  {report['json']}\n  {out / 'finals.safetensors'}\n  {out / 'videos'}")
        return
    cfg = EnsembleConfig(
        model=model, sizes=list(size), n=n, seeds=list(seeds), ks=list(k), merges=list(merge),
        temperatures=list(temperature),
    )  # fmt: skip
    report = write_ensemble_report(run_ensemble(cfg), cfg, out)
    typer.echo(report["text"])
    typer.echo(f"  {report['json']}\n  {report['csv']}")


def _experiment(cls, config: Path | None, fields: dict):
    """A config from --config FILE (rerun) or from the command's options."""
    from interp.causal.experiments import load_config

    if config is not None:
        if not config.is_file():
            raise UsageError(f"no config file at {config}")
        cfg = load_config(config)
        if not isinstance(cfg, cls):
            raise UsageError(f"{config} is a {cfg.experiment!r} config, not {cls.experiment!r}")
        return cfg
    return cls(**fields)


def _run_experiment(kind: str, cfg, out: Path, threads: int) -> None:
    import torch

    from interp.causal import experiments as ex
    from interp.causal import plots

    torch.set_num_threads(threads)
    tic = time.time()
    if kind == "patch":
        result = ex.run_patch(cfg)
        what = "patching score (1 = clean behaviour, 0 = corrupted)"
        paths = plots.save_grid(result, out, f"activation patching ({cfg.direction}, region {cfg.region}): {what}")
        best = result.where(result == result.max(), drop=True)
        typer.echo(f"highest score {float(result.max()):.2f} at step {int(best.step[0])}, layer {int(best.layer[0])}")
    elif kind == "swap":
        result = ex.run_swap(cfg)
        paths = plots.save_grid(result, out, f"latent swap: {result.name}")
        typer.echo(f"largest {result.name}: {float(result.max()):.2f}")
    elif kind == "perturb":
        result = ex.run_perturb(cfg)
        paths = plots.save_perturb(result, out)
        if "similarity" in result["baseline"]:
            for key in ("at_step", "at_frame"):
                sims = ", ".join(f"{k}: {v['similarity']:.3f}" for k, v in result[key].items())
                typer.echo(f"similarity to the unperturbed output, noise {key.replace('_', ' ')}: {sims}")
            for p in paths.values():
                typer.echo(f"  {p}")
            return
        worst_step = min(result["at_step"].items(), key=lambda kv: kv[1]["accuracy"])
        worst_frame = min(result["at_frame"].items(), key=lambda kv: kv[1]["accuracy"])
        typer.echo(
            f"no noise: {result['baseline']['accuracy']:.2f} solved; noise at step {worst_step[0]}: "
            f"{worst_step[1]['accuracy']:.2f}; noise at frame {worst_frame[0]}: {worst_frame[1]['accuracy']:.2f} "
            f"(answer right {worst_frame[1]['final_exact']:.2f})"
        )
    else:
        result = ex.run_flow(cfg)
        paths = plots.save_flow(result, out)
        sens = json.loads(result.attrs["sensitivity"])
        steps = [int(s) for s in result.inject_step.values]
        typer.echo(f"most sensitive injection step: {steps[int(np.argmax(sens))]} (mean 1 - CKA {max(sens):.3f})")
    for p in paths.values():
        typer.echo(f"  {p}")
    typer.echo(f"[{time.time() - tic:.0f}s]")


@app.command()
def patch(
    n: int = typer.Option(4, "-n", "--n", help="Maze pairs (clean seeds first-seed.., corrupted: rewired)."),
    first_seed: int = typer.Option(0, help="First clean maze seed."),
    steps: str = typer.Option("all", help="Steps to patch, e.g. all, 0-19:2."),
    layers: str = typer.Option("all", help="Layers to patch."),
    sub: str | None = typer.Option(None, help="Patch a sub-module (attn1, attn2, ffn), not the block."),
    region: str = typer.Option("all", help="Tokens: all, frame:F, diff (cells where solutions differ), .npy mask."),
    direction: str = typer.Option("denoising", help="denoising (clean into corrupted) or noising."),
    metric: str = typer.Option("maze", help="maze (verifier-based) or latent (projection of the final latent)."),
    span: str = typer.Option("step", help="step (patch one step, then continue) or onward (every later step too)."),
    size: int = typer.Option(4, help="Maze cells per side."),
    frames: int = typer.Option(4, help="Frames per video."),
    model: str = typer.Option("testbed", help="testbed or a folder of testbed weights."),
    config: Path | None = typer.Option(None, help="Rerun from a saved config.json (other options ignored)."),
    out: Path = typer.Option(Path("runs/patch"), help="Output folder."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """Activation patching over steps x layers (x token region), scored 1 = clean, 0 = corrupted."""
    from interp.causal.experiments import PatchConfig

    fields = dict(n=n, first_seed=first_seed, steps=steps, layers=layers, sub=sub, region=region)
    fields.update(direction=direction, metric=metric, span=span, size=size, frames=frames, model=model)
    _run_experiment("patch", _experiment(PatchConfig, config, fields), out, threads)


@app.command()
def swap(
    n: int = typer.Option(8, "-n", "--n", help="Mazes."),
    first_seed: int = typer.Option(0, help="First maze seed."),
    steps: str = typer.Option("0", help="Steps at which to swap (the study: the first step)."),
    layers: str = typer.Option("all", help="Layers to swap."),
    other: str = typer.Option("rewired", help="The other input: rewired (one wall moved) or a seed offset."),
    size: int = typer.Option(4, help="Maze cells per side."),
    frames: int = typer.Option(4, help="Frames per video."),
    model: str = typer.Option("testbed", help="testbed or a folder of testbed weights."),
    config: Path | None = typer.Option(None, help="Rerun from a saved config.json."),
    out: Path = typer.Option(Path("runs/swap"), help="Output folder."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """Layer-wise latent swap: at step s, layer k's tokens from a run on another maze."""
    from interp.causal.experiments import SwapConfig

    fields = dict(n=n, first_seed=first_seed, steps=steps, layers=layers, other=other)
    fields.update(size=size, frames=frames, model=model)
    _run_experiment("swap", _experiment(SwapConfig, config, fields), out, threads)


@app.command()
def perturb(
    n: int = typer.Option(64, "-n", "--n", help="Held-out mazes."),
    first_seed: int = typer.Option(0, help="First maze seed."),
    steps: str = typer.Option("all", help="Steps at which x_s is replaced by fresh noise."),
    frames_to_noise: str = typer.Option("all", "--frames-to-noise", help="Frames replaced by noise at every step."),
    noise_seed: int = typer.Option(12345, help="Seed of the injected noise."),
    size: int = typer.Option(4, help="Maze cells per side."),
    frames: int = typer.Option(4, help="Frames per video."),
    model: str = typer.Option("testbed", help="testbed or a folder of testbed weights."),
    config: Path | None = typer.Option(None, help="Rerun from a saved config.json."),
    out: Path = typer.Option(Path("runs/perturb"), help="Output folder."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """Noise at step vs noise at frame (chain of steps against chain of frames), with 95% intervals."""
    from interp.causal.experiments import PerturbConfig

    fields = dict(n=n, first_seed=first_seed, steps=steps, frames_to_noise=frames_to_noise, noise_seed=noise_seed)
    fields.update(size=size, frames=frames, model=model)
    _run_experiment("perturb", _experiment(PerturbConfig, config, fields), out, threads)


@app.command()
def flow(
    n: int = typer.Option(8, "-n", "--n", help="Mazes."),
    first_seed: int = typer.Option(0, help="First maze seed."),
    inject_steps: str = typer.Option("all", help="Steps at which noise is injected."),
    layers: str = typer.Option("all", help="Layers compared."),
    strength: float = typer.Option(1.0, help="x_s <- sqrt(1-a^2) x_s + a noise; 1 replaces x_s."),
    noise_seed: int = typer.Option(12345, help="Seed of the injected noise."),
    size: int = typer.Option(4, help="Maze cells per side."),
    frames: int = typer.Option(4, help="Frames per video."),
    model: str = typer.Option("testbed", help="testbed or a folder of testbed weights."),
    config: Path | None = typer.Option(None, help="Rerun from a saved config.json."),
    out: Path = typer.Option(Path("runs/flow"), help="Output folder."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """Information flow: noise injected at step s, linear CKA to the clean run at later steps and layers."""
    from interp.causal.experiments import FlowConfig

    fields = dict(n=n, first_seed=first_seed, inject_steps=inject_steps, layers=layers, strength=strength)
    fields.update(noise_seed=noise_seed, size=size, frames=frames, model=model)
    _run_experiment("flow", _experiment(FlowConfig, config, fields), out, threads)


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
def report(
    run_dir: Path = typer.Argument(..., help="A run folder: what the demo or the other commands wrote."),
    out: Path | None = typer.Option(None, help="The page (default RUN_DIR/report.html; must lie in RUN_DIR)."),
    title: str | None = typer.Option(None, help="Page title."),
) -> None:
    """One self-contained HTML page of a run folder's results: figures embedded, files linked."""
    from interp.report.html import write_report

    typer.echo(str(write_report(run_dir, out, title)))


def _demo_causal(adapter, out: Path, n_causal: int, n_noise: int, headline: list[str]) -> None:
    """Patching (onward), the swap at the first step, noise at step vs frame, information flow."""
    from interp.causal import experiments as ex
    from interp.causal import plots

    patch_cfg = ex.PatchConfig(n=n_causal, steps="0-18:2", span="onward")
    grid = ex.run_patch(patch_cfg, adapter, progress=False)
    plots.save_grid(grid, out / "patch_onward", "activation patching onward (clean into corrupted): 1 = clean answer")
    steps = [int(s) for s in grid.step.values]
    clean_from = [s for s in steps if float(grid.sel(step=s).mean()) > 0.5]
    if not clean_from:
        where = "at no step"
    elif clean_from == steps[: len(clean_from)]:
        where = f"for s <= {clean_from[-1]}"
    else:  # not a prefix of the steps: say exactly which
        where = f"for s in {clean_from}"
    headline.append(
        f"patching every block output from step s onward gives the clean answer {where} "
        f"(mean score over layers > 0.5; {n_causal} maze pairs)"
    )
    swap = ex.run_swap(ex.SwapConfig(n=n_causal * 2, steps="0-15:5"), adapter, progress=False)
    plots.save_grid(swap, out / "swap", f"latent swap (one step, one layer): {swap.name}")
    headline.append(
        f"swapping one layer's tokens at one step (0, 5, 10, 15): largest {swap.name} {float(swap.max()):.2f}"
    )
    perturb = ex.run_perturb(ex.PerturbConfig(n=n_noise, steps="0-18:2"), adapter, progress=False)
    plots.save_perturb(perturb, out / "noise")
    at_step = {int(k): v["accuracy"] for k, v in perturb["at_step"].items()}
    broken = [s for s, acc in sorted(at_step.items()) if acc < 0.5 * perturb["baseline"]["accuracy"]]
    answer_kept = [
        v["final_exact"] for k, v in perturb["at_frame"].items() if int(k) < max(map(int, perturb["at_frame"]))
    ]
    headline.append(
        f"noise at step: solved {perturb['baseline']['accuracy']:.0%} without noise, "
        + (f"first below half of that at step {broken[0]}" if broken else "never below half")
        + (f"; noise at an earlier frame keeps the answer right in {np.mean(answer_kept):.0%}" if answer_kept else "")
    )
    flow = ex.run_flow(ex.FlowConfig(n=n_causal * 2, strength=0.5), adapter, progress=False)
    plots.save_flow(flow, out / "flow")
    sens = json.loads(flow.attrs["sensitivity"])
    steps = [int(s) for s in flow.inject_step.values]
    headline.append(
        f"information flow: later block outputs most sensitive to noise injected at step {steps[int(np.argmax(sens))]} "
        f"(1 - CKA {max(sens):.2f}; at step {steps[0]}: {sens[0]:.2f})"
    )


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output folder."),
    n_filmstrips: int = typer.Option(6, help="Held-out mazes drawn as filmstrips."),
    n_accuracy: int = typer.Option(200, help="Held-out mazes for the accuracy figure."),
    n_trace: int = typer.Option(32, help="Held-out mazes traced into an activation store."),
    probe_target: list[str] = typer.Option(["on_path", "wall", "dist_to_goal"], help="Probe targets; repeatable."),
    probe_steps: str = typer.Option("0-19:2", help="Steps probed (every other step keeps the demo short)."),
    n_causal: int = typer.Option(2, help="Maze pairs patched (swap and flow use twice as many mazes)."),
    n_noise: int = typer.Option(32, help="Mazes for noise at step vs noise at frame."),
    n_ensemble: int = typer.Option(32, help="Held-out 5x5 mazes for the seed ensemble (0 skips it)."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """The whole study on the testbed: accuracy, filmstrips, store, energy, probes, Chain-of-Steps,
    patching, swapping, noise tests, information flow, the seed ensemble, and one HTML report."""
    import torch

    from activations.reader import ActivationStore
    from interp.evaluation import evaluate_mazes
    from interp.generation import generate_mazes, write_generated
    from interp.report.energy_plots import write_energy_figures
    from interp.tasks import maze as maze_task
    from interp.tasks.splits import IN_DISTRIBUTION, held_out_seeds
    from interp.trace_job import TraceConfig, run_trace

    if min(n_filmstrips, n_accuracy, n_trace, n_causal, n_noise) < 1 or n_ensemble < 0:
        raise UsageError("the demo's counts must be positive (--n-ensemble may be 0)")
    options = dict(n_filmstrips=n_filmstrips, n_accuracy=n_accuracy, n_trace=n_trace, probe_target=list(probe_target))
    options["probe_steps"] = probe_steps
    options.update(n_causal=n_causal, n_noise=n_noise, n_ensemble=n_ensemble, threads=threads)
    torch.set_num_threads(threads)
    tic = time.time()
    headline: list[str] = []
    timings: dict[str, float] = {}

    def stage(i: int, text: str) -> None:
        typer.echo(f"{i}/9 {text} [{time.time() - tic:.0f}s]")

    adapter = _load_testbed(None)
    size, frames = IN_DISTRIBUTION["size"], IN_DISTRIBUTION["frames"]
    stage(1, f"x0_hat filmstrips of {n_filmstrips} held-out {size}x{size} mazes")
    mazes = [maze_task.generate_maze(size, s) for s in held_out_seeds(n_filmstrips)]
    for result in generate_mazes(adapter, mazes, frames):
        folder = out / f"maze{size}_seed{result.maze.seed}"
        write_generated(result, folder)
        typer.echo(f"  seed {result.maze.seed}: {'solved' if result.verdict.solved else 'NOT solved'} -> {folder}")
    stage(2, f"accuracy on {n_accuracy} held-out mazes")
    ev = evaluate_mazes(adapter, held_out_seeds(n_accuracy), size, frames, progress=False)
    summary = ev.summary()
    (out / "accuracy.json").write_text(json.dumps(summary, indent=2))
    lo, hi = summary["ci95"]
    headline.append(
        f"held-out {size}x{size} mazes: {summary['accuracy']:.1%} exact (95% CI {lo:.1%}-{hi:.1%}, n={summary['n']})"
    )
    stage(3, f"activation store of {n_trace} mazes (every block, every step) and token-energy maps")
    store_path = run_trace(TraceConfig(n=n_trace), out / "trace.h5", adapter=adapter, progress=False)
    with ActivationStore(store_path) as store:
        for step in (store.steps[0], store.steps[len(store.steps) // 2], store.steps[-1]):
            write_energy_figures(store, 0, step, out / f"energy_step{step:02d}")
    timings["store"] = time.time() - tic
    stage(4, f"linear probes per (step, layer) with controls ({', '.join(probe_target)})")
    from probes.plots import plot_all
    from probes.run import ProbeConfig, run_probes, save_results

    probe_cfg = ProbeConfig(targets=list(probe_target), steps=probe_steps)
    table = run_probes(store_path, probe_cfg)
    save_results(table, store_path, probe_cfg, out / "probes")
    plot_all(table, out / "probes")
    for target, rows in table.groupby("target", sort=False):
        best = rows.loc[rows["selectivity"].idxmax()]
        headline.append(
            f"probe {target}: best selectivity {best['selectivity']:.2f} at step {best['step']}, layer "
            f"{best['layer']} ({best['metric']} {best['value']:.2f}; control task {best['control']:.2f}, "
            f"x_t alone {best['x_t']:.2f}, conditioning alone {best['condition']:.2f})"
        )
    stage(5, "Chain-of-Steps statistics of x0_hat")
    from interp.analysis.chain_of_steps import ChainConfig, analyse_store, write_chain_report

    with ActivationStore(store_path) as store:
        chain_cfg = ChainConfig()
        chain = write_chain_report(analyse_store(store, chain_cfg), chain_cfg, out / "chain")["summary"]
    per_step = chain["solved_per_step"]
    headline.append(
        f"chain of steps: x0_hat solves {per_step[0]:.0%} at step 0, {per_step[len(per_step) // 2]:.0%} at "
        f"mid-trajectory; median commit step {chain['commit_step']['median']:.0f}"
    )
    stage(6, f"activation patching and latent swapping ({n_causal} pairs), noise at step vs frame, flow")
    _demo_causal(adapter, out / "causal", n_causal, n_noise, headline)
    if n_ensemble:
        stage(7, f"seed ensemble on {n_ensemble} held-out 5x5 mazes (N = 1, 3; K = 1) with its controls")
        from interp.ensemble import EnsembleConfig, run_ensemble, write_ensemble_report

        ens_cfg = EnsembleConfig(sizes=[5], n=n_ensemble, seeds=[1, 3], ks=[1], temperatures=[0.577])
        rows = run_ensemble(ens_cfg, adapter, progress=False)
        write_ensemble_report(rows, ens_cfg, out / "ensemble")
        acc = {(r["method"], r.get("n_seeds")): r["accuracy"] for r in rows}
        headline.append(
            f"seed ensemble, 5x5: one seed {acc[('single seed', 1)]:.0%}, mean of 3 {acc[('ensemble (mean)', 3)]:.0%}, "
            f"rescaled {acc[('ensemble (rescaled)', 3)]:.0%}, best of 3 {acc[('best of N (oracle)', 3)]:.0%}; "
            f"control one seed x 1/sqrt(3) {acc[('control: noise x 1/sqrt(N)', 3)]:.0%}"
        )
    stage(8, "the report")
    from interp.report.html import write_report

    (out / "study.json").write_text(json.dumps({"options": options, "headline": headline}, indent=2))
    page = write_report(out, title="Video DiT interpretability: the testbed study")
    stage(9, "done")
    for line in headline:
        typer.echo(f"  {line}")
    typer.echo(f"report: {page.resolve()}  ({time.time() - tic:.0f}s)")


def main() -> None:
    try:
        app()
    except (UsageError, FileNotFoundError, ValueError) as err:
        typer.echo(f"interp: error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
