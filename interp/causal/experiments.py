"""The study's causal experiments as data: each config serialises to JSON beside its result and
reruns from it. All run on the testbed's maze task through an adapter; ``*_sweep`` functions take
any adapter with prepared runs.

- ``PatchConfig`` / ``run_patch``: activation patching over (step, layer[, sub-module], region),
  clean into corrupted ("denoising") or corrupted into clean ("noising"), scored 1 = clean
  behaviour, 0 = corrupted behaviour.
- ``SwapConfig`` / ``run_swap``: the study's layer-wise latent swap: at step s only layer k's tokens
  come from a run on another maze; how often the answer becomes the other maze's.
- ``PerturbConfig`` / ``run_perturb``: fresh N(0, I) noise for x_s of every frame at one step,
  against one frame replaced by noise at every step; accuracy with Wilson intervals.
- ``FlowConfig`` / ``run_flow``: noise injected at step s; linear CKA between the perturbed and the
  clean run's block outputs at every later (step, layer), and of x0_hat.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from activations.selection import parse_index_spec
from interp.causal.patching import Patch, RunCache, projection_score, record_run, run_patched
from interp.evaluation import verify_latents, wilson_interval
from interp.models.testbed import TestbedAdapter
from interp.sampling import StepHook, initial_noise, sample
from interp.tasks import maze as maze_task
from interp.trace_job import load_adapter

DIRECTIONS = ("denoising", "noising")
METRICS = ("maze", "latent")


# -- configs ------------------------------------------------------------------------------------
@dataclass
class _Config:
    model: str = "testbed"
    size: int = 4
    frames: int = 4
    num_steps: int | None = None

    def to_json(self) -> str:
        return json.dumps({"experiment": self.experiment, **asdict(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        data = json.loads(text)
        kind = data.pop("experiment", cls.experiment)
        if kind != cls.experiment:
            raise ValueError(f"this is a {kind!r} config, not {cls.experiment!r}")
        return cls(**data)


@dataclass
class PatchConfig(_Config):
    experiment = "patch"
    n: int = 4  # maze pairs: clean seeds first_seed .., corrupted = the clean maze rewired
    first_seed: int = 0
    steps: str = "all"
    layers: str = "all"
    sub: str | None = None  # None: block output; attn1, attn2 or ffn: that sub-module's output
    region: str = "all"  # all | frame:F | diff (cells whose solution differs) | path to a .npy mask (T, H, W)
    direction: str = "denoising"
    metric: str = "maze"
    span: str = "step"  # step: patch that step only; onward: that step and every later one
    pipeline: dict | None = None  # a real model instead of the testbed: PipelineInputs fields, 2 samples


@dataclass
class SwapConfig(_Config):
    experiment = "swap"
    n: int = 8
    first_seed: int = 0
    steps: str = "0"  # the study swaps at the first step
    layers: str = "all"
    other: str = "rewired"  # rewired (same maze, one wall moved) or an integer seed offset, e.g. "1000"
    pipeline: dict | None = None  # a real model: PipelineInputs fields with samples [base, other]


@dataclass
class PerturbConfig(_Config):
    experiment = "perturb"
    n: int = 64
    first_seed: int = 0
    steps: str = "all"
    frames_to_noise: str = "all"
    noise_seed: int = 12345
    pipeline: dict | None = None  # a real model: PipelineInputs fields; scored by similarity, not accuracy


@dataclass
class FlowConfig(_Config):
    experiment = "flow"
    n: int = 8
    first_seed: int = 0
    inject_steps: str = "all"
    layers: str = "all"
    strength: float = 1.0  # x_s <- sqrt(1 - a^2) x_s + a * fresh noise; 1.0 replaces x_s
    noise_seed: int = 12345
    pipeline: dict | None = None  # a real model instead of the testbed: PipelineInputs fields


@dataclass
class PipelineInputs:
    """A local diffusers pipeline folder and VBVR-style samples (``prompt.txt``, ``first_frame.png``)."""

    model: str
    data: str
    samples: list[str] | None = None  # sample folder names; None: every sample
    height: int = 480
    width: int = 832
    num_frames: int = 81
    seed: int = 0  # one noise seed for every sample, so that the runs differ only in their inputs
    num_steps: int = 50
    device: str = "cpu"
    torch_dtype: str = "bfloat16"
    guidance_scale: float | None = None
    negative_prompt: str | None = ""
    max_sequence_length: int = 226


CONFIGS = {c.experiment: c for c in (PatchConfig, SwapConfig, PerturbConfig, FlowConfig)}


def load_config(path: str | Path):
    data = json.loads(Path(path).read_text())
    kind = data.get("experiment")
    if kind not in CONFIGS:
        raise ValueError(f"{path}: not an experiment config (experiment must be one of {list(CONFIGS)})")
    return CONFIGS[kind].from_json(json.dumps(data))


# -- shared pieces ------------------------------------------------------------------------------
def _check_common(cfg: _Config, adapter: TestbedAdapter) -> int:
    maze_task.encode(maze_task.generate_maze(cfg.size, 0), cfg.frames)  # validates size and frames
    num_steps = cfg.num_steps or adapter.defaults.num_steps
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if getattr(cfg, "n", 1) < 1:
        raise ValueError("n must be at least 1")
    return num_steps


def _sites(adapter, layers: list[int], sub: str | None) -> list[str]:
    """Block outputs (or one sub-module) of ``layers``, every expert of a multi-expert model."""
    from activations.axes import parse_site

    return [s for s in adapter.site_names(layers, (sub,) if sub else ()) if parse_site(s)[2] == sub]


def load_pipeline_inputs(p: PipelineInputs) -> tuple:
    """(adapter, chosen samples) of a ``PipelineInputs``: the named samples, in order (all if none named)."""
    from interp.pipeline_job import PipelineTraceConfig, load_pipeline_adapter, read_samples

    samples = read_samples(p.data)
    if p.samples is not None:
        by_name = {x.name: x for x in samples}
        missing = [name for name in p.samples if name not in by_name]
        if missing:
            raise ValueError(f"no sample {missing[0]!r} in {p.data} (samples: {sorted(by_name)})")
        samples = [by_name[name] for name in p.samples]
    trace_cfg = PipelineTraceConfig(
        model=p.model,
        data=p.data,
        height=p.height,
        width=p.width,
        num_frames=p.num_frames,
        num_steps=p.num_steps,
        guidance_scale=p.guidance_scale,
        torch_dtype=p.torch_dtype,
        device=p.device,
    )
    return load_pipeline_adapter(trace_cfg), samples


def pipeline_runs(spec: dict, sites_for) -> tuple:
    """Load a pipeline adapter and record one run per chosen sample (same noise seed).

    ``sites_for(adapter) -> (sites, num_steps)``. Returns (adapter, RunCache, conditioning, names).
    """
    from PIL import Image

    from interp.causal.patching import stack_conditioning

    p = PipelineInputs(**spec)
    adapter, samples = load_pipeline_inputs(p)
    sites = sites_for(adapter)
    shape = adapter.pipeline_latent_shape(p.height, p.width, p.num_frames)
    noise = initial_noise([p.seed] * len(samples), shape, adapter.transformer.device, torch.float32)
    conds = []
    with torch.no_grad():
        for i, sample in enumerate(samples):
            image = Image.open(sample.first_frame).convert("RGB") if sample.first_frame else None
            conds.append(
                adapter.pipeline_conditioning(
                    [sample.prompt],
                    [image],
                    noise[i : i + 1],
                    p.negative_prompt,
                    p.height,
                    p.width,
                    p.num_frames,
                    p.max_sequence_length,
                )  # fmt: skip
            )
    cond = stack_conditioning(conds)
    run = record_run(adapter, noise, cond, p.num_steps, sites)
    return adapter, run, cond, [x.name for x in samples], p.num_steps


def final_trail(latents: torch.Tensor) -> np.ndarray:
    """(B, N, N) cells lit by the trail (or agent) in the last frame of final latents."""
    z = latents.detach().float().cpu().numpy()
    trail = maze_task.LATENT_CHANNELS.index("trail")
    agent = maze_task.LATENT_CHANNELS.index("agent")
    return (z[:, trail, -1] > 0) | (z[:, agent, -1] > 0)


def path_mask(maze: maze_task.Maze) -> np.ndarray:
    mask = np.zeros((maze.size, maze.size), dtype=bool)
    for cell in maze.path:
        mask[cell] = True
    return mask


def maze_preference(lit: np.ndarray, clean: maze_task.Maze, corrupted: maze_task.Maze) -> float:
    """Share of the clean-only solution cells lit minus share of the corrupted-only ones, in [-1, 1]."""
    a, b = path_mask(clean), path_mask(corrupted)
    only_a, only_b = a & ~b, b & ~a
    share = lambda cells: float(lit[cells].mean()) if cells.any() else 0.0  # noqa: E731 (one path may contain the other)
    return share(only_a) - share(only_b)


def region_tokens(region: str, grid: tuple[int, int, int], clean: maze_task.Maze, corrupted: maze_task.Maze):
    """Flat token indices of a region, or None for all tokens."""
    t, h, w = grid
    if region == "all":
        return None
    if region.startswith("frame:"):
        try:
            f = int(region.split(":", 1)[1])
        except ValueError as err:
            raise ValueError(f"region {region!r}: use frame:F with an integer F") from err
        if not 0 <= f < t:
            raise ValueError(f"region {region!r}: frame {f} is out of range (0-{t - 1})")
        mask = np.zeros(grid, dtype=bool)
        mask[f] = True
    elif region == "diff":
        differ = path_mask(clean) ^ path_mask(corrupted)
        mask = np.broadcast_to(differ, grid)
    else:
        path = Path(region)
        if not path.is_file():
            raise ValueError(f"region {region!r}: use all, frame:F, diff or a .npy mask file")
        mask = np.load(path, allow_pickle=False)
        if mask.shape != grid:
            raise ValueError(f"region mask {path} has shape {mask.shape}; the token grid is {grid}")
        mask = mask.astype(bool)
    return tuple(int(i) for i in np.flatnonzero(mask.reshape(-1)))


def _pairs(cfg, n: int) -> tuple[list[maze_task.Maze], list[maze_task.Maze]]:
    clean = [maze_task.generate_maze(cfg.size, cfg.first_seed + i) for i in range(n)]
    return clean, [maze_task.rewire(m) for m in clean]


def _cached_runs(adapter, mazes, frames, num_steps, sites) -> tuple[RunCache, torch.Tensor]:
    cond = adapter.conditioning(mazes, frames)
    noise = initial_noise([m.seed for m in mazes], adapter.latent_shape(mazes[0].size, frames))
    return record_run(adapter, noise, cond, num_steps, sites), cond


# -- activation patching and latent swapping ----------------------------------------------------
def patch_sweep(
    adapter,
    base: RunCache,
    base_cond,
    source: RunCache,
    steps: list[int],
    sites: list[str],
    tokens: list,
    num_steps: int,
    progress: bool = True,
    onward: bool = False,
    pairs: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Final latents of every (pair, step, site) patch, (pairs, steps, sites, *latent).

    A pair is (base element, source element); default: element e of both runs, for every element
    of the base. For each step one batch: every pair x every site, started from the base's cached
    x_s. ``tokens[i]`` is pair i's token region (None: all). ``onward``: patch that step and every
    later one (default: that step only, then sampling continues unpatched).
    """
    pairs = pairs if pairs is not None else [(e, e) for e in range(base.batch)]
    base_elements = [b for b, _ in pairs for _ in sites]
    source_elements = [src for _, src in pairs for _ in sites]
    out = []
    for step in tqdm(steps, disable=not progress, desc="patching steps", leave=False):
        span = range(step, num_steps) if onward else (step,)
        rows = [[Patch(t, site, tokens[i]) for t in span] for i in range(len(pairs)) for site in sites]
        finals = run_patched(adapter, base, base_cond, source, rows, base_elements, source_elements, num_steps)
        out.append(finals.reshape(len(pairs), len(sites), *finals.shape[1:]))
    return torch.stack(out, 1)


