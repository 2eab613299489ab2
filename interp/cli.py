"""The ``interp`` command line: options -> a config -> the experiment registry.

Experiments registered with ``cli=True`` (patch, swap, perturb, flow, ensemble, any a user registers) and
``verify`` get their commands from ``interp.cli_options``; the tools below take a store or a folder, so are written out.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from interp.cli_data import data_app
from interp.cli_options import (
    add_experiment_commands,
    echo_manifest,
    run_app,
    set_threads,
    split_names,
)
from interp.cli_train import train_app
from interp.plans import show
from interp.validation import UsageError, parse_labels

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(data_app, name="data")
MODEL_HELP = "A shipped testbed (testbed, testbed-mixed) or a folder of testbed weights."


@app.command()
def generate(
    model: str = typer.Option("testbed", help=MODEL_HELP + " Or a pipeline folder (with --data)."),
    data: Path | None = typer.Option(None, help="Folder of samples (prompt.txt, first_frame.png; interp data maze)."),
    samples: list[str] = typer.Option([], help="Sample folder names of --data (repeatable or A,B)."),
    task: str = typer.Option("maze", help="Reasoning task."),
    size: int = typer.Option(4, help="Testbed without --data: maze cells per side."),
    seed: list[int] = typer.Option([], help="Testbed without --data: the maze's seed (held-out below 500000); "
                                   "otherwise noise seeds (repeatable)."),
    noise_seed: int | None = typer.Option(None, help="Testbed without --data: seed of the noise (default the maze's)."),
    steps: str | None = typer.Option(None, help="Steps whose x0_hat is decoded (all, 0-49:5); the testbed: also "
                                     "a number, its denoising steps (the old spelling)."),
    num_steps: int | None = typer.Option(None, help="Denoising steps; default: the model's (50 for pipelines)."),
    shift: float | None = typer.Option(None, help="Flow shift of the scheduler; default: the model's."),
    frames: int | None = typer.Option(None, help="The same as --num-frames."),
    num_frames: int | None = typer.Option(None, help="Frames per video; default: the model's (pipelines 81)."),
    height: int | None = typer.Option(None, help="Pipeline models: video height (default 480)."),
    width: int | None = typer.Option(None, help="Pipeline models: video width (default 832)."),
    device: str = typer.Option("cpu", help="Torch device."),
    torch_dtype: str | None = typer.Option(None, help="float32 (default on CPU), bfloat16 (default elsewhere)."),
    guidance_scale: float | None = typer.Option(None, help="Pipeline models: guidance scale (default: the family's)."),
    true_cfg_scale: float | None = typer.Option(None, help="Pipeline models: HunyuanVideo's true CFG scale."),
    negative_prompt: str = typer.Option("", help="Pipeline models: negative prompt of classifier-free guidance."),
    max_sequence_length: int | None = typer.Option(None, help="Pipeline prompt tokens (default: the pipeline's)."),
    out: Path = typer.Option(Path("runs/generate"), help="Output folder: a folder per video."),
) -> None:
    """Generate videos with x0_hat of every step: the video, one video per step and the filmstrip."""
    from interp.experiments.generate import GenerateConfig, run_generate, save_generated
    from interp.models.registry import is_pipeline_folder
    from interp.plans import generate_plan
    from interp.tasks.splits import is_training_seed

    first_seed, seeds = 0, list(seed) or None
    if not is_pipeline_folder(model) and data is None:  # the testbed draws one maze: --seed is the maze's
        if len(seed) > 1:
            raise UsageError("the testbed draws one maze: give one --seed (several mazes: interp data maze, --data)")
        first_seed, seeds = (seed[0] if seed else 0), (None if noise_seed is None else [noise_seed])
        if steps is not None and steps.isdigit() and num_steps is None:  # the old spelling: a count of steps
            num_steps, steps = int(steps), None
        if is_training_seed(first_seed):
            typer.echo(f"note: seed {first_seed} is in the training range; use a seed below 500000 for a held-out maze")
    elif noise_seed is not None:
        raise UsageError("--noise-seed is for the testbed's one maze; with --data give noise seeds with --seed")
    if frames is not None and num_frames is not None and frames != num_frames:
        raise UsageError(f"--frames {frames} and --num-frames {num_frames}: give one")
    cfg = GenerateConfig(
        model=model, data=None if data is None else str(data.resolve()), samples=split_names(samples), seeds=seeds,
        task=task, size=size, first_seed=first_seed, num_frames=num_frames if num_frames is not None else frames,
        height=height, width=width, num_steps=num_steps, shift=shift, guidance_scale=guidance_scale,
        negative_prompt=negative_prompt, max_sequence_length=max_sequence_length, true_cfg_scale=true_cfg_scale,
        device=device, torch_dtype=torch_dtype, steps=steps or "all",
    )  # fmt: skip
    show(generate_plan(cfg, out), typer.echo)
    echo_manifest(save_generated(run_generate(cfg, out), cfg, out), out)


@app.command()
def filmstrip(
    store: Path = typer.Argument(..., help="An activation store (its x0_hat of every stored step)."),
    model: str = typer.Option("testbed", help="What decodes the latents: a testbed name or the pipeline folder."),
    videos: str = typer.Option("0", help="Videos of the store, e.g. 0, 0-3."),
    steps: str = typer.Option("all", help="Stored steps to decode."),
    device: str = typer.Option("cpu", help="torch device of the decoder."),
    torch_dtype: str | None = typer.Option(None, help="Pipeline models: float32 (default), bfloat16."),
    out: Path = typer.Option(Path("runs/filmstrip"), help="Output folder."),
) -> None:
    """x0_hat step videos and filmstrips from a store, decoded with the model that made it."""
    from interp.experiments.step_videos import FilmstripConfig, run_filmstrip, save_step_videos

    cfg = FilmstripConfig(str(store), model, videos, steps, device=device, torch_dtype=torch_dtype)
    echo_manifest(save_step_videos(run_filmstrip(cfg, out), cfg, out), out)


@app.command()
def trace(
    model: str = typer.Option("testbed", help="A shipped testbed, a folder of testbed weights, or a pipeline folder."),
    data: Path | None = typer.Option(None, help="Folder of samples (prompt.txt, first_frame.png; interp data maze)."),
    height: int | None = typer.Option(None, help="Pipeline models: video height (default 480)."),
    width: int | None = typer.Option(None, help="Pipeline models: video width (default 832)."),
    num_frames: int | None = typer.Option(None, help="Frames per video; default: the model's (pipelines 81)."),
    seed: list[int] = typer.Option([], help="Noise seeds per sample (repeatable); default: a maze's own, else 0."),
    samples: list[str] = typer.Option([], help="Sample folder names of --data (repeatable or A,B)."),
    guidance_scale: float | None = typer.Option(None, help="Pipeline models: guidance scale (default: the family's)."),
    max_sequence_length: int | None = typer.Option(None, help="Pipeline prompt tokens (default: the pipeline's)."),
    true_cfg_scale: float | None = typer.Option(None, help="Pipeline models: HunyuanVideo's true CFG scale."),
    negative_prompt: str = typer.Option("", help="Pipeline models: negative prompt of classifier-free guidance."),
    device: str = typer.Option("cpu", help="Torch device."),
    torch_dtype: str | None = typer.Option(None, help="float32 (default on CPU), bfloat16 (default elsewhere)."),
    task: str = typer.Option("maze", help="Reasoning task."),
    n: int = typer.Option(16, "-n", "--n", help="Testbed without --data: mazes (seeds first-seed .. first-seed+n-1)."),
    first_seed: int = typer.Option(0, help="Testbed without --data: first maze seed (held-out: below 500000)."),
    size: int = typer.Option(4, help="Testbed without --data: maze cells per side."),
    frames: int | None = typer.Option(None, help="The same as --num-frames."),
    steps: str = typer.Option("all", help="Denoising steps to store: 'all', '0-9,19', '0-19:2'."),
    layers: str = typer.Option("all", help="Blocks to store: 'all', '0-7:2', '3'."),
    sub: list[str] = typer.Option([], help="Also store block sub-modules: attn1, attn2, ffn (repeatable)."),
    attention: bool = typer.Option(False, "--attention", help="Also store frame-attention statistics per head."),
    cross_attention: bool = typer.Option(False, "--cross-attention", help="Also store cross-attention statistics."),
    pooling: str = typer.Option("none", help="'none', 'frame', 'spatial:K', 'random:K[:SEED]'."),
    dtype: str = typer.Option("float16", help="Storage dtype: float16 or float32."),
    batch_size: int | None = typer.Option(None, help="Videos per batch and part; default: testbed 16, pipelines 1."),
    num_steps: int | None = typer.Option(None, help="Denoising steps; default: the model's (pipelines 50)."),
    backend: str = typer.Option("nnsight", help="Capture backend: nnsight or hooks."),
    queue_mb: int = typer.Option(2048, min=1, help="MiB of host copies waiting for the disk; then sampling waits."),
    sha256: bool = typer.Option(False, "--sha256", help="Also record each part's SHA-256 (verify --checksums)."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    out: Path = typer.Option(Path("runs/trace.h5"), help="Store path; rerunning resumes it."),
    ray: bool = typer.Option(False, "--ray", help="Spread the videos over Ray workers (pip install '.[ray]')."),
    ray_address: str | None = typer.Option(None, help="With --ray: a running cluster; default a local instance."),
    workers: int = typer.Option(2, help="With --ray and no address: workers of the local instance."),
    threads_per_worker: int = typer.Option(1, help="With --ray: CPU threads (and Ray CPUs) per worker."),
) -> None:
    """Sample videos and store every chosen block's output per (step, layer), resumably."""
    from interp.experiments.trace import TraceConfig, make_job, run_trace
    from interp.plans import trace_plan

    set_threads(threads)
    if frames is not None and num_frames is not None and frames != num_frames:
        raise UsageError(f"--frames {frames} and --num-frames {num_frames}: give one")
    cfg = TraceConfig(
        model=model, data=None if data is None else str(data.resolve()), samples=split_names(samples),
        seeds=list(seed) or None, task=task, size=size, n=n, first_seed=first_seed,
        num_frames=num_frames if num_frames is not None else frames, height=height, width=width, num_steps=num_steps,
        guidance_scale=guidance_scale, negative_prompt=negative_prompt, max_sequence_length=max_sequence_length,
        true_cfg_scale=true_cfg_scale, device=device, torch_dtype=torch_dtype, steps=steps, layers=layers,
        subs=list(sub), pooling=pooling, dtype=dtype, batch_size=batch_size, backend=backend, attention=attention,
        cross_attention=cross_attention,
    )  # fmt: skip
    job = make_job(cfg, skeleton=True)  # every check first; a pipeline's from its configs
    writer_options = {"queue_bytes": queue_mb << 20, "sha256": sha256}
    show(trace_plan(job, out, writer_options["queue_bytes"], workers if ray else 1, ray and ray_address), typer.echo)
    tic = time.time()
    if ray:
        from interp.experiments.distributed import run_trace_ray

        typer.echo(run_trace_ray(cfg, out, ray_address, workers, threads_per_worker, **writer_options).table())
    else:
        run_trace(cfg, out, job=job.loaded(), **writer_options)
    typer.echo(f"stored activations of {model} in {out} [{time.time() - tic:.0f}s]")


