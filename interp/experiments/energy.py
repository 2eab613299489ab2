"""Token energy (layers x frames heatmap, per-token maps) and PCA colour maps of one video at one step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from activations.reader import ActivationStore
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest

CAPTIONS = {
    "energy_layers_frames.png": "mean token energy, layers x frames",
    "energy_maps.png": "per-token L2 norm, layers x frames",
    "pca_maps.png": "first three principal components of the tokens as colours",
}


@dataclass
class EnergyConfig(ExperimentConfig):
    experiment = "energy"
    store: str = ""
    video: int = 0
    step: int = 0
    scale_steps: list[int] | None = None  # steps sharing each layer's colour scale (None: this step's own)

    cli_arguments = ("store",)
    cli_help = {
        "store": "An activation store (.h5).",
        "video": "Video index in the store.",
        "step": "Denoising step (must be stored).",
        "scale_steps": "Stored steps whose maps share each layer's colour scale; repeat.",
    }
    cli_flags = {"scale_steps": ("--scale-step",)}


def check(cfg: EnergyConfig, store: ActivationStore) -> None:
    if cfg.step not in store.steps:
        raise ValueError(f"step {cfg.step} is not stored; stored steps: {store.steps}")
    if cfg.video not in store.completed_videos:
        raise ValueError(f"video {cfg.video} is not a complete video of the store (0-{store.n_videos - 1})")


def run_energy(cfg: EnergyConfig, out, progress: bool = True) -> list[Path]:
    """The figures and the heatmap's numbers (.npy) in ``out``."""
    from interp.report.energy_plots import write_energy_figures

    if not Path(cfg.store).is_file():
        raise ValueError(f"no activation store at {cfg.store}")
    with ActivationStore(cfg.store) as store:
        check(cfg, store)
        missing = [s for s in cfg.scale_steps or [] if s not in store.steps]
        if missing:
            raise ValueError(f"scale step {missing[0]} is not stored; stored steps: {store.steps}")
        return write_energy_figures(store, cfg.video, cfg.step, out, cfg.scale_steps)


def save_energy(paths: list[Path], cfg: EnergyConfig, out) -> Manifest:
    manifest = Manifest("energy", f"token energy, video {cfg.video}, step {cfg.step}", "energy", cfg.to_dict())
    for path in paths:
        manifest.add(path, "figure" if path.suffix == ".png" else "data", CAPTIONS.get(path.name, path.name))
    shared = ", ".join(map(str, sorted({*(cfg.scale_steps or []), cfg.step})))
    scale = (f"each layer's colour scale is shared by steps {shared}, so the figures of those steps compare"
             if "," in shared else "each layer on its own colour scale at this step")  # fmt: skip
    manifest.notes.append(f"Per-token residual norm and PCA maps, one video; {scale}; maze walls drawn in cyan "
                          "where the store holds one token per cell. Frames are latent frames.")  # fmt: skip
    manifest.write(out)
    return manifest


def demo(ctx) -> None:
    """The study: energy maps of video 0 at the first, middle and last stored step."""
    with ActivationStore(ctx.store) as store:
        steps = store.steps
    shown = [steps[0], steps[len(steps) // 2], steps[-1]]
    for step in shown:
        cfg = EnergyConfig(store=str(ctx.store), video=0, step=step, scale_steps=shown)
        out = ctx.out / f"energy_step{step:02d}"
        save_energy(run_energy(cfg, out), cfg, out)


def plan_energy(cfg: EnergyConfig, out: Path):
    """Every site of one video at the step (and the steps sharing its colour scale), from the layout alone."""
    from interp.plans import FIGURES, FLOAT32, Plan
    from interp.reader_plans import store_layout

    layout, _ = store_layout(Path(cfg.store))
    steps = len({cfg.step, *(cfg.scale_steps or [])})  # steps sharing the colour scale are read too
    read = sum(layout.n_tokens * layout.hidden[s] for s in layout.sites) * FLOAT32 * steps  # every site, one video
    return Plan("energy", out, 1, layout.num_steps, steps, len(layout.sites), FIGURES, 3 * read,
                [f"video {cfg.video} at step {cfg.step}"], read, Path(cfg.store))  # fmt: skip


EXPERIMENT = register(
    Experiment("energy", EnergyConfig, run_energy, save_energy, run_writes=True, demo=demo, demo_order=31,
               plan=plan_energy)
)
