"""Chain-of-Steps statistics of a store's x0_hat.

Any store: the verifier-free measures (``interp.analysis.convergence``: distance of x0_hat to the
final sample per step and frame, commit step per frame, spread across seeds, and with ``scorer`` a
score per step of the decoded x0_hat). Maze stores traced with every step, beside them: the
verifier's reading (commit step, exploration, self-correction, perception vs action)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from activations.reader import ActivationStore
from interp.analysis.chain_of_steps import Chain, ChainConfig, analyse_store, write_chain_report
from interp.analysis.claims import behaviour_share
from interp.analysis.convergence import analyse_convergence, load_scorer
from interp.experiments.base import Experiment, ExperimentConfig, register
from interp.manifest import Manifest, Table


@dataclass
class ChainRunConfig(ExperimentConfig, ChainConfig):  # the detector thresholds are its fields
    experiment = "chain"
    store: str = ""
    threshold: float = 0.1  # a frame has committed once x0_hat stays this close to the final (relative L2)
    scorer: str | None = None  # module:function of decoded frames -> number (needs ``model`` to decode)
    scorer_timeout: float | None = None  # seconds one scorer call may take (None: no limit)
    model: str | None = None  # what decodes x0_hat for the scorer: a testbed name or a pipeline folder
    device: str = "cpu"
    torch_dtype: str | None = None

    cli_arguments = ("store",)
    cli_help = {
        "store": "An activation store traced with --steps all (maze task).",
        "min_branches": "Multi-path: lit side branches at some step.",
        "superposition_share": "Superposition: share of the solution lit...",
        "superposition_extra": "...while at least this many off-path cells are lit.",
        "formed_share": "An answer is formed when this share of the path length is lit.",
        "threshold": "Any model: a frame commits once x0_hat stays this close to the end.",
        "scorer": "module:function of decoded frames (T, H, W, 3) -> a number.",
        "scorer_timeout": "Seconds one scorer call may take (default: no limit).",
        "model": "With --scorer: the store's model, to decode x0_hat.",
        "device": "With --scorer: torch device of the decoder.",
        "torch_dtype": "With --scorer: float32 (default on CPU), bfloat16.",
    }

    def __post_init__(self):
        super().__post_init__()  # interp.validation: types and ranges
        from interp.sources import default_dtype

        self.torch_dtype = default_dtype(self.device, self.torch_dtype)


@dataclass
class ChainResult:
    maze: list[Chain] | None  # the verifier's reading (maze stores only)
    convergence: dict


def _is_maze_store(store) -> bool:
    return all(store.meta(v).get("task") == "maze" for v in store.completed_videos)


def run_chain(cfg: ChainRunConfig, progress: bool = True) -> ChainResult:
    if not Path(cfg.store).is_file():
        raise ValueError(f"no activation store at {cfg.store}")
    scorer = decode = None
    if cfg.scorer is not None:
        if cfg.model is None:
            raise ValueError("a scorer reads decoded frames: give --model (the store's model) to decode x0_hat")
        import torch

        from interp.models.loading import load_model

        scorer = load_scorer(cfg.scorer, cfg.scorer_timeout)
        adapter = load_model(cfg.model, torch_dtype=cfg.torch_dtype, device=cfg.device)
        dtype = next(adapter.transformer.parameters()).dtype

        def decode(latents):
            with torch.no_grad():
                return adapter.decode(torch.as_tensor(latents, dtype=dtype, device=adapter.device))

    with ActivationStore(cfg.store) as store:
        maze = analyse_store(store, cfg.thresholds()) if _is_maze_store(store) else None
        return ChainResult(maze, analyse_convergence(store, cfg.threshold, scorer, decode, progress))


def save_chain(result: ChainResult, cfg: ChainRunConfig, out) -> Manifest:
    manifest = Manifest("chain", "chain of steps", "chain", cfg.to_dict())
    _save_convergence(result.convergence, cfg, out, manifest)
    if result.maze is not None:
        _save_maze(result.maze, cfg, out, manifest)
    manifest.write(out)
    return manifest


def _save_convergence(record: dict, cfg: ChainRunConfig, out, manifest: Manifest) -> None:
    import json

    from interp.report.chain_figures import convergence_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "convergence.json").write_text(json.dumps({"config": cfg.to_dict(), **record}, indent=2))
    s = record["summary"]
    figure = convergence_figure(s, out / "convergence.png")
    manifest.add(figure, "figure", "verifier-free: x0_hat's distance to the final sample, commit step per frame, "
                 "spread across seeds")  # fmt: skip
    manifest.add(out / "convergence.json", "data", "per video and step: distances, commit steps, scores")
    commits = ", ".join("never" if c is None else f"{c:.0f}" for c in s["commit_step_per_frame_median"])
    spread = s["seed_spread_per_step"]
    mid = len(s["steps"]) // 2
    line = (
        f"{s['n']} videos: x0_hat is {s['distance_per_step'][0]:.2f} (relative L2) from the final sample at step "
        f"{s['steps'][0]}, {s['distance_per_step'][mid]:.2f} at step {s['steps'][mid]}; median commit step per "
        f"frame (< {s['threshold']}): {commits}"
    )
    if spread:
        line += f"; spread across seeds {spread[0]:.2f} at the first stored step, {spread[-1]:.2f} at the last"
    manifest.headline.append(line)
    if "score_per_step" in s:
        manifest.headline.append(
            f"score ({cfg.scorer}) per stored step: "
            + ", ".join(f"{v:.3f}" for v in s["score_per_step"][:-1])
            + f"; final sample {s['score_per_step'][-1]:.3f}"
        )


def _save_maze(chains: list[Chain], cfg: ChainRunConfig, out, manifest: Manifest) -> None:
    report = write_chain_report(chains, cfg.thresholds(), out)
    s = report["summary"]
    solved = s["solved_per_step"]
    manifest.add(report["figure"], "figure", "verifier on x0_hat per step, lit side branches, perception vs commit")
    manifest.add(report["json"], "data", "config, summary and every video's trajectory")
    rows = [
        {"statistic": "videos", "value": s["n"]},
        {"statistic": "x0_hat solved at step 0", "value": f"{solved[0]:.1%}"},
        {"statistic": f"x0_hat solved at step {len(solved) // 2}", "value": f"{solved[len(solved) // 2]:.1%}"},
        {"statistic": "final video solved", "value": f"{s['final_solved']:.1%}"},
        {"statistic": "commit step (median, min-max)",
         "value": f"{s['commit_step']['median']:.0f} ({s['commit_step']['min']}-{s['commit_step']['max']})"},
        {"statistic": "perception step (median)", "value": f"{s['perception_step']['median']:.0f}"},
    ]  # fmt: skip
    rows += [{"statistic": f"share: {k}", "value": f"{v:.1%}"} for k, v in s["behaviour_share"].items()]
    manifest.tables.append(Table("statistics", ["statistic", "value"], rows))
    shares = ", ".join(f"{k} {v:.2f}" for k, v in s["behaviour_share"].items())
    manifest.headline.append(
        f"{s['n']} videos: answer commits at step {s['commit_step']['median']:.0f} (median), "
        f"perception at {s['perception_step']['median']:.0f}; shares: {shares}"
    )
    manifest.notes.append(f"maze thresholds: {asdict(cfg.thresholds())}")
    shares = s["behaviour_share"]
    for name, label in (("multi-path exploration then convergence (two or more lit branches that later prune)",
                         "explore_then_prune"),
                        ("self-correction (a formed wrong answer repaired later)", "self_correction"),
                        ("perception before action (walls, start, goal right before the path commits)",
                         "perception_before_action")):  # fmt: skip
        manifest.claims.append(behaviour_share(name, label, shares, s["n"]))


def demo(ctx) -> None:
    import json

    ctx.stage("Chain-of-Steps statistics of x0_hat")
    cfg = ChainRunConfig(store=str(ctx.store))
    save_chain(run_chain(cfg), cfg, ctx.out / "chain")
    summary = json.loads((ctx.out / "chain" / "chain.json").read_text())["summary"]
    per_step = summary["solved_per_step"]
    ctx.headline.append(
        f"chain of steps: x0_hat solves {per_step[0]:.0%} at step 0, {per_step[len(per_step) // 2]:.0%} at "
        f"mid-trajectory; median commit step {summary['commit_step']['median']:.0f}"
    )


def plan_chain(cfg: ChainRunConfig, out: Path):
    """x0_hat of every stored step of every complete video, read one video at a time, and the scorer's decoder."""
    import math

    from interp.plans import FIGURES, FLOAT32, Plan
    from interp.reader_plans import decoder_bytes, store_layout

    if not Path(cfg.store).is_file():
        raise ValueError(f"no activation store at {cfg.store}")
    layout, done = store_layout(Path(cfg.store))
    per_video = len(layout.steps) * math.prod(layout.latent_shape) * FLOAT32
    decoder = decoder_bytes(cfg.model if cfg.scorer else None, cfg.device, cfg.torch_dtype)
    # read one video at a time, as float64 (one sample's seeds together: not known from the layout)
    return Plan("chain", out, len(done), layout.num_steps, len(layout.steps), None, FIGURES,
                decoder + 2 * 2 * per_video, ["x0_hat of every stored step of every complete video, one at a time"],
                per_video * len(done), Path(cfg.store))  # fmt: skip


EXPERIMENT = register(Experiment("chain", ChainRunConfig, run_chain, save_chain, demo=demo, demo_order=50,
                                 plan=plan_chain))  # fmt: skip
