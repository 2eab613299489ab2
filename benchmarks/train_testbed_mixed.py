"""Train (or resume) ``testbed-mixed``: the testbed on 4x4-6x6 mazes, in chunks, exporting as it goes.

    nohup setsid nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_testbed_mixed.py \
        > checkpoints/testbed-mixed.out 2>&1 &

Rerunning the same command resumes from the checkpoint (``checkpoints/testbed-mixed``) with the
config stored in it, so an edited preset never changes a run under way. After every chunk
(``eval_every`` steps, ending on a validation of the EMA and raw weights on every size) the better
of the two by mean validation accuracy over sizes is exported to ``checkpoints/testbed-mixed-export/``
(``--export``; the shipped ``interp/models/testbed_mixed_weights/`` is replaced only by hand, after
``benchmarks/organism_accuracy.py`` shows the bars met) (diffusers folder + sampling.json + training.json with
the per-size validation, step-0 x0_hat included); the folder is replaced atomically.
The validation log is ``checkpoints/testbed-mixed.log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from interp.models import testbed
from interp.training import TrainConfig, export_weights, mixed_config, train_sizes, train_testbed

ROOT = Path(__file__).resolve().parent.parent
MAX_WEIGHT_BYTES = 20 * 2**20


def _log(message: str) -> None:
    print(message, flush=True)


def _state(checkpoint: Path) -> dict | None:
    path = checkpoint / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _validation_at(log_file: Path, step: int) -> dict | None:
    """The last validation record of ``step`` in the training log, if it covers raw and EMA."""
    if not log_file.is_file():
        return None
    found = None
    for line in log_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("step") == step and set(record.get("val", {})) == {"ema", "raw"}:
            found = record["val"]
    return found


def export_current(cfg: TrainConfig, checkpoint: Path, out: Path, validation_mazes: int) -> dict:
    """Export the checkpoint's better weights to ``out`` (atomically); returns training.json."""
    step = _state(checkpoint)["step"]
    validation = _validation_at(checkpoint.with_name(checkpoint.name + ".log.jsonl"), step)
    sampling = testbed.SamplingDefaults(num_steps=cfg.sample_steps, frames=cfg.frames, size=max(train_sizes(cfg)))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_weights(checkpoint, tmp, sampling, which="best", validation_mazes=validation_mazes, validation=validation)
    size = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
    if size > MAX_WEIGHT_BYTES:
        _log(f"warning: weights are {size / 2**20:.1f} MiB, over the 20 MiB limit")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return json.loads((out / "training.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "testbed-mixed")
    parser.add_argument("--export", type=Path, default=ROOT / "checkpoints" / "testbed-mixed-export")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-chunks", type=int, default=None, help="stop after this many chunks")
    parser.add_argument("--export-only", action="store_true", help="export the current checkpoint and stop")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    state = _state(args.checkpoint)
    cfg = TrainConfig(**state["config"]) if state else mixed_config()
    if state:
        _log(f"checkpoint at step {state['step']} of {cfg.steps}; resuming with its stored config")
    _log(json.dumps({"config": cfg.__dict__}))
    validation_mazes = cfg.eval_mazes or 128
    if args.export_only:
        record = export_current(cfg, args.checkpoint, args.export, validation_mazes)
        _log(
            json.dumps(
                {"exported": record["exported"], "step": record["step"], "scores": record["validation_accuracy"]}
            )
        )
        return 0

    chunks = 0
    while True:
        step = (_state(args.checkpoint) or {"step": 0})["step"]
        if step >= cfg.steps or (args.max_chunks is not None and chunks >= args.max_chunks):
            break
        # Chunks end on validation steps, so the export reuses the validation just logged.
        train_testbed(
            cfg, args.checkpoint, device=args.device, log=_log, max_new_steps=cfg.eval_every - step % cfg.eval_every
        )
        record = export_current(cfg, args.checkpoint, args.export, validation_mazes)
        _log(
            json.dumps(
                {"exported": record["exported"], "step": record["step"], "scores": record["validation_accuracy"]}
            )
        )
        chunks += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
