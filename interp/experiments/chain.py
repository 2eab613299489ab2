"""Chain-of-Steps statistics of a store's x0_hat: commit step, exploration, self-correction,
perception vs action (maze stores traced with every step)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from activations.reader import ActivationStore
from interp.analysis.chain_of_steps import Chain, ChainConfig, analyse_store, write_chain_report
from interp.experiments.base import Experiment, ExperimentConfig, Manifest, Table, register


@dataclass
class ChainRunConfig(ExperimentConfig):
    experiment = "chain"
    store: str = ""
    min_branches: int = 2
    superposition_share: float = 0.8
    superposition_extra: int = 2
    formed_share: float = 0.5

    def thresholds(self) -> ChainConfig:
        return ChainConfig(self.min_branches, self.superposition_share, self.superposition_extra, self.formed_share)


def run_chain(cfg: ChainRunConfig, progress: bool = True) -> list[Chain]:
    if not Path(cfg.store).is_file():
        raise ValueError(f"no activation store at {cfg.store}")
    with ActivationStore(cfg.store) as store:
        return analyse_store(store, cfg.thresholds())


def save_chain(chains: list[Chain], cfg: ChainRunConfig, out) -> Manifest:
    report = write_chain_report(chains, cfg.thresholds(), out)
    s = report["summary"]
    solved = s["solved_per_step"]
    manifest = Manifest("chain", "chain of steps", "chain", cfg.to_dict())
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
    manifest.notes.append(f"thresholds: {asdict(cfg.thresholds())}")
    manifest.write(out)
    return manifest


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


EXPERIMENT = register(Experiment("chain", ChainRunConfig, run_chain, save_chain, demo=demo, demo_order=50, cli=False))