def run_patch(cfg: PatchConfig, adapter: TestbedAdapter | None = None, progress: bool = True):
    """Activation patching; returns an xarray DataArray (step, layer) of the mean normalised score."""
    import xarray as xr

    if cfg.pipeline is not None:
        return _run_patch_pipeline(cfg, progress)
    adapter = adapter or load_adapter(cfg.model)
    num_steps = _check_common(cfg, adapter)
    _check_patch(cfg)
    steps = parse_index_spec(cfg.steps, num_steps, "step")
    layers = parse_index_spec(cfg.layers, adapter.num_blocks(), "layer")
    sites = _sites(adapter, layers, cfg.sub)
    clean, corrupted = _pairs(cfg, cfg.n)
    grid = adapter.token_grid(adapter.latent_shape(cfg.size, cfg.frames))
    tokens = [region_tokens(cfg.region, grid, a, b) for a, b in zip(clean, corrupted)]
    clean_run, clean_cond = _cached_runs(adapter, clean, cfg.frames, num_steps, sites)
    corr_run, corr_cond = _cached_runs(adapter, corrupted, cfg.frames, num_steps, sites)
    if cfg.direction == "denoising":
        base, base_cond, source = corr_run, corr_cond, clean_run
    else:
        base, base_cond, source = clean_run, clean_cond, corr_run
    onward = cfg.span == "onward"
    finals = patch_sweep(adapter, base, base_cond, source, steps, sites, tokens, num_steps, progress, onward)
    scores = _scores(cfg.metric, finals, clean_run.final, corr_run.final, clean, corrupted)
    return xr.DataArray(
        np.nanmean(scores, 0),
        dims=("step", "layer"),
        coords={"step": steps, "layer": layers},
        name="patching score",
        attrs={
            "config": cfg.to_json(),
            "per_pair": json.dumps(scores.tolist()),
            "meaning": "1 = clean behaviour, 0 = corrupted behaviour",
        },
    )


