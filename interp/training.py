"""Flow-matching training of the testbed on procedurally generated mazes, resumable.

Data are a pure function of (seed, step): batch ``k`` holds the training mazes with seeds
TRAIN_SEED_START + seed * 10**9 + k * batch_size + j, and its noise comes from a generator seeded
with (seed, k). A run killed at any point resumes from its last checkpoint and sees the same data.

Mixed sizes (``TrainConfig.sizes``): every batch is one maze size, drawn from ``size_weights`` by a
generator seeded with (seed, step), so a resumed run sees the same sizes too. Validation then
reports, per size, the final sample's accuracy and that of x0_hat decoded at step 0 (the model's
one-pass answer), for the EMA and, with ``eval_raw``, the raw weights.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from interp.evaluation import evaluate_mazes, verify_latents
from interp.execution.loop import initial_noise, sample
from interp.models import testbed
from interp.tasks import maze as maze_task
from interp.tasks.splits import IN_DISTRIBUTION, TRAIN_SEED_START, validation_seeds
from interp.validation import MAX_SIZE, each, int_range


@dataclass
class TrainConfig:
    field_rules = {"steps": int_range(1, 10**8), "sizes": each(int_range(2, MAX_SIZE))}  # optimiser steps

    seed: int = 0
    size: int = IN_DISTRIBUTION["size"]
    frames: int = IN_DISTRIBUTION["frames"]
    steps: int = 5000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: int = 300
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    eval_every: int = 500
    eval_mazes: int = 128
    sample_steps: int = 20
    model: dict = field(default_factory=dict)  # overrides of testbed.DEFAULT_CONFIG
    # Mixed maze sizes (empty: every batch is ``size``, the single-size behaviour). Fields below
    # are left out of state.json / training.json while at their defaults, so single-size records
    # stay as they were.
    sizes: list[int] = field(default_factory=list)
    size_weights: list[float] = field(default_factory=list)  # per entry of ``sizes``; empty = uniform
    eval_raw: bool = False  # also validate the raw weights (mixed sizes only)

    def __post_init__(self):
        from interp.validation import check

        check(self)


_MIXED_FIELDS = ("sizes", "size_weights", "eval_raw")


def config_dict(cfg: TrainConfig) -> dict:
    """``asdict(cfg)`` without the mixed-size fields that are at their defaults."""
    out, default = asdict(cfg), asdict(TrainConfig())
    for key in _MIXED_FIELDS:
        if out[key] == default[key]:
            del out[key]
    return out


def train_sizes(cfg: TrainConfig | dict) -> list[int]:
    """The maze sizes a config trains on (in distribution), smallest first."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    return sorted(get("sizes", None) or [get("size")])


def size_at(cfg: TrainConfig, step: int) -> int:
    """Maze size of training batch ``step``: ``cfg.size``, or a draw from ``sizes`` seeded by (seed, step)."""
    if not cfg.sizes:
        return cfg.size
    weights = np.asarray(cfg.size_weights or [1.0] * len(cfg.sizes), dtype=np.float64)
    rng = np.random.default_rng([int(cfg.seed), int(step), 0x73697A65])
    return int(cfg.sizes[int(rng.choice(len(cfg.sizes), p=weights / weights.sum()))])


def _check_config(cfg: TrainConfig) -> None:
    if cfg.sizes and cfg.size_weights and len(cfg.size_weights) != len(cfg.sizes):
        raise ValueError(f"size_weights ({len(cfg.size_weights)}) must match sizes ({len(cfg.sizes)})")
    if any(w < 0 for w in cfg.size_weights) or (cfg.size_weights and sum(cfg.size_weights) <= 0):
        raise ValueError(f"size_weights must be non-negative with a positive sum, got {cfg.size_weights}")
    for size in train_sizes(cfg):
        maze_task._check_size_frames(size, cfg.frames)
    rope = {**testbed.DEFAULT_CONFIG, **cfg.model}["rope_max_seq_len"]
    longest = max(max(train_sizes(cfg)), cfg.frames)
    if longest > rope:
        raise ValueError(f"rope_max_seq_len {rope} does not cover a grid axis of {longest} tokens")


