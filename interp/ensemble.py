"""The study's training-free seed ensemble, with the controls that say whether it is more than a
temperature effect.

N seeds of one input run side by side; after each of the first K steps their latents are merged:

- ``mean``: the plain mean of the N next latents (its noise part shrinks by 1/sqrt(N));
- ``rescaled``: the mean clean estimate, plus the mean noise part rescaled to the seeds' own noise
  spread (so the merged latent sits at the scheduler's noise level, not 1/sqrt(N) below it);
- ``x0``: only the clean estimates are merged; each seed keeps its own noise.

With ``mean`` or ``rescaled`` the N trajectories are one after the first merge (the sampler is
deterministic); the ensemble's answer is seed 0's row. Controls: one seed whose noise is shrunk as
the mean of N seeds shrinks it (initial noise and the noise part after each of the first K steps
times 1/sqrt(N)), and plain low-temperature sampling (initial noise times a scale).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.evaluation import verify_latents, wilson_interval
from interp.sampling import StepHook, initial_noise, sample
from interp.tasks import maze as maze_task

MERGES = ("mean", "rescaled", "x0")


class SeedMerge(StepHook):
    """Merges groups of ``n_seeds`` consecutive rows after each of the first ``k`` steps."""

    def __init__(self, n_seeds: int, k: int, rule: str = "rescaled"):
        if rule not in MERGES:
            raise ValueError(f"merge rule must be one of {MERGES}, got {rule!r}")
        if n_seeds < 1 or k < 0:
            raise ValueError("n_seeds must be >= 1 and k >= 0")
        self.n, self.k, self.rule = n_seeds, k, rule

    def after_step(self, state):
        if state.step >= self.k or self.n == 1:
            return None
        nxt = state.next_latents
        groups = nxt.reshape(-1, self.n, *nxt.shape[1:])
        if self.rule == "mean":
            merged = groups.mean(1, keepdim=True).expand_as(groups)
            return merged.reshape(nxt.shape)
        sigma = state.sigma_next
        x0 = state.x0_hat.reshape(groups.shape)
        if sigma <= 0:
            return x0.mean(1, keepdim=True).expand_as(groups).reshape(nxt.shape)
        noise = (groups - (1 - sigma) * x0) / sigma  # each seed's noise part at the next level
        x0_mean = x0.mean(1, keepdim=True)
        if self.rule == "x0":
            return ((1 - sigma) * x0_mean + sigma * noise).reshape(nxt.shape)
        # Rescale the mean noise to the seeds' own spread (sqrt(N) for independent seeds, 1 once they
        # have merged: a fixed sqrt(N) would inflate the noise at every later merge).
        mean = noise.mean(1, keepdim=True)
        dims = tuple(range(2, noise.ndim))
        target = noise.std(dim=dims, keepdim=True).mean(1, keepdim=True)
        noise_mean = mean * target / mean.std(dim=dims, keepdim=True).clamp_min(1e-12)
        return ((1 - sigma) * x0_mean + sigma * noise_mean).expand_as(groups).reshape(nxt.shape)


class ShrunkNoise(StepHook):
    """Control: one seed whose noise part is scaled by ``scale`` after each of the first ``k`` steps."""

    def __init__(self, scale: float, k: int):
        self.scale, self.k = scale, k

    def after_step(self, state):
        if state.step >= self.k or state.sigma_next <= 0:
            return None
        sigma = state.sigma_next
        noise = (state.next_latents - (1 - sigma) * state.x0_hat) / sigma
        return (1 - sigma) * state.x0_hat + sigma * self.scale * noise


@dataclass
class EnsembleConfig:
    experiment = "ensemble"
    model: str = "testbed"
    sizes: list[int] = field(default_factory=lambda: [4, 5])  # in and out of distribution
    frames: int = 4
    n: int = 64  # held-out mazes per size
    first_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 5])
    ks: list[int] = field(default_factory=lambda: [1, 3])
    merges: list[str] = field(default_factory=lambda: ["mean", "rescaled", "x0"])
    temperatures: list[float] = field(default_factory=lambda: [0.8, 0.6])
    num_steps: int | None = None

    def to_json(self) -> str:
        return json.dumps({"experiment": self.experiment, **asdict(self)}, indent=2, sort_keys=True)


def _sample_groups(adapter, noises, cond, n_seeds: int, num_steps: int, hooks=(), scale: float = 1.0):
    """Sample the first ``n_seeds`` noises of every input: (inputs, n_seeds, *latent)."""
    x = (noises[:, :n_seeds] * scale).flatten(0, 1)
    c = cond.repeat_interleave(n_seeds, 0)
    with torch.no_grad():
        out = sample(adapter, x, c, num_steps, hooks=list(hooks), scheduler=adapter.make_scheduler(None))
    return out.latents.reshape(noises.shape[0], n_seeds, *noises.shape[2:])


def _solved(adapter, latents, mazes) -> np.ndarray:
    return np.array([v.solved for v in verify_latents(adapter, latents, mazes)])


def _row(name: str, size: int, solved: np.ndarray, **extra) -> dict:
    lo, hi = wilson_interval(int(solved.sum()), len(solved))
    return {"size": size, "method": name, "accuracy": float(solved.mean()), "ci95": [lo, hi], "n": len(solved), **extra}


def _check_sweep(seeds: list[int], ks: list[int], merges: list[str], num_steps: int) -> None:
    bad = [m for m in merges if m not in MERGES]
    if bad:
        raise ValueError(f"merge rule must be one of {MERGES}, got {bad[0]!r}")
    if not seeds or min(seeds) < 1 or min(ks, default=0) < 0 or max(ks, default=0) > num_steps:
        raise ValueError(f"seeds must be >= 1 and K within 0-{num_steps}")


def _variants(seeds: list[int], ks: list[int], merges: list[str], temperatures: list[float]):
    """The runs a sweep makes beside the independent seeds, in report order:
    (name, row fields, seeds sampled, hooks, initial-noise scale)."""
    for n in (n for n in seeds if n > 1):
        for k in ks:
            for rule in merges:
                info = {"method": f"ensemble ({rule})", "n_seeds": n, "k": k}
                yield f"ensemble_{rule}_N{n}_K{k}", info, n, [SeedMerge(n, k, rule)], 1.0
    for n in (n for n in seeds if n > 1):
        for k in ks:
            info = {"method": "control: noise x 1/sqrt(N)", "n_seeds": n, "k": k}
            yield f"control_shrunk_N{n}_K{k}", info, 1, [ShrunkNoise(n**-0.5, k)], n**-0.5
    for t in temperatures:
        yield f"control_temperature_{t:g}", {"method": "control: temperature", "scale": t}, 1, [], t


def _write_rows(rows: list[dict], cfg, out):
    """ensemble.json (config + rows) and ensemble.csv in ``out``; the table."""
    from pathlib import Path

    import pandas as pd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ensemble.json").write_text(json.dumps({"config": json.loads(cfg.to_json()), "rows": rows}, indent=2))
    table = pd.DataFrame(rows)
    table.to_csv(out / "ensemble.csv", index=False)
    return out, table


def run_ensemble(cfg: EnsembleConfig, adapter=None, progress: bool = True) -> list[dict]:
    """Accuracy rows: single seed, best-of-N oracle, ensembles (N, K, rule), shrunk-noise and
    temperature controls, per maze size. The seeds of one maze: maze seed + 1,000,003 * i."""
    from interp.trace_job import load_adapter

    adapter = adapter or load_adapter(cfg.model)
    num_steps = cfg.num_steps or adapter.defaults.num_steps
    _check_sweep(cfg.seeds, cfg.ks, cfg.merges, num_steps)
    rows: list[dict] = []
    n_max = max(cfg.seeds)
    for size in cfg.sizes:
        mazes = [maze_task.generate_maze(size, cfg.first_seed + i) for i in range(cfg.n)]
        shape = adapter.latent_shape(size, cfg.frames)
        cond = adapter.conditioning(mazes, cfg.frames)
        noise_seeds = [[m.seed + 1_000_003 * i for i in range(n_max)] for m in mazes]
        noises = torch.stack([initial_noise(s, shape) for s in noise_seeds])  # (mazes, N, ...)

        def run(n_seeds: int, hooks=(), scale: float = 1.0, noises=noises, cond=cond) -> torch.Tensor:
            return _sample_groups(adapter, noises, cond, n_seeds, num_steps, hooks, scale)

        independent = run(n_max)
        solved_each = np.stack([_solved(adapter, independent[:, i], mazes) for i in range(n_max)], 1)
        rows.append(_row("single seed", size, solved_each[:, 0], n_seeds=1))
        for n_seeds in cfg.seeds:
            if n_seeds > 1:
                rows.append(_row("best of N (oracle)", size, solved_each[:, :n_seeds].any(1), n_seeds=n_seeds))
        variants = list(_variants(cfg.seeds, cfg.ks, cfg.merges, cfg.temperatures))
        for _, info, n_seeds, hooks, scale in tqdm(
            variants, disable=not progress, desc=f"ensembles {size}x{size}", leave=False
        ):
            final = run(n_seeds, hooks, scale)
            extra = {key: value for key, value in info.items() if key != "method"}
            rows.append(_row(info["method"], size, _solved(adapter, final[:, 0], mazes), **extra))
    return rows


def write_ensemble_report(rows: list[dict], cfg: EnsembleConfig, out) -> dict:
    """ensemble.json (config + rows), ensemble.csv, and a printable table."""
    out, _ = _write_rows(rows, cfg, out)
    lines = [f"{'size':>4} {'method':<30} {'N':>3} {'K':>3} {'scale':>6} {'accuracy':>9}  95% CI"]
    for r in rows:
        n_seeds, k, scale = r.get("n_seeds", ""), r.get("k", ""), r.get("scale", "")
        scale = f"{scale:.2f}" if scale != "" else ""
        lines.append(
            f"{r['size']:>4} {r['method']:<30} {n_seeds!s:>3} {k!s:>3} {scale:>6} {r['accuracy']:>9.3f}"
            f"  {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}"
        )
    text = "\n".join(lines)
    (out / "ensemble.txt").write_text(text + "\n")
    _plot_rows(rows, out / "ensemble.png")
    return {"json": out / "ensemble.json", "csv": out / "ensemble.csv", "figure": out / "ensemble.png", "text": text}


def _label(r: dict) -> str:
    parts = [r["method"]]
    if r.get("n_seeds", 1) > 1:
        parts.append(f"N={r['n_seeds']}")
    if "k" in r:
        parts.append(f"K={r['k']}")
    if "scale" in r:
        parts.append(f"x{r['scale']:.2f}")
    return ", ".join(parts)


def _plot_rows(rows: list[dict], path) -> None:
    """Accuracy with 95% intervals, one panel per maze size; the single seed as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    height = max(2.5, 0.32 * max(sum(r["size"] == s for r in rows) for s in sizes) + 1)
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), height), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        sel = [r for r in rows if r["size"] == size]
        ys = np.arange(len(sel))[::-1]
        acc = np.array([r["accuracy"] for r in sel])
        err = np.abs(np.array([r["ci95"] for r in sel]).T - acc)
        colours = ["C3" if r["method"].startswith("control") else "C0" for r in sel]
        ax.errorbar(acc, ys, xerr=err, fmt="none", ecolor="grey")
        ax.scatter(acc, ys, c=colours, zorder=3)
        single = next((r["accuracy"] for r in sel if r["method"] == "single seed"), None)
        if single is not None:
            ax.axvline(single, color="grey", ls="--", lw=1)
        ax.set_yticks(ys, [_label(r) for r in sel], fontsize=8)
        ax.set(xlim=(-0.02, 1.02), xlabel="share solved (95% CI)", title=f"{size}x{size} mazes (red: controls)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- a user's model: no verifier, so the outputs and their statistics -------------------------------
@dataclass
class PipelineEnsembleConfig:
    """The ensemble on a local diffusers pipeline over VBVR-style samples (``PipelineInputs`` fields in
    ``pipeline``). With no verifier, every variant's video is written for the user's own scorer, with
    statistics that need none: similarity to seed 0's output and the final latent's spread against a
    single seed's (a merged latent that is too smooth shows a ratio below 1)."""

    experiment = "ensemble"
    pipeline: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [3])  # ensemble sizes N
    ks: list[int] = field(default_factory=lambda: [1])
    merges: list[str] = field(default_factory=lambda: ["mean", "rescaled", "x0"])
    temperatures: list[float] = field(default_factory=lambda: [0.577])
    first_seed: int = 0  # seeds of every sample: first_seed + i

    def to_json(self) -> str:
        return json.dumps({"experiment": self.experiment, **asdict(self)}, indent=2, sort_keys=True)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-12))