def _check_patch(cfg: PatchConfig) -> None:
    if cfg.direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {cfg.direction!r}")
    if cfg.metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {cfg.metric!r}")
    if cfg.span not in ("step", "onward"):
        raise ValueError(f"span must be 'step' or 'onward', got {cfg.span!r}")
    if cfg.sub is not None and cfg.sub not in ("attn1", "attn2", "ffn"):
        raise ValueError(f"sub must be attn1, attn2 or ffn, got {cfg.sub!r}")


def _run_patch_pipeline(cfg: PatchConfig, progress: bool):
    """Patching on a real model: samples [clean, corrupted] of a VBVR-style folder, latent metric."""
    import xarray as xr

    _check_patch(cfg)
    if cfg.metric != "latent":
        raise ValueError("a pipeline model has no maze verifier: use metric 'latent'")
    if cfg.region == "diff":
        raise ValueError("region 'diff' is for maze pairs; use all, frame:F or a .npy mask")
    if len((cfg.pipeline or {}).get("samples") or []) != 2:
        raise ValueError("pipeline patching needs samples: [clean, corrupted] (two sample folder names)")
    chosen: dict = {}

    def sites_for(adapter):  # every check before the runs are recorded
        spec = PipelineInputs(**cfg.pipeline)
        expert = next(iter(adapter.transformers()))
        chosen["steps"] = parse_index_spec(cfg.steps, spec.num_steps, "step")
        chosen["layers"] = parse_index_spec(cfg.layers, adapter.num_blocks(expert), "layer")
        chosen["sites"] = _sites(adapter, chosen["layers"], cfg.sub)
        if len(chosen["sites"]) != len(chosen["layers"]):
            raise ValueError("patching a multi-expert model from a config is not supported yet; use run_patched")
        shape = adapter.pipeline_latent_shape(spec.height, spec.width, spec.num_frames)
        chosen["tokens"] = region_tokens(cfg.region, adapter.token_grid(tuple(shape), expert), None, None)
        return chosen["sites"]

    adapter, run, cond, _, num_steps = pipeline_runs(cfg.pipeline, sites_for)
    sites, tokens = chosen["sites"], chosen["tokens"]
    # Both samples are elements of one recorded run: patch the source element into the base one.
    clean_e, corr_e = (0, 1) if cfg.direction == "denoising" else (1, 0)
    onward = cfg.span == "onward"
    finals = patch_sweep(
        adapter, run, cond, run, chosen["steps"], sites, [tokens], num_steps, progress, onward, [(corr_e, clean_e)]
    )[0]  # (steps, sites, *latent)
    flat = finals.flatten(0, 1)
    clean_final, corr_final = run.final[0:1].expand_as(flat), run.final[1:2].expand_as(flat)
    scores = projection_score(flat, clean_final, corr_final).reshape(len(chosen["steps"]), len(sites))
    return xr.DataArray(
        scores,
        dims=("step", "layer"),
        coords={"step": chosen["steps"], "layer": chosen["layers"]},
        name="patching score",
        attrs={
            "config": cfg.to_json(),
            "per_pair": json.dumps([scores.tolist()]),
            "meaning": "1 = clean behaviour, 0 = corrupted behaviour",
        },
    )