@app.command()
def energy(
    store: Path = typer.Argument(..., help="An activation store (.h5)."),
    video: int = typer.Option(0, help="Video index in the store."),
    step: int = typer.Option(0, help="Denoising step (must be stored)."),
    out: Path = typer.Option(Path("runs/energy"), help="Output folder."),
    scale_step: list[int] = typer.Option([], help="Stored steps whose maps share each layer's colour scale; repeat."),
) -> None:
    """Token energy (layers x frames heatmap, per-token maps) and PCA colour maps of one video at one step."""
    from interp.experiments.energy import EnergyConfig, run_energy, save_energy

    cfg = EnergyConfig(str(store), video, step, list(scale_step) or None)
    echo_manifest(save_energy(run_energy(cfg, out), cfg, out), out)


@app.command()
def probe(
    store: Path = typer.Argument(..., help="An activation store (.h5)."),
    target: list[str] = typer.Option([], help="Maze target (on_path, wall, dist_to_goal, solved, ...); repeatable."),
    labels: list[str] = typer.Option([], help="NAME=FILE.npy: your labels on the store's token grid; repeatable."),
    out: Path = typer.Option(Path("runs/probes"), help="Output folder: table (CSV), config, heatmaps, manifest."),
    layers: str = typer.Option("all", help="Layers to probe, e.g. all, 0-7, 0-39:4."),
    steps: str = typer.Option("all", help="Denoising steps to probe, e.g. all, 0-9,19."),
    method: str = typer.Option("fast", help="fast (batched torch) or sklearn (one scikit-learn fit at a time)."),
    test_fraction: float = typer.Option(0.25, help="Share of videos held out for testing."),
    folds: int = typer.Option(3, help="Cross-validation folds (by video) for the regularisation."),
    seed: int = typer.Option(0, help="Seed of the video split and the control task."),
    group: int = typer.Option(4, help="Fast path: (step, layer) slabs fitted together (raise it on a GPU)."),
    tol: float = typer.Option(1e-4, help="Logistic fits stop when the largest gradient entry is below this."),
    max_iter: int = typer.Option(1000, help="At most this many iterations per C."),
    patience: int = typer.Option(10, help="Fast path: also stop once no predicted class changed this long (0: never)."),
    device: str = typer.Option("cpu", help="torch device of the fast path: cpu, cuda, ..."),
    name: str = typer.Option("probes", help="Name of the run: NAME.csv, results/probes/NAME in the store."),
    max_tokens: int = typer.Option(None, help="Tokens read per video (stratified by label): bounded memory."),
    control_condition_types: int = typer.Option(64, help="Control task: at most this many conditioning categories."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """Linear probes per (step, layer) with controls: control task, x_t alone, conditioning alone, majority."""
    from interp.experiments.probe import probe_store, save_probes
    from interp.plans import probe_plan
    from interp.validation import check
    from probes.run import ProbeConfig

    label_files = parse_labels(labels)
    if not store.is_file():
        raise UsageError(f"no activation store at {store}")
    set_threads(threads)
    cfg = ProbeConfig(list(target), label_files, layers, steps, method, test_fraction, folds, seed, tol=tol,
                      max_iter=max_iter, patience=patience, group=group, device=device, name=name,
                      max_tokens=max_tokens, control_condition_types=control_condition_types)  # fmt: skip
    check(cfg)
    show(probe_plan(store, cfg, out), typer.echo)
    tic = time.time()
    echo_manifest(save_probes(probe_store(store, cfg), cfg, store, out), out)
    typer.echo(f"[{time.time() - tic:.0f}s]")


@app.command()
def chain(
    store: Path = typer.Argument(..., help="An activation store traced with --steps all (maze task)."),
    out: Path = typer.Option(Path("runs/chain"), help="Output folder: chain.json, chain.png, run.json."),
    min_branches: int = typer.Option(2, help="Multi-path: lit side branches at some step."),
    superposition_share: float = typer.Option(0.8, help="Superposition: share of the solution lit..."),
    superposition_extra: int = typer.Option(2, help="...while at least this many off-path cells are lit."),
    formed_share: float = typer.Option(0.5, help="An answer is formed when this share of the path length is lit."),
    threshold: float = typer.Option(0.1, help="Any model: a frame commits once x0_hat stays this close to the end."),
    scorer: str | None = typer.Option(None, help="module:function of decoded frames (T, H, W, 3) -> a number."),
    scorer_timeout: float | None = typer.Option(None, help="Seconds one scorer call may take (default: no limit)."),
    model: str | None = typer.Option(None, help="With --scorer: the store's model, to decode x0_hat."),
    device: str = typer.Option("cpu", help="With --scorer: torch device of the decoder."),
    torch_dtype: str | None = typer.Option(None, help="With --scorer: float32 (default on CPU), bfloat16."),
) -> None:
    """Chain of Steps of x0_hat: convergence, commit steps and seed spread (any model; a scorer of
    your own); on maze stores also commit, exploration, self-correction, perception vs action."""
    from interp.experiments.chain import ChainRunConfig, run_chain, save_chain

    if not store.is_file():
        raise UsageError(f"no activation store at {store}")
    cfg = ChainRunConfig(store=str(store), min_branches=min_branches, superposition_share=superposition_share,
                         superposition_extra=superposition_extra, formed_share=formed_share, threshold=threshold,
                         scorer=scorer, scorer_timeout=scorer_timeout, model=model, device=device,
                         torch_dtype=torch_dtype)  # fmt: skip
    echo_manifest(save_chain(run_chain(cfg), cfg, out), out)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run folder: what the demo or the other commands wrote."),
    out: Path | None = typer.Option(None, help="The page (default RUN_DIR/report.html; must lie in RUN_DIR)."),
    title: str | None = typer.Option(None, help="Page title."),
) -> None:
    """One self-contained HTML page of a run folder's manifests: figures embedded, files linked."""
    from interp.report.html import write_report

    typer.echo(str(write_report(run_dir, out, title)))


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output folder."),
    model: str = typer.Option("testbed", help="The shipped testbed the study runs on."),
    n_filmstrips: int = typer.Option(6, help="Held-out mazes drawn as filmstrips."),
    n_accuracy: int = typer.Option(200, help="Held-out mazes for the accuracy figure."),
    n_trace: int = typer.Option(32, help="Held-out mazes traced into an activation store."),
    probe_target: list[str] = typer.Option(["on_path", "wall", "dist_to_goal"], help="Probe targets; repeatable."),
    probe_steps: str = typer.Option("0-19:2", help="Steps probed (every other step keeps the demo short)."),
    n_causal: int = typer.Option(2, help="Maze pairs patched (swap and flow use twice as many mazes)."),
    n_noise: int = typer.Option(32, help="Mazes for noise at step vs noise at frame."),
    n_ensemble: int = typer.Option(32, help="Held-out mazes for the seed ensemble (0 skips it)."),
    n_exploration: int | None = typer.Option(None, help="Mazes per size for exploration (multi-size models; 0 skips)."),
    n_select: int | None = typer.Option(None, help="Mazes for early-step selection (multi-size models; 0 skips)."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """The whole study on a testbed: every registered experiment's demo step, then one HTML report."""
    from interp.study import run_study

    options = {k: v for k, v in locals().items() if k not in ("out", "model", "run_study")}
    run_study(out, model, typer.echo, **{**options, "probe_target": list(probe_target)})


add_experiment_commands(app)


def main() -> None:  # the ``interp`` script and ``python -m interp`` (interp/__main__.py)
    run_app(app)