def run_pipeline_ensemble(cfg: PipelineEnsembleConfig, out, progress: bool = True) -> list[dict]:
    """Per sample: N independent seeds, each ensemble (N, K, rule), the shrunk-noise and temperature
    controls; final latents in ``finals.safetensors`` and decoded GIFs under ``videos/``."""
    from pathlib import Path

    from PIL import Image
    from safetensors.torch import save_file

    from interp.causal.experiments import PipelineInputs, load_pipeline_inputs
    from interp.causal.patching import repeat_conditioning
    from interp.report.filmstrip import save_gif

    p = PipelineInputs(**cfg.pipeline)
    _check_sweep(cfg.seeds, cfg.ks, cfg.merges, p.num_steps)
    adapter, samples = load_pipeline_inputs(p)
    if getattr(adapter, "x0_hat", None) is not None and set(cfg.merges) - {"mean"}:
        raise ValueError(f"{adapter.name} is not a flow-matching model: only the 'mean' merge applies")
    shape = adapter.pipeline_latent_shape(p.height, p.width, p.num_frames)
    device = adapter.transformer.device
    n_max = max(cfg.seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    finals: dict[str, torch.Tensor] = {}
    for item in tqdm(samples, disable=not progress, desc="ensembles per sample"):
        noise = initial_noise([cfg.first_seed + i for i in range(n_max)], shape, device, torch.float32)
        image = Image.open(item.first_frame).convert("RGB") if item.first_frame else None
        with torch.no_grad():
            one = adapter.pipeline_conditioning(
                [item.prompt], [image], noise[:1], p.negative_prompt, p.height, p.width, p.num_frames,
                p.max_sequence_length,
            )  # fmt: skip

        def run(n_seeds: int, hooks=(), scale: float = 1.0, noise=noise, one=one) -> torch.Tensor:
            with torch.no_grad():
                result = sample(
                    adapter, noise[:n_seeds] * scale, repeat_conditioning(one, 0, n_seeds), p.num_steps,
                    hooks=list(hooks), scheduler=adapter.make_scheduler(None),
                )  # fmt: skip
            return result.latents

        variants: dict[str, tuple[torch.Tensor, dict]] = {}
        independent = run(n_max)
        for i in range(n_max):
            variants[f"seed{i}"] = (independent[i], {"method": "single seed", "seed": cfg.first_seed + i})
        for name, info, n_seeds, hooks, scale in _variants(cfg.seeds, cfg.ks, cfg.merges, cfg.temperatures):
            variants[name] = (run(n_seeds, hooks, scale)[0], info)
        reference = independent[0]
        spread = float(reference.float().std())
        folder = out / "videos" / item.name
        for name, (final, info) in variants.items():
            rows.append(
                {
                    "sample": item.name,
                    "variant": name,
                    **info,
                    "similarity_to_seed0": _cosine(final, reference),
                    "latent_std_ratio": float(final.float().std()) / spread if spread > 0 else float("nan"),
                }
            )
            finals[f"{item.name}/{name}"] = final.detach().float().cpu().contiguous()
            if getattr(adapter, "vae", None) is not None:
                with torch.no_grad():
                    save_gif(adapter.decode(final[None].to(device))[0], folder / f"{name}.gif", scale=1)
    save_file(finals, str(out / "finals.safetensors"))
    return rows


def write_pipeline_ensemble_report(rows: list[dict], cfg: PipelineEnsembleConfig, out) -> dict:
    """ensemble.json (config + rows) and ensemble.csv beside the videos and final latents."""
    out, table = _write_rows(rows, cfg, out)
    text = table[["sample", "variant", "similarity_to_seed0", "latent_std_ratio"]].to_string(index=False)
    return {"json": out / "ensemble.json", "csv": out / "ensemble.csv", "text": text}