def _scores(metric, finals, clean_final, corr_final, clean, corrupted) -> np.ndarray:
    """(pairs, steps, sites) normalised scores: 1 = the clean run's behaviour, 0 = the corrupted run's."""
    n, s, k = finals.shape[:3]
    scores = np.full((n, s, k), np.nan)
    for e in range(n):
        if metric == "latent":
            flat = finals[e].reshape(s * k, *finals.shape[3:])
            c = clean_final[e : e + 1].expand_as(flat)
            r = corr_final[e : e + 1].expand_as(flat)
            scores[e] = projection_score(flat, c, r).reshape(s, k)
            continue
        hi = maze_preference(final_trail(clean_final[e : e + 1])[0], clean[e], corrupted[e])
        lo = maze_preference(final_trail(corr_final[e : e + 1])[0], clean[e], corrupted[e])
        if hi == lo:  # the model answers both mazes alike: this pair says nothing
            continue
        lit = final_trail(finals[e].reshape(s * k, *finals.shape[3:]))
        raw = np.array([maze_preference(x, clean[e], corrupted[e]) for x in lit]).reshape(s, k)
        scores[e] = (raw - lo) / (hi - lo)
    return scores


def run_swap(cfg: SwapConfig, adapter: TestbedAdapter | None = None, progress: bool = True):
    """Latent swapping; DataArray (step, layer) of the share of mazes whose answer became the other
    maze's solution (attrs: the mean normalised score as well)."""
    import xarray as xr

    if cfg.pipeline is not None:  # no verifier: where the output lies between base (0) and other (1)
        samples = (cfg.pipeline or {}).get("samples") or []
        if len(samples) != 2:
            raise ValueError("pipeline swapping needs samples: [base, other] (two sample folder names)")
        as_patch = PatchConfig(
            pipeline={**cfg.pipeline, "samples": [samples[1], samples[0]]},
            steps=cfg.steps,
            layers=cfg.layers,
            metric="latent",
        )
        result = _run_patch_pipeline(as_patch, progress)
        result.name = "projection of the output toward the other run's (1) from the base run's (0)"
        result.attrs["config"] = cfg.to_json()
        return result
    adapter = adapter or load_adapter(cfg.model)
    num_steps = _check_common(cfg, adapter)
    steps = parse_index_spec(cfg.steps, num_steps, "step")
    layers = parse_index_spec(cfg.layers, adapter.num_blocks(), "layer")
    sites = _sites(adapter, layers, None)
    base_mazes = [maze_task.generate_maze(cfg.size, cfg.first_seed + i) for i in range(cfg.n)]
    if cfg.other == "rewired":
        others = [maze_task.rewire(m) for m in base_mazes]
    else:
        try:
            offset = int(cfg.other)
        except ValueError as err:
            raise ValueError(f"other must be 'rewired' or an integer seed offset, got {cfg.other!r}") from err
        if offset == 0:
            raise ValueError("other = 0 would swap a maze with itself")
        others = [maze_task.generate_maze(cfg.size, m.seed + offset) for m in base_mazes]
    base_run, base_cond = _cached_runs(adapter, base_mazes, cfg.frames, num_steps, sites)
    other_run, _ = _cached_runs(adapter, others, cfg.frames, num_steps, sites)
    finals = patch_sweep(adapter, base_run, base_cond, other_run, steps, sites, [None] * cfg.n, num_steps, progress)
    flipped = np.zeros((cfg.n, len(steps), len(sites)))
    for e in range(cfg.n):
        lit = final_trail(finals[e].reshape(-1, *finals.shape[3:]))
        target = path_mask(others[e])
        flipped[e] = np.array([np.array_equal(x, target) for x in lit]).reshape(len(steps), len(sites))
    scores = _scores("maze", finals, other_run.final, base_run.final, others, base_mazes)
    return xr.DataArray(
        flipped.mean(0),
        dims=("step", "layer"),
        coords={"step": steps, "layer": layers},
        name="share flipped to the other maze's answer",
        attrs={"config": cfg.to_json(), "mean_score": json.dumps(np.nanmean(scores, 0).tolist())},
    )


