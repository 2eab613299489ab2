"""Model files checked before anything is built from them: a ``config.json`` that asks for 1e8
layers would hang even a meta-device plan, a scheduler with a negative shift samples garbage that
looks like a run. Every value a run depends on is bounded here, with one line naming the file and
the field; the testbed's layer count is also checked against the blocks its weights hold (read from
the safetensors header, no tensor loaded)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from interp.validation import MAX_SHIFT, UsageError

# Field name patterns of a diffusers model config and the largest value a real model could have.
MODEL_LIMITS = [
    (re.compile(r"num_(\w+_)?layers$"), 1000),
    (re.compile(r"num_(\w+_)?(attention_)?heads$"), 1024),
    (re.compile(r"(\w+_)?head_dim$"), 4096),
    (re.compile(r"patch_size(_t)?$"), 64),
    (re.compile(r"(in|out)_channels$"), 16384),
    (re.compile(r"(ffn_dim|inner_dim|cross_attn_dim|text_dim|freq_dim|cross_attention_dim|caption_channels)$"),
     1 << 17),
    (re.compile(r"(rope_max_seq_len|sample_(width|height|frames|size))$"), 1 << 16),
    (re.compile(r"max_position_embeddings$"), 1 << 22),  # text encoders: Llama 3.1 takes 131,072
    (re.compile(r"(layers_per_block|num_res_blocks)$"), 64),
    (re.compile(r"block_out_channels$"), 16384),
]  # fmt: skip
SCHEDULER_SHIFTS = ("shift", "flow_shift", "base_shift", "max_shift")


def _positive_ints(value) -> list | None:
    values = value if isinstance(value, list) else [value]
    return values if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else None


def check_model_config(path: Path, config: dict) -> None:
    """The sizes of a model's config: integers from 0 (layers) or 1 to a bound no real model passes."""
    if not isinstance(config, dict):
        raise UsageError(f"{path}: must be a JSON object")
    for name, value in config.items():
        if isinstance(value, dict):  # a composite model's sub-configs (Llava's text_config, vision_config)
            check_model_config(path, value)
            continue
        for pattern, limit in MODEL_LIMITS:
            if not pattern.match(name) or value is None:
                continue
            values = _positive_ints(value)
            low = 0 if "layers" in name else 1
            if values is None or not all(low <= v <= limit for v in values):
                raise UsageError(f"{path}: {name} must be an integer from {low} to {limit}, got {value!r}")


def check_scheduler_config(path: Path, config: dict) -> None:
    """A scheduler's shift (finite, > 0, at most ``MAX_SHIFT``) and its training timesteps."""
    if not isinstance(config, dict):
        raise UsageError(f"{path}: must be a JSON object")
    for name in SCHEDULER_SHIFTS:
        value = config.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 < value <= MAX_SHIFT:  # fmt: skip
            raise UsageError(f"{path}: {name} must be a finite number > 0 and <= {MAX_SHIFT:g}, got {value!r}")
    steps = config.get("num_train_timesteps")
    if steps is not None and (_positive_ints(steps) is None or isinstance(steps, list) or not 1 <= steps <= 100_000):
        raise UsageError(f"{path}: num_train_timesteps must be an integer from 1 to 100000, got {steps!r}")


def read_config(path: Path) -> dict:
    """A JSON object from a file a model or data folder ships, or one UsageError naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:  # JSON errors, huge numbers, deep nesting
        raise UsageError(f"{path}: not readable JSON ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: must be a JSON object")
    return data


def check_pipeline_folder(folder: Path, index: dict) -> None:
    """Every component config a pipeline folder's model_index.json names, before anything is built: the
    diffusers models and schedulers, and the transformers text and image encoders (a T5 asking for 1e8
    layers would hang its load as well)."""
    for key, value in index.items():
        if key.startswith("_") or not (isinstance(value, list) and len(value) == 2):
            continue
        if value[0] not in ("diffusers", "transformers"):  # others are refused before (registry)
            continue
        for name, check in (("config.json", check_model_config), ("scheduler_config.json", check_scheduler_config)):
            path = folder / key / name
            if path.is_file():
                check(path, read_config(path))


def weight_block_count(folder: Path, blocks_attr: str) -> int | None:
    """Distinct block indices (``<blocks_attr>.K.*`` keys) the safetensors files of ``folder`` hold,
    read from their headers only; None when there are no safetensors files."""
    prefix = f"{blocks_attr}."
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    indices = set()
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                keys = list(f.keys())
        except Exception as err:  # noqa: BLE001 - a damaged header, in whatever way the reader reports it
            raise UsageError(f"{file}: not a readable safetensors file ({' '.join(str(err).split())})") from None
        found = (re.fullmatch(r"[0-9]+", k[len(prefix):].split(".", 1)[0]) for k in keys if k.startswith(prefix))
        indices |= {int(m.group()) for m in found if m}
    return len(indices)
