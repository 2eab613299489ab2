"""Flow-matching training of the testbed on procedurally generated mazes, resumable.

Data are a pure function of (seed, step): batch ``k`` holds the training mazes with seeds
TRAIN_SEED_START + seed * 10**9 + k * batch_size + j, and its noise comes from a generator seeded
with (seed, k). A run killed at any point resumes from its last checkpoint and sees the same data.
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

from interp.evaluation import evaluate_mazes
from interp.models import testbed
from interp.tasks import maze as maze_task
from interp.tasks.splits import IN_DISTRIBUTION, TRAIN_SEED_START, validation_seeds


@dataclass
class TrainConfig:
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


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def training_batch(cfg: TrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean latents, conditioning) of training batch ``step``; seeds never overlap held-out ones."""
    base = TRAIN_SEED_START + cfg.seed * 10**9 + step * cfg.batch_size
    mazes = [maze_task.generate_maze(cfg.size, base + j) for j in range(cfg.batch_size)]
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
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": asdict(cfg)}, indent=2))
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
) -> Path:
    """Write a checkpoint's weights as a diffusers model folder (config + safetensors).

    ``which="best"`` samples ``validation_mazes`` validation mazes (seeds disjoint from test and
    training) with both the EMA and the raw weights and keeps the more accurate; the scores go
    into training.json beside the weights.
    """
    if which not in WEIGHT_CHOICES:
        raise ValueError(f"which must be one of {WEIGHT_CHOICES}, got {which!r}")
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    state = json.loads((checkpoint / "state.json").read_text())
    scores = {}
    if which == "best":
        cfg = state["config"]
        for candidate in ("ema", "raw"):
            adapter = testbed.TestbedAdapter(checkpoint_model(checkpoint, candidate), sampling)
            ev = evaluate_mazes(adapter, validation_seeds(validation_mazes), cfg["size"], cfg["frames"])
            scores[candidate] = ev.accuracy
        which = max(scores, key=lambda k: (scores[k], k == "ema"))
    checkpoint_model(checkpoint, which).save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "sampling.json").write_text(json.dumps(asdict(sampling), indent=2))
    record = {**state, "exported": which, "validation_accuracy": scores, "validation_mazes": validation_mazes}
    (out_dir / "training.json").write_text(json.dumps(record, indent=2))
    return out_dir


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
    tic, seen = time.time(), 0
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
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        record = None
        if done % 50 == 0:
            record = {"step": done, "loss": loss.item(), "videos_per_s": seen / (time.time() - tic)}
            tic, seen = time.time(), 0
        if cfg.eval_mazes and (done % cfg.eval_every == 0 or done == cfg.steps):
            ema_model.load_state_dict(ema)
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