# -- noise at step vs noise at frame ------------------------------------------------------------
def _fresh_noise(shape, seed: int, key: int) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + key))


class _FrameNoise(StepHook):
    def __init__(self, frame: int, seed: int):
        self.frame, self.seed = frame, seed

    def before_model(self, state):
        latents = state.latents.clone()
        noise = _fresh_noise(latents[:, :, self.frame].shape, self.seed, 1000 + state.step)
        latents[:, :, self.frame] = noise.to(latents)
        return latents


def _solved(adapter, latents, mazes) -> tuple[np.ndarray, np.ndarray]:
    """(solved, final_exact) per maze: the whole video right, and the answer (last frame) right."""
    verdicts = verify_latents(adapter, latents, mazes)
    return np.array([v.solved for v in verdicts]), np.array([v.final_exact for v in verdicts])


def run_perturb(cfg: PerturbConfig, adapter: TestbedAdapter | None = None, progress: bool = True) -> dict:
    """Accuracy with x_s replaced by fresh noise at each step, and with one frame noised at every step.
    On a pipeline model (no verifier) each entry is the cosine similarity of the final latent to the
    unperturbed run's instead (``similarity``, mean over samples, with its per-sample values)."""
    if cfg.pipeline is not None:
        return _run_perturb_pipeline(cfg, progress)
    adapter = adapter or load_adapter(cfg.model)
    num_steps = _check_common(cfg, adapter)
    steps = parse_index_spec(cfg.steps, num_steps, "step")
    frames = parse_index_spec(cfg.frames_to_noise, cfg.frames, "frame")
    mazes = [maze_task.generate_maze(cfg.size, cfg.first_seed + i) for i in range(cfg.n)]
    run, cond = _cached_runs(adapter, mazes, cfg.frames, num_steps, [])

    def score(latents: torch.Tensor) -> dict:
        solved, final_exact = _solved(adapter, latents, mazes)
        lo, hi = wilson_interval(int(solved.sum()), len(solved))
        flo, fhi = wilson_interval(int(final_exact.sum()), len(final_exact))
        return {
            "accuracy": float(solved.mean()),
            "ci95": [lo, hi],
            "final_exact": float(final_exact.mean()),
            "final_exact_ci95": [flo, fhi],
            "n": len(solved),
        }

    return _noise_at_steps_and_frames(cfg, adapter, run, cond, num_steps, steps, frames, score, progress)