# testbed-mixed: the shipped architecture (8 blocks, width 128: 2.27M parameters, 9.1 MB) on
# 4x4-6x6 mazes, larger ones drawn more often (1:2:3), 4 frames, batch 32 x 16000 steps (512k
# videos). Pilots and reasons: docs/testbed_mixed_training.md.
MIXED_PRESET: dict = {
    "sizes": [4, 5, 6],
    "size_weights": [1.0, 2.0, 3.0],
    "frames": 4,
    "batch_size": 32,
    "steps": 16000,
    "warmup": 300,
    "checkpoint_every": 250,
    "eval_every": 1000,
    "eval_mazes": 128,
    "eval_raw": True,
    "sample_steps": 20,
    "model": {},
}


def mixed_config(**overrides) -> TrainConfig:
    """The preset of ``testbed-mixed``: 4x4 to 6x6 mazes in one model (see docs/testbed_mixed_training.md)."""
    fields = dict(MIXED_PRESET)
    fields.update(overrides)
    return TrainConfig(**fields)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def training_batch(cfg: TrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean latents, conditioning) of training batch ``step``; seeds never overlap held-out ones."""
    base = TRAIN_SEED_START + cfg.seed * 10**9 + step * cfg.batch_size
    size = size_at(cfg, step)
    mazes = [maze_task.generate_maze(size, base + j) for j in range(cfg.batch_size)]
    x0 = np.stack([maze_task.encode(m, cfg.frames) for m in mazes])
    cond = np.stack([maze_task.condition(m, cfg.frames) for m in mazes])
    return torch.from_numpy(x0), torch.from_numpy(cond)


def flow_matching_loss(
    adapter: testbed.TestbedAdapter, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """MSE between predicted and true velocity v = noise - x0 at x_s = (1 - s) x0 + s noise."""
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    sigma = torch.rand(x0.shape[0], generator=generator).to(x0.device)
    s = sigma.view(-1, 1, 1, 1, 1)
    x_s = (1 - s) * x0 + s * noise
    v = adapter.predict(x_s, sigma * 1000, cond)
    return torch.nn.functional.mse_loss(v.float(), (noise - x0).float())


def _save_checkpoint(folder: Path, cfg: TrainConfig, step: int, model, ema: dict, optimizer) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    save_file({k: v.contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": config_dict(cfg)}, indent=2))
    # Swap in atomically-enough: the old checkpoint stays until the new one is complete.
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(folder: Path, model, optimizer, device) -> tuple[int, dict]:
    model.load_state_dict(load_file(folder / "model.safetensors", device=str(device)))
    ema = load_file(folder / "ema.safetensors", device=str(device))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location=device))
    return json.loads((folder / "state.json").read_text())["step"], ema


def evaluate_size(
    adapter: testbed.TestbedAdapter, seeds: list[int], size: int, frames: int, num_steps: int, batch_size: int = 64
) -> dict:
    """Final-sample accuracy on ``size`` x ``size`` mazes and that of x0_hat decoded at step 0.

    Same mazes, noise (seed = maze seed) and sampler as ``evaluate_mazes``; the step-0 x0_hat
    (x_T - v at sigma 1: the model's one-pass answer) is read as the chain-of-steps analysis reads
    it: decoded by the renderer and judged by the verifier.
    """
    mazes = [maze_task.generate_maze(size, s) for s in seeds]
    shape = adapter.latent_shape(size, frames)
    final, first = [], []
    for i in range(0, len(mazes), batch_size):
        chunk = mazes[i : i + batch_size]
        noise = initial_noise([m.seed for m in chunk], shape, adapter.device, adapter.dtype)
        seen = {}

        def keep_step0(state, seen=seen):
            if state.step == 0:
                seen["x0"] = state.x0_hat.detach().clone()

        with torch.no_grad():
            out = sample(
                adapter,
                noise,
                adapter.conditioning(chunk, frames),
                num_steps=num_steps,
                shift=adapter.defaults.shift,
                hooks=[keep_step0],
            )
        final.extend(verify_latents(adapter, out.latents, chunk))
        first.extend(verify_latents(adapter, seen["x0"], chunk))
    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    return {
        "n": len(mazes),
        "accuracy": mean([v.solved for v in final]),
        "final_exact": mean([v.final_exact for v in final]),
        "x0_step0": mean([v.solved for v in first]),
        "x0_step0_final_exact": mean([v.final_exact for v in first]),
    }


def validate_sizes(adapter: testbed.TestbedAdapter, cfg: TrainConfig | dict, n: int, num_steps: int) -> dict:
    """``evaluate_size`` on ``n`` validation mazes of every training size: {"4": {...}, ...}."""
    frames = cfg["frames"] if isinstance(cfg, dict) else cfg.frames
    return {
        str(size): evaluate_size(adapter, validation_seeds(n), size, frames, num_steps) for size in train_sizes(cfg)
    }


def mean_accuracy(per_size: dict) -> float:
    return float(np.mean([v["accuracy"] for v in per_size.values()]))


def pick_weights(validation: dict) -> str:
    """The better of "ema" and "raw": the higher mean accuracy over sizes (ties go to the EMA)."""
    return max(validation, key=lambda k: (mean_accuracy(validation[k]), k == "ema"))


WEIGHT_CHOICES = ("ema", "raw", "best")


def checkpoint_model(checkpoint: str | Path, which: str) -> torch.nn.Module:
    """The EMA ("ema") or optimised ("raw") weights of a checkpoint as a testbed transformer."""
    checkpoint = Path(checkpoint)
    state = json.loads((checkpoint / "state.json").read_text())
    model = testbed.build_transformer(state["config"]["model"])
    model.load_state_dict(load_file(checkpoint / ("ema.safetensors" if which == "ema" else "model.safetensors")))
    return model.eval()


def export_weights(
    checkpoint: str | Path,
    out_dir: str | Path,
    sampling: testbed.SamplingDefaults,
    which: str = "ema",
    validation_mazes: int = 256,
    validation: dict | None = None,
) -> Path:
    """Write a checkpoint's weights as a diffusers model folder (config + safetensors).

    ``which="best"`` samples ``validation_mazes`` validation mazes (seeds disjoint from test and
    training) with both the EMA and the raw weights and keeps the more accurate; the scores go
    into training.json beside the weights. A mixed-size checkpoint is validated on every size
    (``validate_sizes``, ``validation_mazes`` per size) and scored by the mean accuracy; pass
    ``validation`` ({"ema": per_size, "raw": per_size}, e.g. from the training log) to reuse
    scores already measured instead of sampling again.
    """
    if which not in WEIGHT_CHOICES:
        raise ValueError(f"which must be one of {WEIGHT_CHOICES}, got {which!r}")
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    state = json.loads((checkpoint / "state.json").read_text())
    scores = {}
    cfg = state["config"]
    mixed = bool(cfg.get("sizes"))
    if mixed and which == "best" and validation is None:
        validation = {}
        for candidate in ("ema", "raw"):
            adapter = testbed.TestbedAdapter(checkpoint_model(checkpoint, candidate), sampling)
            validation[candidate] = validate_sizes(adapter, cfg, validation_mazes, sampling.num_steps)
    if mixed and which == "best":
        scores = {k: mean_accuracy(v) for k, v in validation.items()}
        which = pick_weights(validation)
    elif which == "best":
        for candidate in ("ema", "raw"):
            adapter = testbed.TestbedAdapter(checkpoint_model(checkpoint, candidate), sampling)
            ev = evaluate_mazes(adapter, validation_seeds(validation_mazes), cfg["size"], cfg["frames"])
            scores[candidate] = ev.accuracy
        which = max(scores, key=lambda k: (scores[k], k == "ema"))
    checkpoint_model(checkpoint, which).save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "sampling.json").write_text(json.dumps(asdict(sampling), indent=2))
    record = {**state, "exported": which, "validation_accuracy": scores, "validation_mazes": validation_mazes}
    if validation is not None:
        record["validation"] = validation
    (out_dir / "training.json").write_text(json.dumps(record, indent=2))
    return out_dir


def _validate_mixed(cfg: TrainConfig, model, ema_adapter: testbed.TestbedAdapter) -> dict:
    """Log fields of a mixed-size validation: per size and weights, final and step-0 x0_hat accuracy."""
    tic = time.time()
    val = {"ema": validate_sizes(ema_adapter, cfg, cfg.eval_mazes, cfg.sample_steps)}
    if cfg.eval_raw:
        model.eval()
        raw = testbed.TestbedAdapter(model, ema_adapter.defaults)
        val["raw"] = validate_sizes(raw, cfg, cfg.eval_mazes, cfg.sample_steps)
    return {"val_accuracy": mean_accuracy(val["ema"]), "val": val, "val_seconds": time.time() - tic}


def train_testbed(
    cfg: TrainConfig,
    checkpoint_dir: str | Path,
    device: str = "cpu",
    log=print,
    max_new_steps: int | None = None,
    progress: bool = False,
) -> testbed.TestbedAdapter:
    """Train (or resume) the testbed; returns an adapter around the EMA weights.

    ``max_new_steps`` stops after that many steps of this call (with a checkpoint), so long
    trainings can run in chunks; rerunning continues exactly where the last call stopped.
    """
    checkpoint_dir = Path(checkpoint_dir)
    _check_config(cfg)
    torch.manual_seed(cfg.seed)
    model = testbed.build_transformer(cfg.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if (checkpoint_dir / "state.json").is_file():
        start, ema = _load_checkpoint(checkpoint_dir, model, optimizer, device)
        log(f"resumed from {checkpoint_dir} at step {start}")
    adapter = testbed.TestbedAdapter(model)
    ema_model = testbed.build_transformer(cfg.model).to(device).eval()
    ema_adapter = testbed.TestbedAdapter(ema_model, testbed.SamplingDefaults(num_steps=cfg.sample_steps))
    log_file = checkpoint_dir.with_name(checkpoint_dir.name + ".log.jsonl")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tic, seen, recent = time.time(), 0, []
    end = cfg.steps if max_new_steps is None else min(cfg.steps, start + max_new_steps)
    bar = tqdm(total=cfg.steps, initial=start, desc="training", disable=not progress)
    for step in range(start, end):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(cfg, step)
        x0, cond = training_batch(cfg, step)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        loss = flow_matching_loss(adapter, x0.to(device), cond.to(device), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            params = model.state_dict()
            for k, v in ema.items():
                if v.is_floating_point():
                    v.lerp_(params[k], 1 - cfg.ema_decay)
                else:
                    v.copy_(params[k])
        seen += cfg.batch_size
        if cfg.sizes:
            recent.append(loss.item())
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        record = None
        if done % 50 == 0:
            record = {"step": done, "loss": loss.item(), "videos_per_s": seen / (time.time() - tic)}
            if cfg.sizes:  # the last batch's size, and the loss over the last 50 batches (all sizes)
                record.update(size=size_at(cfg, step), loss_mean=float(np.mean(recent)))
            tic, seen, recent = time.time(), 0, []
        if cfg.eval_mazes and (done % cfg.eval_every == 0 or done == cfg.steps):
            ema_model.load_state_dict(ema)
            if cfg.sizes:
                record = {**(record or {"step": done}), **_validate_mixed(cfg, model, ema_adapter)}
            else:
                ev = evaluate_mazes(ema_adapter, validation_seeds(cfg.eval_mazes), cfg.size, cfg.frames)
                record = {**(record or {"step": done}), "val_accuracy": ev.accuracy}
        if record:
            log(json.dumps(record))
            with log_file.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        if done % cfg.checkpoint_every == 0 or done == end:
            _save_checkpoint(checkpoint_dir, cfg, done, model, ema, optimizer)
    bar.close()
    ema_model.load_state_dict(ema)
    return ema_adapter