def _run_perturb_pipeline(cfg: PerturbConfig, progress: bool) -> dict:
    chosen: dict = {}

    def sites_for(adapter):  # checks before the run is recorded
        spec = PipelineInputs(**cfg.pipeline)
        shape = adapter.pipeline_latent_shape(spec.height, spec.width, spec.num_frames)
        if len(shape) != 4:
            raise ValueError(f"noise at frame needs a (C, T, H, W) latent, this model's is {tuple(shape)}")
        chosen["steps"] = parse_index_spec(cfg.steps, spec.num_steps, "step")
        chosen["frames"] = parse_index_spec(cfg.frames_to_noise, shape[1], "latent frame")
        return []

    adapter, run, cond, names, num_steps = pipeline_runs(cfg.pipeline, sites_for)
    reference = run.final.flatten(1).double()

    def summary(final: torch.Tensor) -> dict:
        sims = torch.nn.functional.cosine_similarity(final.flatten(1).double(), reference, dim=1).tolist()
        return {"similarity": float(np.mean(sims)), "per_sample": dict(zip(names, sims)), "n": len(sims)}

    return _noise_at_steps_and_frames(
        cfg, adapter, run, cond, num_steps, chosen["steps"], chosen["frames"], summary, progress
    )


def _noise_at_steps_and_frames(cfg, adapter, run: RunCache, cond, num_steps, steps, frames, score, progress) -> dict:
    """The two halves of the perturbation experiment, each result scored by ``score(final latents)``:
    x_s replaced by fresh noise at step s (resumed from the cached x_s), and frame f replaced by
    fresh noise before every step."""
    at_step, at_frame = {}, {}
    scheduler = adapter.make_scheduler(None)
    for s in tqdm(steps, disable=not progress, desc="noise at step", leave=False):
        fresh = _fresh_noise(run.latents[s].shape, cfg.noise_seed, s).to(run.latents[s])
        with torch.no_grad():
            out = sample(adapter, fresh, cond, num_steps, scheduler=scheduler, start_step=s)
        at_step[s] = score(out.latents)
    for f in tqdm(frames, disable=not progress, desc="noise at frame", leave=False):
        hooks = [_FrameNoise(f, cfg.noise_seed)]
        with torch.no_grad():
            out = sample(adapter, run.latents[0], cond, num_steps, hooks=hooks, scheduler=scheduler)
        at_frame[f] = score(out.latents)
    config = json.loads(cfg.to_json())
    return {"config": config, "baseline": score(run.final), "at_step": at_step, "at_frame": at_frame}


# -- information flow ---------------------------------------------------------------------------
def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al., 2019) of two (samples, features) matrices."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).pow(2).sum()
    norm = torch.sqrt((x.T @ x).pow(2).sum() * (y.T @ y).pow(2).sum())
    return float(cross / norm) if norm > 0 else float("nan")


def run_flow(cfg: FlowConfig, adapter: TestbedAdapter | None = None, progress: bool = True):
    """CKA between perturbed and clean runs; DataArray (inject_step, step, layer), NaN before injection.
    attrs ``x0_hat_cka`` (inject_step, step) and ``sensitivity`` (mean 1 - CKA over later states)."""
    import xarray as xr

    if not 0 < cfg.strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {cfg.strength}")
    if cfg.pipeline is not None:  # a real model over its samples
        chosen: dict = {}

        def sites_for(model):
            spec = PipelineInputs(**cfg.pipeline)
            chosen["injects"] = parse_index_spec(cfg.inject_steps, spec.num_steps, "step")
            chosen["layers"] = parse_index_spec(cfg.layers, model.num_blocks(next(iter(model.transformers()))), "layer")
            names = _sites(model, chosen["layers"], None)
            if len(names) != len(chosen["layers"]):
                raise ValueError("information flow of a multi-expert model from a config is not supported yet")
            return names

        adapter, clean, cond, _, num_steps = pipeline_runs(cfg.pipeline, sites_for)
        injects, layers = chosen["injects"], chosen["layers"]
        sites = _sites(adapter, layers, None)
    else:
        adapter = adapter or load_adapter(cfg.model)
        num_steps = _check_common(cfg, adapter)
        injects = parse_index_spec(cfg.inject_steps, num_steps, "step")
        layers = parse_index_spec(cfg.layers, adapter.num_blocks(), "layer")
        sites = _sites(adapter, layers, None)
        mazes = [maze_task.generate_maze(cfg.size, cfg.first_seed + i) for i in range(cfg.n)]
        clean, cond = _cached_runs(adapter, mazes, cfg.frames, num_steps, sites)
    cka = np.full((len(injects), num_steps, len(sites)), np.nan)
    x0_cka = np.full((len(injects), num_steps), np.nan)
    a = cfg.strength
    for i, s in enumerate(tqdm(injects, disable=not progress, desc="information flow", leave=False)):
        fresh = _fresh_noise(clean.latents[s].shape, cfg.noise_seed, s).to(clean.latents[s])
        start = (1 - a * a) ** 0.5 * clean.latents[s] + a * fresh
        perturbed = record_run(adapter, start, cond, num_steps, sites, start_step=s)
        for step in range(s, num_steps):
            for k, site in enumerate(sites):
                if (step, 0, site) not in clean.acts:  # a multi-expert model runs one expert per step
                    continue
                x = clean.acts[(step, 0, site)].flatten(0, -2)
                y = perturbed.acts[(step, 0, site)].flatten(0, -2)
                cka[i, step, k] = linear_cka(x, y)
            x0_cka[i, step] = linear_cka(clean.x0_hat[step].flatten(1), perturbed.x0_hat[step].flatten(1))
    sensitivity = [float(np.nanmean(1 - cka[i])) for i in range(len(injects))]
    return xr.DataArray(
        cka,
        dims=("inject_step", "step", "layer"),
        coords={"inject_step": injects, "step": list(range(num_steps)), "layer": layers},
        name="linear CKA to the clean run",
        attrs={
            "config": cfg.to_json(),
            "x0_hat_cka": json.dumps(x0_cka.tolist()),
            "sensitivity": json.dumps(sensitivity),
        },
    )
